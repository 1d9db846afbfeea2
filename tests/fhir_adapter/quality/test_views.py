"""The ViewDefinitions materialised as tables (SQLite and PostgreSQL), the published fidelity
SQL over them, and the CSV/Parquet exports: each gives the numbers `$evaluate-measure` gives
on the samples the real pipeline processed."""

from __future__ import annotations

import csv
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from sqlalchemy import inspect, text

from fhir_adapter.quality import MeasureRequest, evaluate_measure, views
from fhir_adapter.quality.views import QUERIES, export, materialise, run_query
from fhir_adapter.store import Store, leases, open_store, resources

Q1 = (date(2025, 1, 1), date(2025, 3, 31))


def populations(group: dict[str, Any]) -> dict[str, int]:
    return {p["code"]["coding"][0]["code"]: p["count"] for p in group["population"]}


def strata(report: dict[str, Any], name: str) -> dict[str, dict[str, Any]]:
    found = next(s for s in report["group"][0]["stratifier"] if s["code"][0]["text"] == name)
    return {s["value"]["coding"][0]["code"]: s for s in found.get("stratum", [])}


def rate(value: Any) -> float:
    """A rate as the report rounds it (PostgreSQL answers NUMERIC, SQLite a float)."""
    return round(float(value), 4)


def report(store: Store, measure: str) -> dict[str, Any]:
    return evaluate_measure(store, measure, MeasureRequest(*Q1))


def test_tables_hold_one_row_per_resource(sample_store: Store) -> None:
    written = materialise(sample_store)
    with sample_store.session() as session:
        _, tasks = resources.search(session, resources.Query("Task", count=0))
    assert written["homework_tasks"] == tasks
    assert written["homework_sessions"] == 9 and written["homework_scores"] == 16
    with sample_store.engine.connect() as connection:
        rows = connection.execute(text("SELECT category, review_status FROM homework_tasks"))
        assert {r.review_status for r in rows} == {"reviewed", "not-reviewed", "awaiting-review"}
    tables = set(inspect(sample_store.engine).get_table_names())
    assert {"homework_sessions", "homework_tasks", "homework_scores"} <= tables
    assert not {t for t in tables if t.endswith("__new")}


def test_sql_answers_equal_evaluate_measure(sample_store: Store) -> None:
    materialise(sample_store)
    assignment, review = (
        report(sample_store, "homework-assignment-rate"),
        report(sample_store, "homework-review-rate"),
    )
    [row] = run_query(sample_store, "assignment_rate", *Q1)
    a = populations(assignment["group"][0])
    assert (row["sessions"], row["with_homework"]) == (a["denominator"], a["numerator"])
    assert rate(row["assignment_rate"]) == assignment["group"][0]["measureScore"]["value"]

    [row] = run_query(sample_store, "review_rate", *Q1)
    r = populations(review["group"][0])
    assert (row["tasks"], row["followed_up"], row["reviewed"]) == (
        r["initial-population"],
        r["denominator"],
        r["numerator"],
    )
    assert rate(row["review_rate"]) == review["group"][0]["measureScore"]["value"]

    by_therapist = strata(review, "practitioner")
    rows = run_query(sample_store, "review_rate_by_therapist", *Q1)
    assert {x["practitioner"] for x in rows} == set(by_therapist) and len(rows) == 2
    for x in rows:
        stratum = by_therapist[x["practitioner"]]
        assert (x["followed_up"], x["reviewed"]) == (
            populations(stratum)["denominator"],
            populations(stratum)["numerator"],
        )
        assert rate(x["review_rate"]) == stratum["measureScore"]["value"]
        assert x["practitioner_name"] == stratum["value"]["text"]

    assigned = strata(assignment, "practitioner")
    for x in run_query(sample_store, "assignment_rate_by_therapist", *Q1):
        assert x["with_homework"] == populations(assigned[x["practitioner"]])["numerator"]

    months = run_query(sample_store, "rates_by_month", *Q1)
    assert [m["month"] for m in months] == sorted(strata(assignment, "month"))
    for m in months:
        assert m["reviewed"] == populations(strata(review, "month")[m["month"]])["numerator"]
    assert set(QUERIES) == {"assignment_rate", "review_rate", "assignment_rate_by_therapist",
                            "review_rate_by_therapist", "rates_by_month"}  # fmt: skip


def test_a_period_with_no_sessions(sample_store: Store) -> None:
    # Counts are 0, as $evaluate-measure says (SUM over no rows is NULL); rates have none.
    materialise(sample_store)
    empty = (date(2030, 1, 1), date(2030, 3, 31))
    [row] = run_query(sample_store, "review_rate", *empty)
    assert row == {"tasks": 0, "followed_up": 0, "reviewed": 0, "review_rate": None}
    [row] = run_query(sample_store, "assignment_rate", *empty)
    assert row == {"sessions": 0, "with_homework": 0, "assignment_rate": None}
    for grouped in ("assignment_rate_by_therapist", "review_rate_by_therapist", "rates_by_month"):
        assert run_query(sample_store, grouped, *empty) == []  # no therapist, no month


def task_rows(store: Store) -> dict[str, str]:
    with store.engine.connect() as connection:
        rows = connection.execute(text("SELECT id, review_status FROM homework_tasks"))
        return {r.id: r.review_status for r in rows}


def test_refresh_replaces_only_what_changed(sample_store: Store) -> None:
    first = materialise(sample_store)
    before = task_rows(sample_store)
    with sample_store.session() as session:
        found, _ = resources.search(
            session, resources.Query("Task", business_status=["awaiting-review"], count=2)
        )
        settled = found[0]
        settled["businessStatus"]["coding"][0]["code"] = "not-reviewed"
        resources.put(session, settled)
        cancelled = {**found[1], "status": "cancelled"}
        resources.put(session, cancelled)
    # Without the overlap, only the changed Tasks are read again (and the newest resource of
    # each type at the last refresh: the watermark is inclusive).
    again = materialise(sample_store, overlap=timedelta(0))
    assert again["homework_tasks"] <= 2 and again["homework_sessions"] <= 1
    assert again["homework_tasks"] < first["homework_tasks"] // 4
    after = task_rows(sample_store)
    assert after[f"Task/{settled['id']}"] == "not-reviewed"
    assert f"Task/{cancelled['id']}" not in after  # a cancelled draft is not homework
    assert len(after) == len(before) - 1 == first["homework_tasks"] - 1
    # With the overlap (the default), recent changes are read again: nothing is lost.
    assert materialise(sample_store)["homework_tasks"] == len(after)
    assert task_rows(sample_store) == after


def test_a_changed_definition_or_full_rebuilds(
    sample_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = materialise(sample_store)
    assert materialise(sample_store, full=True) == first
    monkeypatch.setattr(views, "_fingerprint", lambda name: "changed")
    assert materialise(sample_store, overlap=timedelta(0)) == first


def test_one_refresh_at_a_time(sample_store: Store) -> None:
    assert leases.acquire(sample_store, views.VIEWS_LEASE, "another-process")
    with pytest.raises(views.ViewsBusyError):
        materialise(sample_store)
    leases.release(sample_store, views.VIEWS_LEASE, "another-process")
    assert materialise(sample_store)["homework_tasks"] > 0


def test_the_pipeline_refreshes_the_views(demo_dir: Path) -> None:
    """The demo's backfill (the pipeline's ingest) leaves the views up to date."""
    demo = open_store(f"sqlite:///{demo_dir / 'demo.sqlite3'}")
    try:
        with demo.session() as session:
            _, tasks = resources.search(session, resources.Query("Task", count=0))
        assert len(task_rows(demo)) == tasks > 0
    finally:
        demo.close()


def test_exports(sample_store: Store, tmp_path: Path) -> None:
    written = materialise(sample_store)
    csvs = export(sample_store, tmp_path / "csv", "csv")
    for path in csvs:
        with path.open(encoding="utf-8") as f:
            assert len(list(csv.DictReader(f))) == written[path.stem]
    parquets = export(sample_store, tmp_path / "pq", "parquet")
    tasks = pq.read_table(next(p for p in parquets if p.stem == "homework_tasks"))
    assert tasks.num_rows == written["homework_tasks"]
    assert str(tasks.schema.field("confidence").type) == "double"
    scores = pq.read_table(next(p for p in parquets if p.stem == "homework_scores"))
    assert str(scores.schema.field("score").type) == "int64"
