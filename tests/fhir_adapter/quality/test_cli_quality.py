"""`homework-fhir quality ...` over a store the real pipeline filled."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fhir_adapter.cli import app
from fhir_adapter.store import Store

runner = CliRunner()


@pytest.fixture
def env(sample_store: Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOMEWORK_FHIR_ENVIRONMENT", "development")
    monkeypatch.setenv("HOMEWORK_FHIR_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HOMEWORK_FHIR_DATABASE_URL", sample_store.engine.url.render_as_string(
        hide_password=False))  # fmt: skip


@pytest.mark.usefixtures("env")
def test_report_views_sql_export(tmp_path: Path) -> None:
    done = runner.invoke(app, ["quality", "report", "homework-review-rate", "--from", "2025-01",
                               "--to", "2025-03"])  # fmt: skip
    assert done.exit_code == 0, done.output
    body = json.loads(done.stdout)
    assert body["resourceType"] == "MeasureReport" and body["period"]["end"] == "2025-03-31"
    sql = runner.invoke(app, ["quality", "sql", "review_rate", "--from", "2025-01"])
    assert sql.exit_code == 1 and "quality views" in sql.output  # tables not built yet
    views = runner.invoke(app, ["quality", "views"])
    assert views.exit_code == 0 and "homework_tasks: " in views.output
    sql = runner.invoke(app, ["quality", "sql", "review_rate", "--from", "2025-01"])
    assert sql.exit_code == 0, sql.output
    [row] = list(csv.DictReader(io.StringIO(sql.stdout)))
    score = body["group"][0]["measureScore"]["value"]
    assert round(float(row["review_rate"]), 4) == score
    out = runner.invoke(app, ["quality", "export", str(tmp_path / "x"), "--format", "parquet"])
    assert out.exit_code == 0 and (tmp_path / "x" / "homework_tasks.parquet").exists()
    outcomes = runner.invoke(app, ["quality", "outcomes", "--format", "csv"])
    assert outcomes.exit_code == 0 and "phq9_change" in outcomes.stdout


@pytest.mark.usefixtures("env")
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["report", "readmissions"], "no measure"),
        (["report", "homework-review-rate", "--from", "2025-Q1"], "--from must be a date"),
        (["report", "homework-review-rate", "--from", "2025-03", "--to", "2025-01"], "before"),
        (["outcomes", "--format", "xml"], "json or csv"),
        (["export", "out", "--format", "xlsx"], "csv or parquet"),
        (["sql", "everything"], "name a query"),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], says: str) -> None:
    done = runner.invoke(app, ["quality", *args])
    assert done.exit_code == 2 and says in done.output
    assert "Traceback" not in done.output


def test_export_under_a_file_exits_2_before_opening_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOMEWORK_FHIR_ENVIRONMENT", "development")
    monkeypatch.setenv("HOMEWORK_FHIR_DATA_DIR", str(tmp_path / "data"))
    afile = tmp_path / "afile"
    afile.write_text("")
    done = runner.invoke(app, ["quality", "export", str(afile / "views")])
    assert done.exit_code == 2
    assert done.stderr == (
        f"error: OUT_DIR {afile / 'views'}: {afile} is a file, not a folder; pass a path "
        "under a folder\n"
    )
    assert not (tmp_path / "data").exists()  # the store was not opened
