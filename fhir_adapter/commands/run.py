"""`homework-fhir run` (poll, process, write back) and `homework-fhir backfill DIR`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer

from fhir_adapter.commands._common import (
    configure_logging,
    fail,
    load_settings_or_exit,
    progress_bar,
)

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
        """The main job: poll each EHR for finished encounters, detect homework, write back."""
        from fhir_adapter.ehr.errors import FhirError
        from fhir_adapter.model_backend import make_backend, model_info
        from fhir_adapter.pipeline.jobs import run_once
        from fhir_adapter.pipeline.runner import ModelUnavailableError
        from fhir_adapter.store import open_store

        configure_logging(verbose)
        settings = load_settings_or_exit(config)
        if not settings.ehr:
            fail("no EHR connection configured: add an [ehr.NAME] table to the config file "
                 "(see README), or try `homework-fhir demo`")  # fmt: skip
        try:
            model = model_info(settings)
            backend = make_backend(settings)
        except FileNotFoundError as exc:  # no trained weights or model card where configured
            fail(str(exc))
        store = open_store(settings.database_url)

        failed = False

        async def passes() -> None:
            # One event loop for every pass: the model client (aiohttp, gRPC) and its
            # semaphore belong to the loop they were first used on.
            nonlocal failed
            try:
                while True:
                    try:
                        result = await run_once(
                            settings, store, backend, model, progress_bar("encounters")
                        )
                        summary = result.as_dict()
                        print_summary(summary)
                        failed = bool(summary.get("encounters_failed")) or bool(
                            summary.get("writes_failed")
                        )
                    except ModelUnavailableError as exc:
                        typer.echo(f"error: model server unavailable, run stopped: {exc}", err=True)
                        failed = True
                    except FhirError as exc:
                        typer.echo(f"error: {exc}", err=True)
                        failed = True
                    if once:
                        break
                    await asyncio.sleep(interval)
            finally:
                await backend.close()

        try:
            asyncio.run(passes())
        except KeyboardInterrupt:
            typer.echo("stopped")
        finally:
            store.close()
        if failed:
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
        from fhir_adapter.model_backend import make_backend, model_info
        from fhir_adapter.pipeline.jobs import ingest_resources
        from fhir_adapter.pipeline.runner import ModelUnavailableError
        from fhir_adapter.settings import SettingsError
        from fhir_adapter.store import open_store

        configure_logging(verbose)
        settings = load_settings_or_exit(config)
        try:
            resources = list(read_export(directory))
        except BulkExportError as exc:
            fail(str(exc))
        try:
            model = model_info(settings)
            backend = make_backend(settings)
        except FileNotFoundError as exc:  # no trained weights or model card where configured
            fail(str(exc))
        store = open_store(settings.database_url)
        try:
            summary = asyncio.run(
                ingest_resources(
                    settings,
                    store,
                    backend,
                    model,
                    resources,
                    connection,
                    progress_bar("encounters"),
                )
            )
        except SettingsError as exc:
            fail(str(exc))
        except ModelUnavailableError as exc:
            fail(f"model server unavailable, backfill stopped (rerun to resume): {exc}", 1)
        finally:
            asyncio.run(backend.close())
            store.close()
        typer.echo(json.dumps({"resources_read": len(resources)}))
        print_summary(summary.as_dict())
        if summary.encounters_failed or summary.writes_failed:
            raise typer.Exit(1)
