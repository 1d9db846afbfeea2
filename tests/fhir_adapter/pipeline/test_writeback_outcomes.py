"""How a write's outcome is recorded when the row changed meanwhile, or its note failed: the
EHR is faked (`writeback._attempt`, or `FakeEhr` below the client), the store is real (SQLite
and PostgreSQL), and the races between processes run on two PostgreSQL sessions, interleaved
by waiting on the row lock."""

from __future__ import annotations

import base64
import copy
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, cast

import psycopg
import pytest

from fhir_adapter.ehr.client import FhirClient
from fhir_adapter.ehr.errors import (
    AmbiguousMatchError,
    CapabilityError,
    TemporaryFhirError,
    VersionConflictError,
)
from fhir_adapter.ehr.vendors import Vendor, vendor_profile
from fhir_adapter.pipeline import writeback
from fhir_adapter.store import Store, open_store, outbox
from fhir_adapter.store.models import OutboxRow
from fhir_adapter.store.outbox import CARE_PLAN_STORE, CHART, NOTE_PROVENANCE, outbox_key
from mapping.fhir.codes import SID_NOTE, SID_NOTE_VERSION
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


async def test_a_refused_notes_next_payload_brings_its_provenance_back(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The note refused, its Provenance failed waiting on it; a decision queues the note anew
    (nothing of it in the chart): the Provenance goes out with it, no operator needed."""
    note = {"resourceType": "DocumentReference", "status": "current",
            "identifier": [{"system": "urn:note", "value": "n1"}]}  # fmt: skip
    note_id = _enqueue(store, CHART, note)
    provenance = {"resourceType": "Provenance", "target": [{"reference": "DocumentReference/x"}]}
    provenance_id = _enqueue(store, CHART, provenance, (NOTE_PROVENANCE, "urn:note|n1"))
    refused = True

    async def attempt(client: FhirClient, row: OutboxRow, note_ref: str | None) -> Any:
        if refused:
            return writeback._Outcome("failed", "HTTP 422 unprocessable")
        return _done("n-1" if row.resource_type == "DocumentReference" else "p-1")

    monkeypatch.setattr(writeback, "_attempt", attempt)
    summary = await writeback.flush(store, CONN, CLIENTS)
    assert (summary.done, summary.failed) == (0, 2)

    assert _enqueue(store, CHART, {**note, "docStatus": "final"}) == note_id
    assert _row(store, provenance_id).status == "pending"
    refused = False
    summary = await writeback.flush(store, CONN, CLIENTS)
    assert (summary.done, summary.retrying, summary.failed) == (2, 0, 0)
    assert _row(store, provenance_id).status == "done"


class FakeEhr:
    """A chart in memory, as `writeback._write` sees a FhirClient: search by identifier (which
    matches `masterIdentifier` too, as R4 defines it; several matches are ambiguous), create,
    read, update with If-Match, and the vendor's refusals as the real client applies them.
    `lose_reply` makes the next create land while its answer is lost (a timeout); `refuse`,
    the next create refused with that error."""

    def __init__(self, vendor: Vendor = "generic") -> None:
        self.name = "fake-ehr"
        self.vendor = vendor_profile(vendor)
        self.notes: dict[str, dict[str, Any]] = {}
        self.lose_reply = False
        self.refuse: Exception | None = None
        self.on_create: Callable[[], None] | None = None  # runs while a create is in flight

    def client(self) -> dict[str, FhirClient]:
        return {CHART: cast(FhirClient, self)}

    def _check(self, body: Mapping[str, Any], interaction: str) -> None:
        reason = self.vendor.refusal(str(body["resourceType"]), interaction)
        if reason is not None:
            raise CapabilityError(self.name, [f"{body['resourceType']} {interaction}: {reason}"])

    async def search_by_identifier(
        self, resource_type: str, system: str, value: str
    ) -> dict[str, Any] | None:
        def matches(n: dict[str, Any]) -> bool:
            ids = [*n.get("identifier", ()), n.get("masterIdentifier") or {}]
            return any(i.get("system") == system and i.get("value") == value for i in ids)

        found = [n for n in self.notes.values() if matches(n)]
        if len(found) > 1:
            raise AmbiguousMatchError(f"{self.name}: several {resource_type}")
        return copy.deepcopy(found[0]) if found else None

    async def create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        self._check(body, "create")
        if self.on_create is not None:
            self.on_create()
        if self.refuse is not None:
            refused, self.refuse = self.refuse, None
            raise refused
        rid = f"n-{len(self.notes) + 1}"
        self.notes[rid] = {**copy.deepcopy(dict(body)), "id": rid, "meta": {"versionId": "1"}}
        if self.lose_reply:
            self.lose_reply = False
            raise TemporaryFhirError(f"{self.name}: POST timed out")
        return copy.deepcopy(self.notes[rid])

    async def read(self, resource_type: str, rid: str) -> dict[str, Any]:
        return copy.deepcopy(self.notes[rid])

    async def update(self, body: Mapping[str, Any], *, if_match: str | None = None) -> Any:
        self._check(body, "update")
        current = self.notes[str(body["id"])]
        if if_match is not None and if_match != current["meta"]["versionId"]:
            raise VersionConflictError(f"{self.name}: version moved")
        version = str(int(current["meta"]["versionId"]) + 1)
        self.notes[str(body["id"])] = {**copy.deepcopy(dict(body)), "meta": {"versionId": version}}
        return copy.deepcopy(self.notes[str(body["id"])])

    def texts(self) -> dict[str, str]:
        """Note id -> its text (the first attachment)."""
        return {rid: base64.b64decode(n["content"][0]["attachment"]["data"]).decode()
                for rid, n in self.notes.items()}  # fmt: skip


def _chart_note(text: str, version: str | None = None) -> dict[str, Any]:
    """A drafted note (no `masterIdentifier`), or a reviewed version (one)."""
    body: dict[str, Any] = {
        "resourceType": "DocumentReference", "status": "current",
        "identifier": [{"system": SID_NOTE, "value": "n1"}],
        "content": [{"attachment": {"contentType": "text/plain",
                                    "data": base64.b64encode(text.encode()).decode()}}],
    }  # fmt: skip
    if version is not None:
        body["masterIdentifier"] = {"system": SID_NOTE_VERSION, "value": version}
    return body


async def _lost_reply_then(store: Store, ehr: FakeEhr, then: dict[str, Any]) -> int:
    """The drafted note's create lands but its answer is lost; `then` is queued under the same
    key (a re-draft after an amended transcript, or a review) and the retry is due."""
    row_id = _enqueue(store, CHART, _chart_note("Set: breathing."))
    ehr.lose_reply = True
    summary = await writeback.flush(store, CONN, ehr.client())
    assert (summary.done, summary.retrying) == (0, 1)
    assert _enqueue(store, CHART, then) == row_id
    with store.session() as session:
        session.get(OutboxRow, row_id).next_attempt_at = datetime.now(UTC)  # type: ignore[union-attr]
    return row_id


async def test_a_redrafted_note_whose_first_write_landed_unconfirmed_is_updated(
    store: Store,
) -> None:
    """Generic: the chart's note is the amended one (If-Match update), not the first draft."""
    ehr = FakeEhr()
    row_id = await _lost_reply_then(store, ehr, _chart_note("Set: breathing and a journal."))
    summary = await writeback.flush(store, CONN, ehr.client())
    assert (summary.done, summary.retrying, summary.failed) == (1, 0, 0)
    assert ehr.texts() == {"n-1": "Set: breathing and a journal."}
    assert ehr.notes["n-1"]["meta"]["versionId"] == "2"
    row = _row(store, row_id)
    assert (row.status, row.server_id, row.server_version) == ("done", "n-1", "2")


async def test_a_redrafted_note_the_vendor_cannot_update_fails_not_recorded_as_done(
    store: Store,
) -> None:
    """Epic: a drafted note cannot replace the one that landed (as a confirmed write's update
    could not); failed, saying so, never recorded as done with the first draft."""
    ehr = FakeEhr("epic")
    row_id = await _lost_reply_then(store, ehr, _chart_note("Set: breathing and a journal."))
    summary = await writeback.flush(store, CONN, ehr.client())
    assert (summary.done, summary.retrying, summary.failed) == (0, 0, 1)
    assert ehr.texts() == {"n-1": "Set: breathing."}
    row = _row(store, row_id)
    assert row.status == "failed" and row.server_id is None
    assert "an earlier version of this note is in the chart" in str(row.last_error)


async def test_a_reviewed_note_replaces_a_draft_that_landed_unconfirmed_on_epic(
    store: Store,
) -> None:
    """Epic, the reviewed version queued under the drafted note's key after the draft's create
    landed unconfirmed: a new note replacing the draft (not an update, which Epic refuses);
    its own lost answer is found again by its `masterIdentifier`, never created twice."""
    ehr = FakeEhr("epic")
    reviewed = _chart_note("Set: breathing (reviewed).", version="v1")
    row_id = await _lost_reply_then(store, ehr, reviewed)
    ehr.lose_reply = True
    summary = await writeback.flush(store, CONN, ehr.client())
    assert (summary.done, summary.retrying, summary.failed) == (0, 1, 0)
    with store.session() as session:
        session.get(OutboxRow, row_id).next_attempt_at = datetime.now(UTC)  # type: ignore[union-attr]
    summary = await writeback.flush(store, CONN, ehr.client())
    assert (summary.done, summary.retrying, summary.failed) == (1, 0, 0)
    assert ehr.texts() == {"n-1": "Set: breathing.", "n-2": "Set: breathing (reviewed)."}
    assert ehr.notes["n-2"]["relatesTo"] == [
        {"code": "replaces", "target": {"reference": "DocumentReference/n-1"}}]  # fmt: skip
    assert (_row(store, row_id).status, _row(store, row_id).server_id) == ("done", "n-2")


async def test_a_note_found_with_only_some_attachments_inline_is_recorded(store: Store) -> None:
    """Epic: the drafted note landed unconfirmed; the EHR returns its HTML inline and its plain
    text as a Binary url. That is this note, not an earlier version: recorded, not failed."""
    ehr = FakeEhr("epic")
    note = _chart_note("Set: breathing.")
    html = {"contentType": "text/html", "data": base64.b64encode(b"<p>breathing</p>").decode()}
    note["content"].append({"attachment": html})
    row_id = _enqueue(store, CHART, note)
    ehr.lose_reply = True
    summary = await writeback.flush(store, CONN, ehr.client())
    assert (summary.done, summary.retrying) == (0, 1)
    ehr.notes["n-1"]["content"][0]["attachment"] = {"contentType": "text/plain",
                                                    "url": "Binary/b-1"}  # fmt: skip
    with store.session() as session:
        session.get(OutboxRow, row_id).next_attempt_at = datetime.now(UTC)  # type: ignore[union-attr]
    summary = await writeback.flush(store, CONN, ehr.client())
    assert (summary.done, summary.retrying, summary.failed) == (1, 0, 0)
    assert (_row(store, row_id).status, _row(store, row_id).server_id) == ("done", "n-1")
    assert list(ehr.notes) == ["n-1"]
