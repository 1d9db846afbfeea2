"""The store on SQLite and on the local PostgreSQL: migrations, versions, search, outbox."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import event, insert, inspect

from fhir_adapter.store import Store, open_store, outbox, resources, work
from fhir_adapter.store.models import Base, ResourceRow
from fhir_adapter.store.resources import DateBound, Query
from fhir_adapter.store.search_index import parse_range

SYSTEM = "https://homework-fhir.org/fhir/sid/task"


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = open_store(database_url)
    yield store
    store.close()


def task(
    value: str, status: str = "awaiting-review", patient: str = "Patient/p1"
) -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "identifier": [{"system": SYSTEM, "value": value}],
        "status": "draft",
        "intent": "proposal",
        "for": {"reference": patient},
        "encounter": {"reference": "Encounter/e1"},
        "code": {
            "coding": [
                {
                    "system": "https://homework-fhir.org/fhir/CodeSystem/homework-category",
                    "code": "journal",
                }
            ]
        },
        "businessStatus": {"coding": [{"code": status}]},
        "authoredOn": "2026-03-02T10:00:00Z",
    }


def test_migrations_create_every_table(store: Store) -> None:
    tables = set(inspect(store.engine).get_table_names())
    assert {
        "resource",
        "resource_version",
        "resource_identifier",
        "encounter_work",
        "cursor",
        "outbox",
        "alembic_version",
    } <= tables


def test_the_migrations_build_the_schema_the_models_describe(store: Store) -> None:
    """Tables, columns, types and indexes: a model change without its migration (or the
    reverse) shows up here."""
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_reopen_is_idempotent(database_url: str) -> None:
    open_store(database_url).close()
    store = open_store(database_url)  # second upgrade to head is a no-op
    with store.session() as s:
        assert resources.search(s, Query("Task"))[1] == 0
    store.close()


def test_put_assigns_id_and_versions_only_real_changes(store: Store) -> None:
    with store.session() as s:
        first = resources.put(s, task("t1"))
    rid = first["id"]
    assert first["meta"]["versionId"] == "1"
    with store.session() as s:
        same = resources.put(s, task("t1"))  # same identifier, same content: no new version
        assert same["id"] == rid and same["meta"]["versionId"] == "1"
        changed = resources.put(s, task("t1", status="reviewed"))
        assert changed["id"] == rid and changed["meta"]["versionId"] == "2"
    with store.session() as s:
        versions = resources.history(s, "Task", rid)
        assert [v["meta"]["versionId"] for v in versions] == ["2", "1"]
        assert (
            resources.by_identifier(s, "Task", SYSTEM, "t1")["businessStatus"]["coding"][0]["code"]
            == "reviewed"
        )  # type: ignore[index]
        last_updated = datetime.fromisoformat(
            versions[0]["meta"]["lastUpdated"].replace("Z", "+00:00")
        )
        assert last_updated.tzinfo is not None


def test_search_by_patient_status_code_and_dates(store: Store) -> None:
    with store.session() as s:
        resources.put(s, task("a"))
        resources.put(s, task("b", status="reviewed"))
        resources.put(s, task("c", patient="Patient/p2"))
    with store.session() as s:
        found, total = resources.search(s, Query("Task", patient="Patient/p1"))
        assert total == 2 and {r["identifier"][0]["value"] for r in found} == {"a", "b"}
        _, total = resources.search(s, Query("Task", business_status=["reviewed"]))
        assert total == 1
        _, total = resources.search(s, Query("Task", code=[(None, "journal")]))
        assert total == 3
        _, total = resources.search(s, Query("Task", code=[("http://other", "journal")]))
        assert total == 0
        # The search value's precision is its range (FHIR search): the second 10:00:00.
        when, second_later = parse_range("2026-03-02T10:00:00Z")
        _, total = resources.search(s, Query("Task", date=[DateBound("ge", when, second_later)]))
        assert total == 3
        _, total = resources.search(s, Query("Task", date=[DateBound("gt", when, second_later)]))
        assert total == 0
        _, total = resources.search(s, Query("Task", identifier=(SYSTEM, "c")))
        assert total == 1
        page, total = resources.search(s, Query("Task", count=2, offset=2))
        assert total == 3 and len(page) == 1


def test_outbox_enqueue_is_idempotent_and_requeues_changes(store: Store) -> None:
    with store.session() as s:
        row = outbox.enqueue(s, "ehr", "chart", (SYSTEM, "t1"), task("t1"))
        again = outbox.enqueue(s, "ehr", "chart", (SYSTEM, "t1"), task("t1"))
        assert again.id == row.id
        assert [r.id for r in outbox.due(s, "ehr")] == [row.id]
        outbox.mark_done(s, row, "srv-1", "1")
        assert outbox.due(s, "ehr") == []
        changed = outbox.enqueue(s, "ehr", "chart", (SYSTEM, "t1"), task("t1", status="reviewed"))
        assert changed.id == row.id and changed.status == "pending" and changed.server_id == "srv-1"
        outbox.mark_retry(s, changed, "HTTP 503", timedelta(minutes=5))
        assert outbox.due(s, "ehr") == []
        assert [
            r.id for r in outbox.due(s, "ehr", now=datetime.now(UTC) + timedelta(minutes=6))
        ] == [row.id]
        outbox.mark_failed(s, changed, "HTTP 403")
        assert outbox.counts(s, "ehr") == {"failed": 1}
        assert outbox.requeue(s, "ehr") == 1


def test_a_superseded_note_version_stays_failed_until_its_row_takes_a_new_payload(
    store: Store,
) -> None:
    """`requeue` leaves a superseded version and its Provenance failed, named or not; the row
    reused for a later change of the note (a new payload) is pending again, with them."""

    def version(text: str) -> dict[str, Any]:
        return {"resourceType": "DocumentReference", "content": [{"attachment": {"data": text}}]}

    with store.session() as s:
        stale = outbox.enqueue(s, "ehr", "chart", ("urn:version", "v1"), version("one"))
        outbox.mark_failed(s, stale, "HTTP 422")
        later = outbox.enqueue(s, "ehr", "chart", ("urn:version", "v2"), version("two"))
        provenance = outbox.enqueue(s, "ehr", "chart", (outbox.NOTE_PROVENANCE, "urn:version|v1"),
                                    {"resourceType": "Provenance", "id": "p1"})  # fmt: skip
        outbox.mark_failed(s, provenance, outbox.waits_on(stale.id))
        outbox.supersede(s, stale, later)
        assert (stale.last_error or "").startswith(f"superseded by outbox row {later.id}")
        assert outbox.requeue(s, "ehr") == 0
        assert outbox.requeue(s, "ehr", [stale.id, provenance.id]) == 0
        assert outbox.superseded(s, "ehr") == 2 and outbox.counts(s, "ehr")["failed"] == 2

        outbox.enqueue(s, "ehr", "chart", ("urn:version", "v1"), version("three"))
        assert (stale.status, stale.last_error, provenance.status) == ("pending", None, "pending")
        assert outbox.superseded(s, "ehr") == 0


def test_work_state_and_cursor(store: Store) -> None:
    start = datetime(2026, 3, 2, 10, tzinfo=UTC)
    with store.session() as s:
        row, created = work.upsert_encounter(
            s, "ehr", "Encounter/e1", "Patient/p1", start, None, "ingested"
        )
        assert created
        _, created = work.upsert_encounter(
            s, "ehr", "Encounter/e1", "Patient/p1", start, None, "ingested"
        )
        assert not created
        work.record_failure(s, row, "model server unavailable")
        work.advance(s, row, "detected", {"detections": 3})
        work.set_cursor(s, "ehr", "encounters", "2026-03-02T11:00:00Z")
    with store.session() as s:
        rows = work.encounters_at(s, "ehr", ["detected"])
        assert [(r.encounter, r.state, r.attempts, r.last_error) for r in rows] == [
            ("Encounter/e1", {"detections": 3}, 0, None)
        ]
        assert rows[0].period_start == start
        assert work.get_cursor(s, "ehr", "encounters") == "2026-03-02T11:00:00Z"


def test_a_failed_unit_of_work_leaves_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError), store.session() as s:
        resources.put(s, task("t9"))
        raise RuntimeError("crash between steps")
    with store.session() as s:
        assert resources.by_identifier(s, "Task", SYSTEM, "t9") is None


def test_two_processes_storing_the_same_new_resource_both_succeed() -> None:
    """Workers drafting different patients both store and queue the model's Device: the
    second insert waits for the first to commit, then finds it (no IntegrityError)."""
    import threading
    import time
    from contextlib import contextmanager

    from tests.databases import postgres_database

    device = {"resourceType": "Device", "id": "dev-1",
              "identifier": [{"system": "urn:x", "value": "dev-1"}]}  # fmt: skip
    with contextmanager(postgres_database)() as url:
        first, second = open_store(url), open_store(url)
        errors: list[BaseException] = []

        def later() -> None:
            try:
                with second.session() as s:
                    resources.put(s, device)
                    outbox.enqueue(s, "ehr", outbox.CHART, ("urn:x", "dev-1"), device)
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

        try:
            with first.session() as s:
                resources.put(s, device)
                outbox.enqueue(s, "ehr", outbox.CHART, ("urn:x", "dev-1"), device)
                other = threading.Thread(target=later)
                other.start()
                time.sleep(0.5)  # the other transaction now waits on our uncommitted rows
            other.join(timeout=30)
            assert errors == []
            with first.session() as s:
                assert resources.get(s, "Device", "dev-1")["meta"]["versionId"] == "1"  # type: ignore[index]
                assert outbox.counts(s) == {"pending": 1}
        finally:
            first.close()
            second.close()


def test_a_therapists_quarter_is_counted_through_its_index_on_sqlite(tmp_path: Path) -> None:
    """20,000 Tasks of 5 therapists over a year (rows written directly: the planner only sees
    the indexes): after `refresh_statistics`, the fidelity count seeks the therapist's dates in
    (type, practitioner, date). Sampled statistics sent it through the date index, reading
    every therapist's half year."""
    store = open_store(f"sqlite:///{tmp_path / 'plan.db'}")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = []
    for n in range(20_000):
        day = start + timedelta(hours=n * 365 * 24 / 20_000)
        rows.append({
            "resource_type": "Task", "id": f"t{n}", "version_id": 1, "last_updated": start,
            "body": {}, "practitioner": f"Practitioner/r{n % 5}",
            "business_status": ("reviewed", "awaiting-review", "not-reviewed")[n % 3],
            "date": day, "date_end": day + timedelta(seconds=1),
        })  # fmt: skip
    with store.engine.begin() as connection:
        connection.execute(insert(ResourceRow), rows)
    store.refresh_statistics()
    query = Query(
        "Task",
        practitioner="Practitioner/r2",
        business_status=["reviewed"],
        date=[DateBound("ge", *parse_range("2026-04-01")),
              DateBound("lt", *parse_range("2026-07-01"))],
        count=0,
    )  # fmt: skip
    executed: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        executed.append((statement, parameters))

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        with store.session() as s:
            _, total = resources.search(s, query)
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
    assert 300 < total < 370  # a third of the therapist's quarter (4,000 Tasks a year)
    [(statement, parameters)] = [(s, p) for s, p in executed if "count(" in s]
    with store.engine.connect() as connection:
        plan = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
    store.close()
    assert "USING INDEX ix_resource_type_practitioner_date" in " ".join(r[-1] for r in plan)
