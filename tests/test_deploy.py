"""The one-host deployment (deploy/compose): the Compose file validates with docker-compose,
and what it runs exists."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from fhir_adapter.cli import app

COMPOSE = Path(__file__).resolve().parents[1] / "deploy" / "compose"


def test_the_compose_file_is_valid_and_runs_our_commands(tmp_path: Path) -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose is needed to validate deploy/compose/compose.yaml: "
                    "apt-get install docker-compose", pytrace=False)  # fmt: skip
    work = tmp_path / "compose"
    shutil.copytree(COMPOSE, work)
    for name in ("config.toml", "db_password.txt", "pgpass"):  # what the operator provides
        (work / name).write_text("")
    for name in ("keys", "triton-repo"):
        (work / name).mkdir()
    done = subprocess.run([binary, "-f", str(work / "compose.yaml"), "config"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    services = config["services"]
    assert set(services) == {"db", "triton", "api", "worker"}
    assert services["worker"]["deploy"]["replicas"] == 2
    commands = {c.name or c.callback.__name__ for c in app.registered_commands}  # type: ignore[union-attr]
    for name in ("api", "worker"):
        assert services[name]["command"][0] in commands
        assert services[name]["depends_on"]["db"]["condition"] == "service_healthy"
        assert services[name]["environment"]["HOMEWORK_FHIR_LOG_FORMAT"] == "json"
    gpu = services["triton"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    dockerfile = (COMPOSE / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["homework-fhir"]' in dockerfile and "USER homework" in dockerfile
