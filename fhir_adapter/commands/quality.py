"""`homework-fhir quality ...`: fidelity for quality teams from the command line.

`report` prints a MeasureReport (the same as `$evaluate-measure`), `outcomes` the outcome
linkage, `views` rebuilds the SQL tables BI tools read, `export` writes them as CSV or Parquet,
and `sql` runs one of the published fidelity queries over the tables. The store alone is
opened: no model, no EHR.
"""

from __future__ import annotations

import csv
import json
import sys
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer

from fhir_adapter.commands._common import (
    check_output_path,
    fail,
    load_settings_or_exit,
    store_only,
)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML settings file (else HOMEWORK_FHIR_* variables)."),
]
FromOption = Annotated[
    str | None, typer.Option("--from", help="First day (YYYY, YYYY-MM or YYYY-MM-DD).")
]
ToOption = Annotated[
    str | None, typer.Option("--to", help="Last day, inclusive (YYYY, YYYY-MM or YYYY-MM-DD).")
]
PractitionerOption = Annotated[
    str | None, typer.Option("--practitioner", help="Only this therapist (Practitioner/id).")
]
ClinicOption = Annotated[
    str | None, typer.Option("--clinic", help="Only this clinic (Organization/id).")
]


def _request(
    start: str | None, end: str | None, practitioner: str | None, clinic: str | None,
    report_type: str = "summary",
) -> Any:  # fmt: skip
    """The same parsing and errors as the API's `$evaluate-measure` parameters."""
    from fhir_adapter.api.outcome import ApiError
    from fhir_adapter.api.quality import measure_request

    params = [("reportType", report_type)]
    for name, value in (("periodStart", start), ("periodEnd", end),
                        ("practitioner", practitioner), ("clinic", clinic)):  # fmt: skip
        if value is not None:
            params.append((name, value))
    try:
        return measure_request(params)
    except ApiError as exc:
        fail(exc.diagnostics.replace("periodStart", "--from").replace("periodEnd", "--to"))


def _write_csv(rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def register(app: typer.Typer) -> None:
    quality_app = typer.Typer(help="Fidelity measures, outcome linkage, SQL views and exports.")
    app.add_typer(quality_app, name="quality")

    @quality_app.command("report")
    def report(
        measure: Annotated[
            str, typer.Argument(help="homework-assignment-rate or homework-review-rate.")
        ],
        start: FromOption = None,
        end: ToOption = None,
        practitioner: PractitionerOption = None,
        clinic: ClinicOption = None,
        subject_list: Annotated[
            bool, typer.Option("--subject-list", help="Name the sessions or tasks counted.")
        ] = False,
        config: ConfigOption = None,
    ) -> None:
        """Print the MeasureReport (JSON), as `$evaluate-measure` answers it."""
        from fhir_adapter.quality import evaluate_measure
        from mapping.quality.measures import MEASURE_IDS

        if measure not in MEASURE_IDS:
            fail(f"no measure {measure!r}; measures: {', '.join(MEASURE_IDS)}")
        wanted = _request(start, end, practitioner, clinic,
                          "subject-list" if subject_list else "summary")  # fmt: skip
        with store_only(load_settings_or_exit(config)) as store:
            body = evaluate_measure(store, measure, wanted)
        typer.echo(json.dumps(body, indent=2, ensure_ascii=False))

    @quality_app.command("outcomes")
    def outcomes(
        start: FromOption = None,
        end: ToOption = None,
        practitioner: PractitionerOption = None,
        clinic: ClinicOption = None,
        fmt: Annotated[
            str, typer.Option("--format", help="json (courses and association) or csv.")
        ] = "json",
        config: ConfigOption = None,
    ) -> None:
        """Each patient's review rate beside their PHQ-9/GAD-7 change, and the association."""
        from fhir_adapter.quality import course_outcomes

        if fmt not in ("json", "csv"):
            fail("--format must be json or csv")
        wanted = _request(start, end, practitioner, clinic)
        with store_only(load_settings_or_exit(config)) as store:
            body = course_outcomes(store, wanted)
        if fmt == "json":
            typer.echo(json.dumps(body, indent=2, ensure_ascii=False))
            return
        rows = []
        for c in body["courses"]:
            row = {k: v for k, v in c.items() if k not in ("phq9", "gad7")}
            for instrument in ("phq9", "gad7"):
                change = c[instrument] or {}
                row[f"{instrument}_first_date"] = (change.get("first") or {}).get("date")
                row[f"{instrument}_first"] = (change.get("first") or {}).get("value")
                row[f"{instrument}_last_date"] = (change.get("last") or {}).get("date")
                row[f"{instrument}_last"] = (change.get("last") or {}).get("value")
                row[f"{instrument}_change"] = change.get("change")
            rows.append(row)
        _write_csv(rows)

    @quality_app.command("views")
    def views(
        full: Annotated[
            bool, typer.Option("--full", help="Rebuild every table whole, not only changes.")
        ] = False,
        config: ConfigOption = None,
    ) -> None:
        """Bring the SQL tables (homework_sessions, homework_tasks, homework_scores) up to date
        with the store (the pipeline does it after each pass unless quality.refresh_views is
        off)."""
        from tqdm import tqdm

        from fhir_adapter.quality.views import ViewsBusyError, materialise

        with store_only(load_settings_or_exit(config)) as store:
            bar = tqdm(desc="rows", unit="row", disable=not sys.stderr.isatty())
            seen: dict[str, int] = {}

            def progress(name: str, rows: int) -> None:
                bar.update(rows - seen.get(name, 0))
                seen[name] = rows

            try:
                written = materialise(store, progress, full=full)
            except ViewsBusyError as exc:
                fail(str(exc), 1)
            finally:
                bar.close()
        for name, rows in written.items():
            typer.echo(f"{name}: {rows} rows")

    @quality_app.command("export")
    def export(
        out_dir: Annotated[Path, typer.Argument(help="Folder for <view>.csv / <view>.parquet.")],
        fmt: Annotated[str, typer.Option("--format", help="csv or parquet.")] = "csv",
        config: ConfigOption = None,
    ) -> None:
        """Write each view as a CSV or Parquet file."""
        from fhir_adapter.quality.views import export as export_views

        if fmt not in ("csv", "parquet"):
            fail("--format must be csv or parquet")
        check_output_path(out_dir, "OUT_DIR", folder=True)
        with store_only(load_settings_or_exit(config)) as store:
            try:
                paths = export_views(store, out_dir, "csv" if fmt == "csv" else "parquet")
            except OSError as exc:  # no permission, disk full
                fail(f"cannot write in {out_dir}: {exc.strerror} ({exc.filename}); check the "
                     "folder and its permissions")  # fmt: skip
        for path in paths:
            typer.echo(str(path))

    @quality_app.command("sql")
    def sql(
        name: Annotated[str, typer.Argument(help="The query; `--list` names them.")] = "",
        start: FromOption = None,
        end: ToOption = None,
        show: Annotated[bool, typer.Option("--show", help="Print the SQL, not the rows.")] = False,
        config: ConfigOption = None,
    ) -> None:
        """Run a published fidelity query over the views (CSV on stdout)."""
        from sqlalchemy.exc import SQLAlchemyError

        from fhir_adapter.quality.views import QUERIES, query_sql, run_query

        if name not in QUERIES:
            fail(f"name a query: {', '.join(QUERIES)}")
        if show:
            typer.echo(query_sql(name))
            return
        wanted = _request(start, end, None, None)
        first = wanted.period_start or date(1900, 1, 1)
        last = wanted.period_end or date(9999, 12, 31)
        with store_only(load_settings_or_exit(config)) as store:
            try:
                rows = run_query(store, name, first, last)
            except SQLAlchemyError:
                fail("the views are not there yet: run `homework-fhir quality views` first", 1)
        _write_csv(rows)
