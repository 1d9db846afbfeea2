"""A clinician's review of the chart note on a vendor that refuses note update (Epic), while an
earlier write of the note is in flight or landed unconfirmed: the reviewed version is a new
note that waits for the one it replaces, and no decision is lost or recorded as another.

The decisions are `actions._note` (what every decision runs for the note), the write-back is
the real one over a chart in memory (`FakeEhr`), the store is real (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from fhir_adapter.ehr.errors import FatalFhirError
from fhir_adapter.pipeline import writeback
from fhir_adapter.settings import ChartTargets, EhrConnection, EncounterPoll, WriteTargets
from fhir_adapter.smart import actions
from fhir_adapter.store import Store, open_store, outbox, resources
from fhir_adapter.store.models import OutboxRow
from fhir_adapter.store.outbox import CHART, outbox_key
from mapping.fhir.audit import LaunchContext
from mapping.fhir.codes import SID_NOTE_VERSION
from mapping.fhir.context import EncounterContext, ModelInfo, NoteOptions, Ref
from mapping.fhir.note import build_note
from mapping.fhir.summary import build_summary
from mapping.fhir.validate import as_json
from tests.fhir_adapter.pipeline.test_writeback_outcomes import FakeEhr

CONN = "clinic"
NOW = datetime(2026, 3, 3, 9, tzinfo=UTC)
MODEL = ModelInfo("homework-detector", "test", "https://example.org/model-card")
CTX = EncounterContext(
    patient=Ref("Patient/p1"),
    encounter=Ref("Encounter/e1"),
    practitioners=(Ref("Practitioner/dr", "Dr. Haddad"),),
    period_start=datetime(2026, 3, 2, 15, tzinfo=UTC),
    period_end=datetime(2026, 3, 2, 16, tzinfo=UTC),
    transcript=Ref("DocumentReference/t1"),
)
EPIC = EhrConnection(
    name=CONN, base_url="https://ehr.example/fhir", vendor="epic",
    encounter_poll=EncounterPoll(scope="group", group="Group/g1"),
    write=WriteTargets(chart=ChartTargets(note=True)),
)  # fmt: skip


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    opened = open_store(database_url)
    yield opened
    opened.close()


def _drafted(store: Store) -> int:
    """The drafted note, in our store and queued for the chart, as the draft step leaves it."""
    note = as_json(build_note(CTX, build_summary(CTX, [], MODEL), now=NOW,
                              options=NoteOptions(doc_status="final")))  # fmt: skip
    with store.session() as session:
        resources.put(session, note, now=NOW)
        return outbox.enqueue(session, CONN, CHART, outbox_key(note), note).id


def _decide(store: Store, clinician: str) -> None:
    """A decision by `clinician` (each names the reviewer, so each is another version)."""
    actor = actions.Actor(connection=EPIC, patient="Patient/p1", encounter="Encounter/e1",
                          clinician=Ref("Practitioner/dr", clinician),
                          launch=LaunchContext("audit-key", "launch-1", Ref("Encounter/e1")),
                          model=MODEL)  # fmt: skip
    with store.session() as session:
        actions._note(actions._Writes(session, actor, NOW), CTX, [])


def _rows(store: Store) -> list[OutboxRow]:
    with store.session() as session:
        return list(session.scalars(select(OutboxRow).order_by(OutboxRow.id)))


def _due_now(store: Store) -> None:
    """The retries' backoff over (as `outbox retry --pending`)."""
    with store.session() as session:
        outbox.requeue(session, CONN, (), outbox.OutboxStatus.PENDING)


async def _flush(store: Store, ehr: FakeEhr) -> tuple[int, int, int]:
    summary = await writeback.flush(store, CONN, ehr.client())
    return summary.done, summary.retrying, summary.failed


def _reviewed_by(ehr: FakeEhr) -> dict[str, str]:
    """Note id -> who reviewed it ("" for the draft)."""
    return {rid: text.split("(reviewed by ")[1].split(" on ")[0] if "(reviewed by " in text
            else "" for rid, text in ehr.texts().items()}  # fmt: skip


def _replaces(note: dict[str, Any]) -> list[str]:
    return [r["target"]["reference"] for r in note.get("relatesTo") or ()]


async def test_a_review_while_the_drafted_note_is_in_flight_waits_for_it(store: Store) -> None:
    ehr = FakeEhr("epic")
    draft_id = _drafted(store)
    ehr.on_create = lambda: _decide(store, "Dr. A")  # once, while the draft's create is out
    assert await _flush(store, ehr) == (1, 0, 0)
    ehr.on_create = None
    [draft, version] = _rows(store)
    assert (draft.id, draft.status, draft.server_id) == (draft_id, "done", "n-1")
    assert "masterIdentifier" not in draft.payload  # the draft's row keeps the draft
    assert version.identifier_system == SID_NOTE_VERSION and version.status == "pending"

    assert await _flush(store, ehr) == (1, 0, 0)
    assert _reviewed_by(ehr) == {"n-1": "", "n-2": "Dr. A"}
    assert _replaces(ehr.notes["n-2"]) == ["DocumentReference/n-1"]
    assert [(r.status, r.server_id) for r in _rows(store)] == [("done", "n-1"), ("done", "n-2")]


async def test_a_review_after_the_drafted_note_landed_unconfirmed_waits_for_it(
    store: Store,
) -> None:
    ehr = FakeEhr("epic")
    _drafted(store)
    ehr.lose_reply = True
    assert await _flush(store, ehr) == (0, 1, 0)
    _decide(store, "Dr. A")
    _due_now(store)
    assert await _flush(store, ehr) == (2, 0, 0)  # the draft found, then its next version
    assert _reviewed_by(ehr) == {"n-1": "", "n-2": "Dr. A"}
    assert _replaces(ehr.notes["n-2"]) == ["DocumentReference/n-1"]
    assert [(r.status, r.server_id) for r in _rows(store)] == [("done", "n-1"), ("done", "n-2")]


async def test_a_version_sent_unconfirmed_is_not_reused_by_the_next_decision(
    store: Store,
) -> None:
    """Decision 1's note landed but its answer was lost; decisions 2 and 3 follow. Reusing its
    key, the retry would find decision 1's note and record it: decision 3 would be lost."""
    ehr = FakeEhr("epic")
    _drafted(store)
    assert await _flush(store, ehr) == (1, 0, 0)
    _decide(store, "Dr. A")
    ehr.lose_reply = True
    assert await _flush(store, ehr) == (0, 1, 0)
    _decide(store, "Dr. B")
    _decide(store, "Dr. C")  # takes decision 2's place: that one was never sent
    assert len(_rows(store)) == 3
    _due_now(store)
    assert await _flush(store, ehr) == (2, 0, 0)
    assert _reviewed_by(ehr) == {"n-1": "", "n-2": "Dr. A", "n-3": "Dr. C"}
    assert _replaces(ehr.notes["n-2"]) == ["DocumentReference/n-1"]
    assert _replaces(ehr.notes["n-3"]) == ["DocumentReference/n-2"]
    assert [(r.status, r.server_id) for r in _rows(store)] == [
        ("done", "n-1"), ("done", "n-2"), ("done", "n-3")]  # fmt: skip


async def test_decisions_before_any_write_go_out_as_one_reviewed_note(store: Store) -> None:
    ehr = FakeEhr("epic")
    _drafted(store)
    _decide(store, "Dr. A")
    _decide(store, "Dr. B")
    assert await _flush(store, ehr) == (1, 0, 0)
    assert _reviewed_by(ehr) == {"n-1": "Dr. B"}  # the draft, never sent, goes out reviewed


async def test_a_version_whose_draft_failed_fails_with_it_and_comes_back_with_it(
    store: Store,
) -> None:
    """The draft's create, in flight during the review, is refused: its next version fails
    with it, naming it, and an operator's retry of the draft brings both back."""
    ehr = FakeEhr("epic")
    draft_id = _drafted(store)
    ehr.on_create = lambda: _decide(store, "Dr. A")
    ehr.refuse = FatalFhirError("HTTP 422 unprocessable")
    assert await _flush(store, ehr) == (0, 0, 1)
    ehr.on_create = None
    assert await _flush(store, ehr) == (0, 0, 1)
    [draft, version] = _rows(store)
    assert (draft.status, version.status) == ("failed", "failed")
    assert version.last_error == f"waits on outbox row {draft_id}, which failed"

    with store.session() as session:
        assert outbox.requeue(session, CONN, [draft_id]) == 2
    assert await _flush(store, ehr) == (2, 0, 0)
    assert _reviewed_by(ehr) == {"n-1": "", "n-2": "Dr. A"}
    assert _replaces(ehr.notes["n-2"]) == ["DocumentReference/n-1"]


def _retry_all(store: Store) -> int:
    """`outbox retry` with no ids: every failed write back to pending."""
    with store.session() as session:
        return outbox.requeue(session, CONN)


def _superseded_by(row_id: int) -> str:
    return (f"superseded by outbox row {row_id}, a later version of this note: stale, never "
            "sent again (nothing to retry)")  # fmt: skip


async def test_a_version_chained_onto_a_refused_version_replaces_the_one_in_the_chart(
    store: Store,
) -> None:
    """Decision A's version is refused while decision B's is queued naming it; B's fails
    waiting on it. Decision C takes B's place and replaces the note in the chart (the draft),
    not A's, which never will be: it lands."""
    ehr = FakeEhr("epic")
    _drafted(store)
    assert await _flush(store, ehr) == (1, 0, 0)
    _decide(store, "Dr. A")
    ehr.on_create = lambda: _decide(store, "Dr. B")  # while A's version is out
    ehr.refuse = FatalFhirError("HTTP 422 unprocessable")
    await _flush(store, ehr)
    ehr.on_create = None
    await _flush(store, ehr)
    [_, first, second] = _rows(store)
    assert (first.status, second.status) == ("failed", "failed")
    assert second.last_error == f"waits on outbox row {first.id}, which failed"

    _decide(store, "Dr. C")
    assert await _flush(store, ehr) == (1, 0, 0)
    assert _reviewed_by(ehr) == {"n-1": "", "n-2": "Dr. C"}
    assert _replaces(ehr.notes["n-2"]) == ["DocumentReference/n-1"]
    assert [(r.status, r.server_id) for r in _rows(store)] == [
        ("done", "n-1"), ("failed", None), ("done", "n-2")]  # fmt: skip

    # A's version, stale, stays out of an operator's retry, blanket or by id: sent, it would
    # be a second current note (Dr. A's) beside C's.
    requeued = _retry_all(store)
    with store.session() as session:
        again = outbox.requeue(session, CONN, [first.id])
        assert outbox.superseded(session, CONN) == 1
    assert (requeued, again) == (0, 0)
    assert await _flush(store, ehr) == (0, 0, 0)
    assert _reviewed_by(ehr) == {"n-1": "", "n-2": "Dr. C"}
    assert _rows(store)[1].last_error == _superseded_by(second.id)


async def test_a_review_after_the_draft_and_its_version_failed_goes_out_as_the_note(
    store: Store,
) -> None:
    """The draft refused while decision A's version was queued naming it (failed waiting on
    it): nothing of the note is in the chart, so decision B goes out as the note itself, and
    A's version, older than B, stays failed rather than replacing it."""
    ehr = FakeEhr("epic")
    draft_id = _drafted(store)
    ehr.on_create = lambda: _decide(store, "Dr. A")
    ehr.refuse = FatalFhirError("HTTP 422 unprocessable")
    await _flush(store, ehr)
    ehr.on_create = None
    await _flush(store, ehr)
    assert [r.status for r in _rows(store)] == ["failed", "failed"]

    _decide(store, "Dr. B")
    assert await _flush(store, ehr) == (1, 0, 0)
    assert _reviewed_by(ehr) == {"n-1": "Dr. B"}
    [draft, version] = _rows(store)
    assert (draft.id, draft.status, draft.server_id) == (draft_id, "done", "n-1")
    assert (version.status, version.last_error) == ("failed", _superseded_by(draft.id))

    # A blanket retry leaves it: it would replace B's note.
    assert _retry_all(store) == 0
    assert await _flush(store, ehr) == (0, 0, 0)
    assert _reviewed_by(ehr) == {"n-1": "Dr. B"}


async def test_a_review_after_the_draft_failed_stops_a_version_not_yet_tried(
    store: Store,
) -> None:
    """The draft refused while A's version was queued naming it, not yet tried. B goes out as
    the note itself: A's version, older, must not follow it into the chart replacing it."""
    ehr = FakeEhr("epic")
    _drafted(store)
    ehr.on_create = lambda: _decide(store, "Dr. A")
    ehr.refuse = FatalFhirError("HTTP 422 unprocessable")
    assert await _flush(store, ehr) == (0, 0, 1)
    ehr.on_create = None
    assert [r.status for r in _rows(store)] == ["failed", "pending"]

    _decide(store, "Dr. B")
    await _flush(store, ehr)
    assert _reviewed_by(ehr) == {"n-1": "Dr. B"}
    [draft, version] = _rows(store)
    assert (draft.status, version.status) == ("done", "failed")
    assert version.last_error == _superseded_by(draft.id)
