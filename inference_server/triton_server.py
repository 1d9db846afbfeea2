"""Run a real Triton Inference Server from the `nvidia-pytriton` wheel, without Docker or a GPU.

The wheel ships a complete `tritonserver` (2.51), the Python backend and one backend stub per
CPython version. `TritonServer` wires them together (recipe: shared/notes/triton-on-cpu.md):

- the stub for the running interpreter is placed next to `libtriton_python.so` in a PRIVATE
  symlink farm of the backends directory (site-packages is never written to);
- `LD_LIBRARY_PATH` gets the wheel's bundled libs and this interpreter's LIBDIR (otherwise the
  stub loads the system libpython against our standard library and the model fails to load);
- `PATH` starts with this interpreter's bin dir: the stub embeds CPython in isolated mode
  (PYTHONPATH is ignored) and derives its prefix from `python3` on PATH, so it then imports
  `inference_server`, torch and transformers from this very environment.

`build_repository` renders the runtime model repository: the shipped config (CPU or GPU
instance group, precision) plus `model.py` and the heads weights copied in, so the server loads
the weights from its own repository directory. Used by the `serve-model` command, the tests and
the benchmark:

    with TritonServer(build_repository(tmp / "repo")) as server:
        backend = TritonBackend(server.http_url)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

from inference_server.classifier import CARD_FILE, HEADS_FILE, WEIGHTS_DIR
from inference_server.errors import TritonStartError
from inference_server.optimize import check_precision, default_precision

log = logging.getLogger(__name__)

MODEL_NAME = "homework_classifier"
# The config parameter that names the served weights' model card version.
VERSION_PARAMETER = "model_card_version"
SHIPPED_REPOSITORY = Path(__file__).resolve().parent / "model_repository"

Device = Literal["cpu", "gpu"]
WEIGHT_SUFFIXES = (".safetensors", ".json")

__all__ = [
    "MODEL_NAME",
    "SHIPPED_REPOSITORY",
    "TritonInstall",
    "TritonServer",
    "build_repository",
    "free_port",
    "render_config",
]


@dataclass(frozen=True)
class TritonInstall:
    """Paths inside the installed `nvidia-pytriton` wheel."""

    binary: Path
    backends_dir: Path
    stub: Path
    libs_dir: Path

    @classmethod
    def locate(cls) -> TritonInstall:
        """Find the server, backends and this interpreter's stub; say what to install if not."""
        site = Path(sysconfig.get_paths()["purelib"])
        root = site / "pytriton" / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        install = cls(
            binary=root / "bin" / "tritonserver",
            backends_dir=root / "backends",
            stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
            libs_dir=site / "nvidia_pytriton.libs",
        )
        for path in (install.binary, install.backends_dir / "python", install.stub):
            if not path.exists():
                raise FileNotFoundError(
                    f"{path} is missing; install the server with `pip install nvidia-pytriton` "
                    f"(it ships stubs for CPython 3.8-3.13; this is {version})"
                )
        return install


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def render_config(
    config_text: str,
    *,
    device: Device = "cpu",
    precision: str | None = None,
    instances: int = 1,
    max_queue_delay_us: int | None = None,
    weights_dir: str | None = None,
    model_version: str | None = None,
) -> str:
    """The shipped config.pbtxt with the instance group and parameters for one deployment.

    `model_version` (the weights' model card version) is published as the parameter
    `model_card_version`, so clients record the version the server actually serves."""
    from google.protobuf import text_format  # type: ignore[import-untyped]
    from tritonclient.grpc import model_config_pb2

    torch_device = "cpu" if device == "cpu" else "cuda"
    precision = precision or default_precision(torch_device)
    check_precision(precision, torch_device)
    config = text_format.Parse(config_text, model_config_pb2.ModelConfig())
    del config.instance_group[:]
    group = config.instance_group.add()
    group.count = instances
    group.kind = (
        model_config_pb2.ModelInstanceGroup.KIND_GPU
        if device == "gpu"
        else model_config_pb2.ModelInstanceGroup.KIND_CPU
    )
    config.parameters["precision"].string_value = precision
    if weights_dir is not None:
        config.parameters["weights_dir"].string_value = weights_dir
    if model_version is not None:
        config.parameters[VERSION_PARAMETER].string_value = model_version
    if max_queue_delay_us is not None:
        config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    header = (
        f"# Rendered by inference_server.triton_server.render_config from the shipped "
        f"config.pbtxt: device={device}, precision={precision}, instances={instances}.\n"
    )
    return header + str(text_format.MessageToString(config))


def build_repository(
    dest: Path,
    *,
    weights_dir: Path | None = None,
    device: Device = "cpu",
    precision: str | None = None,
    instances: int = 1,
    max_queue_delay_us: int | None = None,
) -> Path:
    """Write a servable repository at `dest` (created; must be empty or absent) and return it.

    Layout: `dest/homework_classifier/{config.pbtxt, 1/model.py, 1/weights/*}` where weights/
    holds heads.safetensors, model_card.json and any other .safetensors/.json of `weights_dir`
    (default: the shipped weights).
    """
    source = weights_dir or WEIGHTS_DIR
    heads = source / HEADS_FILE
    if not heads.is_file():
        raise FileNotFoundError(
            f"no classifier weights at {heads}; train them (`homework-fhir train`) or pass "
            "--weights DIR"
        )
    if dest.exists() and not dest.is_dir():
        raise FileExistsError(f"{dest} is a file; choose a new directory for the repository")
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty; choose a new directory for the repository")
    shipped = SHIPPED_REPOSITORY / MODEL_NAME
    version = dest / MODEL_NAME / "1"
    (version / "weights").mkdir(parents=True)
    shutil.copy2(shipped / "1" / "model.py", version / "model.py")
    # Everything the classifier loads from its weights dir: heads, model card, LoRA delta.
    for item in sorted(source.iterdir()):
        if item.is_file() and item.suffix in WEIGHT_SUFFIXES:
            shutil.copy2(item, version / "weights" / item.name)
    card = json.loads((source / CARD_FILE).read_text()) if (source / CARD_FILE).is_file() else {}
    config = render_config(
        (shipped / "config.pbtxt").read_text(),
        device=device,
        precision=precision,
        instances=instances,
        max_queue_delay_us=max_queue_delay_us,
        weights_dir="weights",
        model_version=str(card["version"]) if card.get("version") else None,
    )
    (dest / MODEL_NAME / "config.pbtxt").write_text(config)
    return dest


def _server_env(install: TritonInstall) -> dict[str, str]:
    """Environment for tritonserver and the stubs it spawns (see the module docstring)."""
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    ld = [str(install.libs_dir), libdir, env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in ld if p)
    # The stub embeds CPython in isolated mode: PYTHONPATH is ignored, and it finds its prefix
    # by looking up `python3` on PATH. Putting this interpreter's bin dir first makes that our
    # venv's python3, so the stub gets the venv's site-packages (and its .pth files, e.g. an
    # editable install of this project) exactly as this process has them.
    bindir = Path(sys.executable).parent
    if not (bindir / "python3").exists():
        raise FileNotFoundError(
            f"no python3 next to {sys.executable}; run from a virtualenv (python -m venv) so "
            "the Triton Python-backend stub can find the same site-packages"
        )
    env["PATH"] = os.pathsep.join(p for p in (str(bindir), env.get("PATH", "")) if p)
    env.pop("PYTHONHOME", None)
    # OpenMP workers that spin after each op starve the stub's IPC thread and tritonserver on
    # a few cores: measured here (2 cores, torch at 2 threads) batch-1 requests ran at 3-5
    # items/s with the default policy and ~38/s with PASSIVE. An operator's setting wins.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def _backend_farm(install: TritonInstall, root: Path) -> Path:
    """A private backends dir: symlinks to the wheel's files plus this interpreter's stub."""
    farm = root / "backends"
    python = farm / "python"
    python.mkdir(parents=True)
    for item in (install.backends_dir / "python").iterdir():
        if item.name != "__pycache__":
            (python / item.name).symlink_to(item)
    (python / install.stub.name).symlink_to(install.stub)
    return farm


class TritonServer:
    """A tritonserver process on `repository`; a context manager that starts and stops it.

    Ports default to free ones. `start()` returns once the server and the model are ready, or
    raises `TritonStartError` naming the log file (and quoting its tail).
    """

    def __init__(
        self,
        repository: Path,
        *,
        host: str = "127.0.0.1",
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        log_file: Path | None = None,
        ready_timeout_s: float = 180.0,
        exit_timeout_s: int = 10,
        log_verbose: int = 0,
        install: TritonInstall | None = None,
    ) -> None:
        self.repository = repository.resolve()
        self.host = host
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.ready_timeout_s = ready_timeout_s
        self.exit_timeout_s = exit_timeout_s
        self.log_verbose = log_verbose
        self.install = install
        self._workdir = Path(tempfile.mkdtemp(prefix="homework-triton-"))
        self.log_file = log_file or self._workdir / "tritonserver.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._failed = False

    # The addresses clients use: tritonclient takes host:port without a scheme.
    @property
    def http_url(self) -> str:
        return f"{self._client_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.metrics_port}/metrics"

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host  # noqa: S104

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> TritonServer:
        if self._process is not None:
            raise RuntimeError("this TritonServer was already started")
        install = self.install or TritonInstall.locate()
        backends = _backend_farm(install, self._workdir)
        command = [
            str(install.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--log-verbose={self.log_verbose}",
        ]
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("wb") as log_out:
            # Own session: Ctrl-C in a terminal reaches us, and we stop the server in order.
            self._process = subprocess.Popen(  # noqa: S603 - fixed binary, no shell
                command,
                stdout=log_out,
                stderr=subprocess.STDOUT,
                env=_server_env(install),
                start_new_session=True,
            )
        log.info("tritonserver pid %d starting, log %s", self._process.pid, self.log_file)
        try:
            self.wait_ready()
        except BaseException:
            self._failed = True  # keep the work dir: the default log file lives there
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        url = f"http://{self.http_url}/v2/models/{MODEL_NAME}/ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def wait_ready(self) -> None:
        """Poll readiness until the timeout; raise TritonStartError if it exits or times out."""
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                code = self._process.returncode if self._process else None
                raise TritonStartError(
                    f"tritonserver exited with code {code} before {MODEL_NAME} was ready",
                    self.log_file,
                    self.log_tail(),
                )
            if self._ready():
                log.info("tritonserver ready on http %s grpc %s", self.http_url, self.grpc_url)
                return
            time.sleep(0.25)
        raise TritonStartError(
            f"{MODEL_NAME} not ready within {self.ready_timeout_s:.0f} s",
            self.log_file,
            self.log_tail(),
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM the server by pid, wait for it to drain, SIGKILL its group if it hangs."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.exit_timeout_s + 10)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver pid %d ignored SIGTERM; killing it", process.pid)
                # The group is the server's own session (start_new_session): it and its stubs.
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self._failed and self.log_file.is_relative_to(self._workdir):
            # Keep the log that the TritonStartError message points to.
            shutil.rmtree(self._workdir / "backends", ignore_errors=True)
        else:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
