"""`homework-fhir run` (poll, process, write back) and `homework-fhir backfill DIR`."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fhir_adapter.commands._common import (
    configure_logging,
    fail,
    load_settings_or_exit,
    progress_bar,
    store_path_message,
)

if TYPE_CHECKING:
    from fhir_adapter.api.security import TokenVerifier
    from fhir_adapter.pipeline.runner import RunSummary
    from fhir_adapter.runtime import Runtime
    from fhir_adapter.settings import Settings

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML settings file (else HOMEWORK_FHIR_* variables)."),
]


def print_summary(summary: dict[str, object]) -> None:
    """The run's counts, one per line, then the errors (ids and types only, no PHI)."""
    errors = summary.pop("errors", [])
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        typer.echo(f"{key.replace('_', ' '):<{width}}  {value}")
    for error in errors if isinstance(errors, list) else []:
        typer.echo(f"error: {error}", err=True)


@asynccontextmanager
async def open_runtime_or_exit(settings: Settings) -> AsyncIterator[Runtime]:
    """The command's runtime; missing weights or model card, a model server that serves
    other weights, or a data_dir or store path that cannot be used, are exit 2 with one line."""
    from fhir_adapter.runtime import ModelVersionMismatchError, open_runtime

    opened = False
    try:
        async with open_runtime(settings) as runtime:
            opened = True
            yield runtime
    except FileNotFoundError as exc:  # no trained weights or model card where configured
        fail(str(exc))
    except ModelVersionMismatchError as exc:
        fail(str(exc))
    except OSError as exc:
        # While opening: the model cache or the SQLite file under data_dir cannot be made (a
        # file where the folder goes). Later ones are the command's own.
        if opened or exc.filename is None:
            raise
        fail(store_path_message(exc))


@asynccontextmanager
async def _metrics_server(
    port: int | None, verifier: TokenVerifier | None, runtime: Runtime
) -> AsyncIterator[None]:
    """A worker's /metrics and /healthz on `port` (none without a port), beside its jobs."""
    if port is None or verifier is None:
        yield
        return
    import uvicorn

    from fhir_adapter.api.metrics_app import metrics_app
    from fhir_adapter.metrics import exposition

    app = metrics_app(verifier, lambda: exposition(runtime.store))
    server = uvicorn.Server(
        uvicorn.Config(app, host="0.0.0.0", port=port, log_config=None, lifespan="off")  # noqa: S104
    )
    task = asyncio.create_task(server.serve())
    try:
        yield
    finally:
        server.should_exit = True
        await task


def register(app: typer.Typer) -> None:
    @app.command()
    def run(
        config: ConfigOption = None,
        once: Annotated[bool, typer.Option(help="One pass, then exit.")] = False,
        interval: Annotated[
            float, typer.Option(help="Seconds between passes (without --once).", min=1)
        ] = 300.0,
        verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    ) -> None:
        """The main job: poll each EHR for finished encounters, detect homework, write back.

        Exit status: 0 all done; 1 something needs an operator (an EHR connection, an
        encounter or a write failed: see the errors); 2 bad configuration.
        """
        from fhir_adapter.ehr.errors import FhirError
        from fhir_adapter.pipeline.jobs import run_once
        from fhir_adapter.pipeline.runner import ModelUnavailableError

        configure_logging(verbose)
        settings = load_settings_or_exit(config)
        if not settings.ehr:
            fail("no EHR connection configured: add an [ehr.NAME] table to the config file "
                 "(see README), or try `homework-fhir demo`")  # fmt: skip

        async def passes() -> bool:
            # One event loop for the whole command: the runtime's clients (httpx, aiohttp,
            # gRPC) belong to the loop they were opened on. SIGTERM (Kubernetes, systemd)
            # stops it like Ctrl-C: the pass is cancelled, its state is in the store.
            task = asyncio.current_task()
            assert task is not None
            # Handled here, not left to asyncio.run: a process started in the background
            # inherits SIGINT ignored, and `run` must still stop on it.
            for stop in (signal.SIGINT, signal.SIGTERM):
                asyncio.get_running_loop().add_signal_handler(stop, task.cancel)
            failed = False
            async with open_runtime_or_exit(settings) as runtime:
                while True:
                    try:
                        summary = await run_once(runtime, progress_bar("patients"))
                        print_summary(summary.as_dict())
                        failed = summary.failed
                    except ModelUnavailableError as exc:
                        typer.echo(f"error: model server unavailable, run stopped: {exc}", err=True)
                        failed = True
                    except FhirError as exc:
                        typer.echo(f"error: {exc}", err=True)
                        failed = True
                    if once:
                        break
                    await asyncio.sleep(interval)
            return failed

        try:
            failed = asyncio.run(passes())
        except (KeyboardInterrupt, asyncio.CancelledError):
            typer.echo("stopped")
            failed = False
        if failed:
            raise typer.Exit(1)

    @app.command()
    def worker(
        config: ConfigOption = None,
        once: Annotated[
            bool, typer.Option(help="Work until the queue is caught up, then exit.")
        ] = False,
        concurrency: Annotated[
            int | None, typer.Option(help="Jobs at once (default queue.concurrency).", min=1)
        ] = None,
        metrics_port: Annotated[
            int | None,
            typer.Option(
                help="Serve /metrics (bearer token) and /healthz on this port "
                "(default queue.worker_metrics_port).",
                min=1,
                max=65535,
            ),
        ] = None,
        verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    ) -> None:
        """Run pipeline jobs from the PostgreSQL queue (queue.backend = "procrastinate").

        Start as many as you like (one per pod or core): patients are processed one job at a
        time each, in session order, and every write is claimed by one worker. Polls each EHR
        on queue.poll_cron, and once at start. Exit status with --once: 1 when a job failed
        for good.
        """
        from fhir_adapter.metrics import step_totals
        from fhir_adapter.queue import (
            defer_poll,
            defer_waiting,
            job_counts,
            retry_stalled_jobs,
            work_until_caught_up,
        )
        from fhir_adapter.runtime import Runtime
        from fhir_adapter.service import token_verifier
        from fhir_adapter.settings import SettingsError

        configure_logging(verbose)
        settings = load_settings_or_exit(config)
        if settings.queue.backend != "procrastinate":
            fail(
                "the worker takes jobs from PostgreSQL: set queue.backend = 'procrastinate' "
                "and a postgresql+psycopg:// database_url, or use `homework-fhir run`"
            )

        port = metrics_port or settings.queue.worker_metrics_port
        try:
            verifier = token_verifier(settings) if port else None
        except SettingsError as exc:
            fail(f"worker metrics need the API's token settings: {exc}")

        async def work() -> int:
            async with (
                open_runtime_or_exit(settings) as runtime,
                _metrics_server(port, verifier, runtime),
            ):
                app = runtime.queue
                assert app is not None and isinstance(runtime, Runtime)
                before = await job_counts(app)
                await retry_stalled_jobs(app)  # jobs a killed worker left `doing`
                for name in settings.ehr:
                    await defer_poll(app, name)
                await defer_waiting(app, runtime, "local")  # pushed with no EHR configured
                jobs_at_once = concurrency or settings.queue.concurrency
                if once:
                    await work_until_caught_up(app, runtime, jobs_at_once)
                else:
                    await app.run_worker_async(
                        concurrency=jobs_at_once,
                        name=runtime.owner,
                        additional_context={"runtime": runtime},
                    )
                after = await job_counts(app)
            failed = sum(n for key, n in after.items() if key.endswith(" failed"))
            failed -= sum(n for key, n in before.items() if key.endswith(" failed"))
            for key, n in sorted(after.items()):
                typer.echo(f"{key}  {n}")
            for step, (seconds, count) in sorted(step_totals().items()):
                typer.echo(f"seconds {step}  {seconds:.2f} ({count})")
            return failed

        from procrastinate.exceptions import ProcrastinateException
        from psycopg import OperationalError

        try:
            failed = asyncio.run(work())
        except KeyboardInterrupt:
            typer.echo("stopped")
            failed = 0
        except (ProcrastinateException, OperationalError) as exc:
            # The queue's database went away or refused a change; the jobs stay where they
            # are and the next worker (or this one, restarted) picks them up.
            fail(f"task queue: {type(exc).__name__}; restart the worker (jobs are kept)", 1)
        if failed:
            typer.echo(f"error: {failed} jobs failed for good (procrastinate_jobs)", err=True)
            raise typer.Exit(1)

    @app.command()
    def backfill(
        directory: Annotated[Path, typer.Argument(help="Directory of a Bulk Data export.")],
        config: ConfigOption = None,
        connection: Annotated[
            str | None,
            typer.Option(help="EHR connection the export came from (write-back goes there)."),
        ] = None,
        verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    ) -> None:
        """Process a Bulk Data export ($export NDJSON files) from a directory."""
        from fhir_adapter.bulk import BulkExportError, read_export
        from fhir_adapter.ehr.errors import FhirError
        from fhir_adapter.pipeline.jobs import ingest_resources
        from fhir_adapter.pipeline.runner import ModelUnavailableError
        from fhir_adapter.settings import SettingsError
        from fhir_adapter.store.leases import LeaseBusyError

        configure_logging(verbose)
        settings = load_settings_or_exit(config)
        try:
            resources = list(read_export(directory))
        except BulkExportError as exc:
            fail(str(exc))

        async def ingest() -> RunSummary:
            async with open_runtime_or_exit(settings) as runtime:
                return await ingest_resources(
                    runtime, resources, connection, progress_bar("patients")
                )

        try:
            summary = asyncio.run(ingest())
        except SettingsError as exc:
            fail(str(exc))
        except ModelUnavailableError as exc:
            fail(f"model server unavailable, backfill stopped (rerun to resume): {exc}", 1)
        except (FhirError, LeaseBusyError) as exc:
            fail(f"{exc} (rerun to resume)", 1)
        typer.echo(json.dumps({"resources_read": len(resources)}))
        print_summary(summary.as_dict())
        if summary.failed:
            raise typer.Exit(1)
