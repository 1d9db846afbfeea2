"""`homework-fhir serve-model`: a real server from the CLI, stopped with Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fhir_adapter.cli import app
from inference_server.triton_server import MODEL_NAME, free_port
from tests.inference_server.triton_fixtures import TEXTS

runner = CliRunner()


def test_write_repository_renders_the_gpu_variant(test_weights: Path, tmp_path: Path) -> None:
    dest = tmp_path / "repo"
    result = runner.invoke(
        app,
        [
            "serve-model",
            "--write-repository",
            str(dest),
            "--weights",
            str(test_weights),
            "--device",
            "gpu",
            "--precision",
            "bf16",
        ],
    )
    assert result.exit_code == 0, result.output
    config = (dest / MODEL_NAME / "config.pbtxt").read_text()
    assert "KIND_GPU" in config
    assert "KIND_CPU" not in config
    assert (dest / MODEL_NAME / "1" / "weights" / "heads.safetensors").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--precision", "fp64"], "unknown precision"),
        (["--device", "gpu", "--precision", "int8"], "CPU only"),
        (["--weights", "/nonexistent/weights"], "no classifier weights"),
        (["--http-port", "70000"], "Invalid value for '--http-port'"),
        (["--grpc-port", "70000"], "Invalid value for '--grpc-port'"),
        (["--metrics-port", "65536"], "Invalid value for '--metrics-port'"),
    ],
)
def test_bad_options_exit_2_with_one_line(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["serve-model", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_write_repository_over_a_file_exits_2_with_one_line(
    test_weights: Path, tmp_path: Path
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    for dest, message in (
        (afile, f"{afile} is a file; choose a new directory"),
        (afile / "repo", f"cannot write the model repository at {afile / 'repo'}: Not a dir"),
    ):
        result = runner.invoke(
            app, ["serve-model", "--write-repository", str(dest), "--weights", str(test_weights)]
        )
        assert result.exit_code == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], result.output
        assert "Traceback" not in result.output


def test_serve_model_serves_until_ctrl_c(test_weights: Path, tmp_path: Path) -> None:
    ports = [free_port() for _ in range(3)]
    log_file = tmp_path / "triton.log"
    command = [
        sys.executable,
        "-c",
        "from fhir_adapter.cli import main; main()",
        "serve-model",
        "--weights",
        str(test_weights),
        "--precision",
        "fp32",
        "--log-file",
        str(log_file),
        "--http-port",
        str(ports[0]),
        "--grpc-port",
        str(ports[1]),
        "--metrics-port",
        str(ports[2]),
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # A fresh session with default SIGINT handling, like a terminal's foreground job.
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("ready"):
                break
        assert any(line.startswith("ready") for line in lines), "".join(lines)
        assert f"http://127.0.0.1:{ports[0]}" in "".join(lines)
        assert f"127.0.0.1:{ports[1]}" in "".join(lines)

        body = json.dumps(
            {"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": [TEXTS[0]]}]}
        ).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{ports[0]}/v2/models/{MODEL_NAME}/infer", data=body
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            outputs = {o["name"]: o for o in json.load(response)["outputs"]}
        assert len(outputs["LABEL_PROBS"]["data"]) == 5

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    rest = process.stdout.read()
    assert "stopping tritonserver" in rest
    assert "Traceback" not in "".join(lines) + rest
    # The server went with it: nothing listens on its HTTP port any more.
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/v2/health/live", timeout=2)
    assert "Started HTTPService" in log_file.read_text()
