"""`homework-fhir demo`: the whole product on embedded defaults, in one command.

The bundled sample export (made by us: a few patients, several sessions each, transcripts in
every format, PHQ-9/GAD-7) is backfilled into a fresh SQLite store with the in-process model
(or a local Triton), and the API is served on localhost with a development token, so the
drafts can be read with FHIR search.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated, Any

import typer

from fhir_adapter.commands._common import configure_logging, fail, load_settings_or_exit
from fhir_adapter.commands.run import open_runtime_or_exit, print_summary
from fhir_adapter.settings import EhrConnection, Settings
from fhir_adapter.smart.devserver import encode_launch
from fhir_adapter.smart.routes import launch_link


def _drafts(store: Any) -> list[str]:
    """One line per patient: the homework drafted and its review status, by session."""
    from fhir_adapter.store import resources
    from fhir_adapter.store.resources import Query

    lines: list[str] = []
    with store.session() as session:
        tasks, _ = resources.search(session, Query("Task", count=500))
        plans, _ = resources.search(session, Query("CarePlan", count=500))
        observations, _ = resources.search(session, Query("Observation", count=500))
    by_patient: dict[str, list[dict[str, Any]]] = {}
    for task in tasks:
        by_patient.setdefault(task["for"]["reference"], []).append(task)
    for patient, items in sorted(by_patient.items()):
        lines.append(f"{patient}:")
        for task in sorted(items, key=lambda t: (t.get("authoredOn", ""), t["id"])):
            code = task["code"]["coding"][0]["code"]
            status = task["businessStatus"]["coding"][0]["code"]
            encounter = task["encounter"]["reference"]
            lines.append(f"  {encounter:<16} {code:<12} {status:<16} {task['description'][:60]}")
    lines.append(f"{len(plans)} CarePlans, {len(tasks)} Tasks, {len(observations)} Observations")
    return lines


def dev_ehr_setup(settings: Any, base: str, export: Path) -> tuple[Any, list[Any]]:
    """The demo's settings with a `dev_ehr` connection whose SMART app is registered with the
    development EHR (fhir_adapter.smart.devserver), and that EHR's router."""
    from fhir_adapter.smart.devserver import DevClient, DevEhr, dev_ehr_router

    secret = secrets.token_urlsafe(32)
    redirect = f"{base}/smart/callback"
    ehr = DevEhr(f"{base}/dev-ehr", export, DevClient("homework-fhir-demo", secret, redirect))
    connection = {
        "base_url": ehr.fhir_base,
        "smart_app": {"client_id": "homework-fhir-demo", "client_secret": secret,
                      "redirect_uri": redirect, "standalone_default": True},
    }  # fmt: skip
    served = settings.model_copy(
        update={"ehr": {"dev_ehr": EhrConnection(name="dev_ehr", **connection)}}
    )
    return served, [dev_ehr_router(ehr)]


def demo_settings(data_dir: Path, port: int, triton: str | None = None) -> Settings:
    """The demo's settings: a SQLite store in `data_dir`, development tokens, no EHR yet.

    The model runs at its `precision` operating point, the service's default, whatever the
    environment says (docs/model.md, "Operating points"): at `balanced`, tuned for recall on
    real talk, it also drafts low-confidence tasks in session 3-3, which the sample's story
    says sets no new homework."""
    model: dict[str, str] = {"operating_point": "precision"}
    if triton:
        model.update(backend="triton", triton_url=triton)
    return load_settings_or_exit(
        None,
        environment="development",
        data_dir=data_dir,
        database_url=f"sqlite:///{data_dir / 'demo.sqlite3'}",
        api={"auth": {"mode": "dev-embedded"}, "port": port},
        model=model,
        ehr={},
    )


def demo_launch_link(base: str) -> str:
    """The EHR launch `homework-fhir demo` prints: the development EHR opening the review app
    for patient pat-1 in session enc-1-3."""
    return launch_link(base, f"{base}/dev-ehr/fhir", encode_launch("pat-1", "enc-1-3"))


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        data_dir: Annotated[Path, typer.Option(help="Where the demo keeps its files.")] = Path(
            "var/demo"
        ),
        export: Annotated[
            Path | None, typer.Option(help="A Bulk Data export to use instead of the sample.")
        ] = None,
        triton: Annotated[
            str | None, typer.Option(help="Use a running Triton (host:port) instead of in-process.")
        ] = None,
        serve: Annotated[bool, typer.Option(help="Serve the API afterwards.")] = True,
        port: Annotated[int, typer.Option(help="API port.")] = 8080,
        verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    ) -> None:
        """Backfill the bundled sample export with the model, then serve the API on localhost."""
        import asyncio

        from fhir_adapter.bulk import BulkExportError, read_export
        from fhir_adapter.pipeline.jobs import ingest_resources
        from fhir_adapter.pipeline.runner import ModelUnavailableError, RunSummary
        from fhir_adapter.samples import sample_export_dir
        from fhir_adapter.service import build_service, dev_token

        configure_logging(verbose)
        # A fresh store each time, so the printout shows exactly what this run drafted.
        try:
            if (data_dir / "demo.sqlite3").exists():
                for leftover in data_dir.glob("demo.sqlite3*"):
                    leftover.unlink()
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # e.g. --data-dir names a file
            fail(f"cannot use --data-dir {data_dir} ({exc.strerror}: {exc.filename}); "
                 "pass a folder")  # fmt: skip
        settings = demo_settings(data_dir, port, triton)
        source = export or sample_export_dir()
        try:
            resources = list(read_export(source))
        except BulkExportError as exc:
            fail(str(exc))
        typer.echo(f"backfilling {len(resources)} resources from {source} ...")

        async def backfill() -> tuple[RunSummary, list[str]]:
            async with open_runtime_or_exit(settings) as runtime:
                summary = await ingest_resources(runtime, resources)
                return summary, _drafts(runtime.store)

        try:
            summary, drafts = asyncio.run(backfill())
        except ModelUnavailableError as exc:
            fail(f"model server unavailable: {exc}", 1)
        print_summary(summary.as_dict())
        typer.echo("")
        for line in drafts:
            typer.echo(line)
        token = dev_token(settings, "system/*.read")
        valid_min = settings.api.auth.max_token_lifetime_s // 60
        base = f"http://127.0.0.1:{port}"
        typer.echo(
            f"\nWhere to look (development token valid {valid_min} min; "
            f"new one: homework-fhir token, with HOMEWORK_FHIR_DATA_DIR={data_dir}):\n"
            f"  export TOKEN={token}\n"
            f'  curl -H "Authorization: Bearer $TOKEN" \\\n'
            f'       "{base}/fhir/Task?business-status=reviewed"\n'
            f'  curl -H "Authorization: Bearer $TOKEN" "{base}/fhir/CarePlan?patient=pat-1"\n'
            f'  curl -H "Authorization: Bearer $TOKEN" \\\n'
            f'       "{base}/fhir/Measure/homework-review-rate/\\$evaluate-measure'
            f'?periodStart=2025-01"\n'
            f"  HOMEWORK_FHIR_ENVIRONMENT=development \\\n"
            f"  HOMEWORK_FHIR_DATABASE_URL={settings.database_url} \\\n"
            f"       homework-fhir quality sql review_rate_by_therapist\n"
            f"  dashboard: {base}/dashboard (log in with the token)\n"
            f"  store: {data_dir / 'demo.sqlite3'}"
        )
        if not serve:
            return
        import uvicorn

        service = build_service(*dev_ehr_setup(settings, base, source))
        launch = demo_launch_link(base)
        typer.echo(
            f"\nClinician review app (SMART EHR launch against the development EHR, "
            f"signing in as Dr. Amara Okafor, patient pat-1, session enc-1-3):\n  {launch}"
        )
        typer.echo(f"serving the API on {base} (Ctrl-C to stop)")
        uvicorn.run(service.app, host="127.0.0.1", port=port, log_config=None)
