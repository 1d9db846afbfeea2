"""How a write's outcome is recorded when the row changed meanwhile, or its note failed: the
EHR is faked (`writeback._attempt`), the store is real (SQLite and PostgreSQL), and the races
between processes run on two PostgreSQL sessions, interleaved by waiting on the row lock."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, cast

import psycopg
import pytest

from fhir_adapter.ehr.client import FhirClient
from fhir_adapter.pipeline import writeback
from fhir_adapter.store import Store, open_store, outbox
from fhir_adapter.store.models import OutboxRow
from fhir_adapter.store.outbox import CARE_PLAN_STORE, CHART, NOTE_PROVENANCE, outbox_key
from tests.databases import postgres_database

CONN = "clinic"
# The EHR is never reached: `_attempt` is replaced in every test.
CLIENTS = {CHART: cast(FhirClient, object()), CARE_PLAN_STORE: cast(FhirClient, object())}


def _task(status: str) -> dict[str, Any]:
    return {"resourceType": "Task", "id": "t1", "identifier": [{"system": "urn:t", "value": "t1"}],
            "status": "requested", "businessStatus": {"text": status}}  # fmt: skip


def _enqueue(
    store: Store, target: str, body: dict[str, Any], key: tuple[str, str] | None = None
) -> int:
    with store.session() as session:
        return outbox.enqueue(session, CONN, target, key or outbox_key(body), body).id


def _row(store: Store, row_id: int) -> OutboxRow:
    with store.session() as session:
        row = session.get(OutboxRow, row_id)
        assert row is not None
        return row


def _done(server_id: str) -> writeback._Outcome:
    return writeback._Outcome("done", stored={"id": server_id, "meta": {"versionId": "1"}})


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    opened = open_store(database_url)
    yield opened
    opened.close()


@pytest.fixture
def two_processes() -> Iterator[tuple[str, Store, Store]]:
    """Two stores (as two processes) on one fresh PostgreSQL database."""
    with contextmanager(postgres_database)() as url:
        first, second = open_store(url), open_store(url)
        try:
            yield url, first, second
        finally:
            first.close()
            second.close()


def _wait_for_a_lock_waiter(url: str, timeout_s: float = 20.0) -> None:
    """Return once some transaction on this database waits on a row lock."""
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"),
                         autocommit=True) as conn:  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()
            if found and found[0]:
                return
            time.sleep(0.02)
    raise AssertionError("no transaction waited on the row lock")


async def test_an_update_queued_while_the_outcome_is_recorded_is_sent(
    two_processes: tuple[str, Store, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """B queues P2 (uncommitted) while A's write of P1 is in flight; A records its outcome while
    B still holds its transaction: the row must end pending with P2, not done."""
    url, first, second = two_processes
    row_id = _enqueue(first, CARE_PLAN_STORE, _task("Awaiting review"))
    queued = threading.Event()
    errors: list[BaseException] = []

    def other_process() -> None:
        try:
            with second.session() as session:
                outbox.enqueue(session, CONN, CARE_PLAN_STORE, outbox_key(_task("Reviewed")),
                               _task("Reviewed"))  # fmt: skip
                queued.set()
                _wait_for_a_lock_waiter(url)  # A's outcome step waits on our uncommitted row
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)
            queued.set()

    other = threading.Thread(target=other_process)

    async def attempt(*args: Any) -> writeback._Outcome:
        other.start()
        queued.wait(timeout=20)
        return _done("t1")

    monkeypatch.setattr(writeback, "_attempt", attempt)
    sent_all = await writeback._send(first, row_id, CLIENTS, writeback.FlushSummary())
    other.join(timeout=30)
    assert errors == []
    row = _row(first, row_id)
    assert (row.status, row.payload["businessStatus"]["text"]) == ("pending", "Reviewed")
    assert row.server_id == "t1" and row.next_attempt_at <= datetime.now(UTC)
    assert sent_all is False  # left due now, for this flush's next pass


async def test_an_update_queued_while_the_outcome_commits_sets_the_row_back_to_pending(
    two_processes: tuple[str, Store, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reverse order: B reads the row while A's DONE is not yet committed."""
    url, first, second = two_processes
    row_id = _enqueue(first, CARE_PLAN_STORE, _task("Awaiting review"))
    errors: list[BaseException] = []

    def other_process() -> None:
        try:
            with second.session() as session:
                outbox.enqueue(session, CONN, CARE_PLAN_STORE, outbox_key(_task("Reviewed")),
                               _task("Reviewed"))  # fmt: skip
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    other = threading.Thread(target=other_process)
    real_mark_sent = outbox.mark_sent

    def mark_sent_then_other_enqueues(*args: Any, **kwargs: Any) -> bool:
        done = real_mark_sent(*args, **kwargs)  # DONE, flushed, not committed
        other.start()
        _wait_for_a_lock_waiter(url)  # B's enqueue waits on our row
        return done

    async def attempt(*args: Any) -> writeback._Outcome:
        return _done("t1")

    monkeypatch.setattr(writeback, "_attempt", attempt)
    monkeypatch.setattr(outbox, "mark_sent", mark_sent_then_other_enqueues)
    assert await writeback._send(first, row_id, CLIENTS, writeback.FlushSummary()) is True
    other.join(timeout=30)
    assert errors == []
    row = _row(first, row_id)
    assert (row.status, row.payload["businessStatus"]["text"]) == ("pending", "Reviewed")
    assert (row.server_id, row.attempts) == ("t1", 0)
    assert row.next_attempt_at <= datetime.now(UTC)


async def test_a_refused_payload_replaced_in_flight_does_not_fail_the_newer_one(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    row_id = _enqueue(store, CARE_PLAN_STORE, _task("Awaiting review"))
    sent: list[str] = []

    async def attempt(client: FhirClient, row: OutboxRow, note_ref: str | None) -> Any:
        sent.append(row.payload["businessStatus"]["text"])
        if len(sent) == 1:  # another process queues the reviewed Task meanwhile
            _enqueue(store, CARE_PLAN_STORE, _task("Reviewed"))
            return writeback._Outcome("failed", "HTTP 422 unprocessable")
        return _done("t1")

    monkeypatch.setattr(writeback, "_attempt", attempt)
    summary = await writeback.flush(store, CONN, CLIENTS)
    assert (summary.done, summary.retrying, summary.failed) == (1, 0, 0)
    assert sent == ["Awaiting review", "Reviewed"]
    row = _row(store, row_id)
    assert (row.status, row.last_error, row.payload["businessStatus"]["text"]) == (
        "done", None, "Reviewed")  # fmt: skip


async def test_a_provenance_whose_note_failed_fails_and_comes_back_with_it(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    note = {"resourceType": "DocumentReference", "status": "current",
            "identifier": [{"system": "urn:note", "value": "n1"}]}  # fmt: skip
    note_id = _enqueue(store, CHART, note)
    provenance = {"resourceType": "Provenance", "target": [{"reference": "DocumentReference/x"}]}
    provenance_id = _enqueue(store, CHART, provenance, (NOTE_PROVENANCE, "urn:note|n1"))
    refused = True
    sent: list[tuple[str, str | None]] = []

    async def attempt(client: FhirClient, row: OutboxRow, note_ref: str | None) -> Any:
        sent.append((row.resource_type, note_ref))
        if refused:
            return writeback._Outcome("failed", "HTTP 422 unprocessable")
        return _done("n-1" if row.resource_type == "DocumentReference" else "p-1")

    monkeypatch.setattr(writeback, "_attempt", attempt)
    summary = await writeback.flush(store, CONN, CLIENTS)
    assert (summary.done, summary.retrying, summary.failed) == (0, 0, 2)
    assert sent == [("DocumentReference", None)]  # the Provenance is never sent alone
    waiting = _row(store, provenance_id)
    assert (waiting.status, waiting.attempts, waiting.last_error) == (
        "failed", 1, f"waits on outbox row {note_id}, which failed")  # fmt: skip

    # The operator retries the note: its Provenance comes back with it, and both go out.
    with store.session() as session:
        assert outbox.requeue(session, CONN, [note_id]) == 2
    refused = False
    summary = await writeback.flush(store, CONN, CLIENTS)
    assert (summary.done, summary.retrying, summary.failed) == (2, 0, 0)
    assert sent[1:] == [("DocumentReference", None), ("Provenance", "DocumentReference/n-1")]
    assert _row(store, provenance_id).status == "done"
