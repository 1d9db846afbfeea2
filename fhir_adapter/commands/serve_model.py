"""`homework-fhir serve-model`: the homework classifier on a real Triton Inference Server.

Renders a runtime model repository (the shipped config for --device/--precision, model.py and
the weights copied in), starts the `tritonserver` shipped in the nvidia-pytriton wheel, waits
until the model is ready, prints the URLs and serves until Ctrl-C (or SIGTERM). With
`--write-repository DIR` it only writes the repository, e.g. to mount into the NGC Triton
container on a GPU node (deploy/triton/README.md).
"""

from __future__ import annotations

import signal
import socket
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Annotated, Literal

import typer

from fhir_adapter.commands._common import fail

EXIT_SERVER_FAILED = 1


def _check_port_free(host: str, port: int, option: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As servers do: a port held only by closed connections (TIME_WAIT) is free to listen.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            fail(f"port {port} on {host} is in use; pick another with {option}")


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # `docker stop` / systemd send SIGTERM: leave the serve loop the way Ctrl-C does.
    raise KeyboardInterrupt


def register(app: typer.Typer) -> None:
    @app.command("serve-model")
    def serve_model(
        http_port: Annotated[
            int, typer.Option(help="Triton HTTP/REST port.", min=1, max=65535)
        ] = 8000,
        grpc_port: Annotated[int, typer.Option(help="Triton gRPC port.", min=1, max=65535)] = 8001,
        metrics_port: Annotated[
            int, typer.Option(help="Prometheus metrics port.", min=1, max=65535)
        ] = 8002,
        host: Annotated[
            str, typer.Option(help="Address to listen on (0.0.0.0 for every interface).")
        ] = "127.0.0.1",
        weights: Annotated[
            Path | None,
            typer.Option(help="Weights dir (heads.safetensors, ...); default: the shipped ones."),
        ] = None,
        device: Annotated[
            Literal["cpu", "gpu"],
            typer.Option(help="Instance group: KIND_CPU, or KIND_GPU (model on cuda)."),
        ] = "cpu",
        precision: Annotated[
            str | None,
            typer.Option(help="fp32 | bf16 | int8 (CPU only); default: int8 on cpu, bf16 on gpu."),
        ] = None,
        instances: Annotated[int, typer.Option(min=1, help="Model instances.")] = 1,
        write_repository: Annotated[
            Path | None,
            typer.Option(help="Only write the runtime model repository to this new dir, exit."),
        ] = None,
        log_file: Annotated[
            Path | None, typer.Option(help="Server log file; default: in a temp dir.")
        ] = None,
        ready_timeout: Annotated[
            float, typer.Option(help="Seconds to wait for the model to load.")
        ] = 180.0,
    ) -> None:
        """Serve the homework classifier with Triton (HTTP, gRPC, metrics) until Ctrl-C."""
        from inference_server.errors import TritonStartError
        from inference_server.optimize import check_precision, default_precision
        from inference_server.triton_server import MODEL_NAME, TritonServer, build_repository

        torch_device = "cpu" if device == "cpu" else "cuda"
        precision = precision or default_precision(torch_device)
        try:
            check_precision(precision, torch_device)
        except ValueError as exc:
            fail(str(exc))

        def build(dest: Path) -> Path:
            try:
                return build_repository(
                    dest,
                    weights_dir=weights,
                    device=device,
                    precision=precision,
                    instances=instances,
                )
            except (FileNotFoundError, FileExistsError) as exc:
                fail(str(exc))
            except OSError as exc:  # e.g. a file where a parent folder should be, no permission
                reason = exc.strerror or type(exc).__name__
                fail(f"cannot write the model repository at {dest}: {reason}; "
                     "choose a new directory for the repository")  # fmt: skip

        if write_repository is not None:
            repo = build(write_repository)
            typer.echo(f"wrote {repo / MODEL_NAME} (device={device}, precision={precision})")
            return

        for port, option in (
            (http_port, "--http-port"),
            (grpc_port, "--grpc-port"),
            (metrics_port, "--metrics-port"),
        ):
            _check_port_free(host, port, option)

        with tempfile.TemporaryDirectory(prefix="homework-serve-") as tmp:
            repo = build(Path(tmp) / "repository")
            server = TritonServer(
                repo,
                host=host,
                http_port=http_port,
                grpc_port=grpc_port,
                metrics_port=metrics_port,
                log_file=log_file,
                ready_timeout_s=ready_timeout,
            )
            typer.echo(f"starting tritonserver (log: {server.log_file}) ...", err=True)
            previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
            try:
                server.start()
            except TritonStartError as exc:
                fail(exc.summary, code=EXIT_SERVER_FAILED)
            except KeyboardInterrupt:
                server.stop()
                raise typer.Exit(130) from None
            try:
                typer.echo(f"model   {MODEL_NAME} (device={device}, precision={precision})")
                typer.echo(
                    f"http    http://{server.http_url}  (tritonclient url {server.http_url})"
                )
                typer.echo(f"grpc    {server.grpc_url}")
                typer.echo(f"metrics {server.metrics_url}")
                typer.echo("ready; Ctrl-C to stop", err=True)
                while server.running():
                    time.sleep(0.5)
                fail(
                    f"tritonserver exited unexpectedly; see {server.log_file}",
                    code=EXIT_SERVER_FAILED,
                )
            except KeyboardInterrupt:
                typer.echo("stopping tritonserver ...", err=True)
            finally:
                server.stop()
                signal.signal(signal.SIGTERM, previous)
