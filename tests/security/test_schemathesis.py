"""schemathesis against the served API (a real `homework-fhir serve` on a port, over the bundled
samples): a bounded, seeded run with a valid token and one with none. Every check passes: no
5xx, every status code, content type, header and body as the OpenAPI document declares them,
invalid input refused, a missing token refused.

One check is left out: `positive_data_acceptance` expects every body the schema admits to be
accepted, and `POST /ingest` takes any FHIR Bundle, which an OpenAPI schema cannot describe
(R4B's rules are checked by the route, and a schema-shaped non-Bundle is rightly a 400).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from fhir_adapter.samples.build import build_resources
from inference_server.triton_server import free_port

pytestmark = pytest.mark.integration

SEED = 42
CHECKS = ["--checks", "all", "--exclude-checks", "positive_data_acceptance"]
BIN = Path(sys.executable).parent


@dataclass
class Served:
    url: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("served")
    port = free_port()
    env = {
        **os.environ,
        "HOMEWORK_FHIR_ENVIRONMENT": "development",
        "HOMEWORK_FHIR_DATA_DIR": str(root / "data"),
        "HOMEWORK_FHIR_API__AUTH__MODE": "dev-embedded",
        "HOMEWORK_FHIR_API__PORT": str(port),
        "HOMEWORK_FHIR_MODEL__BACKEND": "in-process",
    }
    log = (root / "serve.log").open("wb")
    server = subprocess.Popen([BIN / "homework-fhir", "serve"], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"serve did not start:\n{(root / 'serve.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield Served(url, env)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def _token(served: Served, scopes: str) -> str:
    done = subprocess.run([BIN / "homework-fhir", "token", "--scope", scopes], env=served.env,
                          capture_output=True, text=True, check=True)  # fmt: skip
    return done.stdout.strip().splitlines()[-1]


def _schemathesis(schema: Path, served: Served, examples: int, *headers: str) -> str:
    args = [str(BIN / "st"), "run", str(schema), "--url", served.url, "--seed", str(SEED),
            "--max-examples", str(examples), "--generation-database", "none", "--workers", "1",
            *CHECKS, *(arg for h in headers for arg in ("-H", h))]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-6000:]
    return done.stdout


def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(
    served: Served, tmp_path: Path
) -> None:
    token = _token(served, "system/*.cruds")
    auth = {"Authorization": f"Bearer {token}"}
    # Data to search and read: the bundled samples, pushed and processed.
    pushed = [r for kind in build_resources().values() for r in kind]
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"resource": r} for r in pushed]}  # fmt: skip
    accepted = httpx.post(f"{served.url}/ingest", json=bundle, headers=auth, timeout=60)
    assert accepted.status_code == 202, accepted.text
    deadline = time.monotonic() + 300
    status = accepted.headers["Content-Location"]
    while httpx.get(status, headers=auth, timeout=10).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(1)

    schema = tmp_path / "openapi.json"
    document = httpx.get(f"{served.url}/openapi.json", headers=auth, timeout=10)
    assert document.status_code == 200
    schema.write_text(json.dumps(document.json()))

    with_token = _schemathesis(schema, served, 300, f"Authorization: Bearer {token}")
    generated, passed = _counts(with_token)
    assert generated == passed >= 2000, with_token[-2000:]
    anonymous, anonymous_passed = _counts(_schemathesis(schema, served, 100))
    assert anonymous == anonymous_passed >= 500
    print(f"schemathesis: {generated} cases with a token, {anonymous} without, all passed")


def _counts(output: str) -> tuple[int, int]:
    """(test cases generated, passed) from schemathesis' summary."""
    found = re.search(r"(\d+) generated, (\d+) passed", output)
    assert found, output[-2000:]
    return int(found[1]), int(found[2])
