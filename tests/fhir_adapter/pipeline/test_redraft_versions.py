"""A session drafted again after its transcript was amended, on an EHR that refuses note update
(Epic): the amended note reaches the chart as a new note whose `relatesTo` replaces the one
written first, with its own Provenance, whether the first write was confirmed, still in flight
or landed unconfirmed; nothing fails.

The draft step is the real one (`draft.draft`, detections as the detect step stores them), the
write-back the real one over a chart in memory (`FakeEhr`), the store real (SQLite and
PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from sqlalchemy import select

from fhir_adapter.ehr.client import FhirClient
from fhir_adapter.ehr.errors import FatalFhirError
from fhir_adapter.pipeline import draft as draft_module
from fhir_adapter.pipeline import note_versions, writeback
from fhir_adapter.pipeline.draft import draft
from fhir_adapter.pipeline.steps import Step, WorkItem
from fhir_adapter.runtime import Runtime
from fhir_adapter.settings import ChartTargets, EhrConnection, EncounterPoll, WriteTargets
from fhir_adapter.smart import actions
from fhir_adapter.store import Store, open_store, outbox, resources, work
from fhir_adapter.store.models import FeedbackRow, OutboxRow
from fhir_adapter.store.outbox import CHART, NOTE_PROVENANCE
from fhir_adapter.store.resources import Query
from mapping.fhir.audit import LaunchContext
from mapping.fhir.codes import SID_NOTE, SID_NOTE_VERSION
from mapping.fhir.context import ModelInfo, Ref
from tests.fhir_adapter.pipeline.support import deadlocked_once
from tests.fhir_adapter.pipeline.test_writeback_outcomes import FakeEhr

CONN = "clinic"
ENCOUNTER = "Encounter/e1"
NOW = datetime(2026, 3, 3, 9, tzinfo=UTC)
MODEL = ModelInfo("homework-detector", "test", "https://example.org/model-card")
EPIC = EhrConnection(
    name=CONN, base_url="https://ehr.example/fhir", vendor="epic",
    encounter_poll=EncounterPoll(scope="group", group="Group/g1"),
    write=WriteTargets(chart=ChartTargets(note=True, provenance=True)),
)  # fmt: skip
BREATHING = "Practise the slow breathing for ten minutes every morning."
JOURNAL = "Write down each worrying thought in a notebook this week."
WALK = "Take a short walk outside after lunch every day."
BREATHING_LONGER = "Practise the slow breathing for twenty minutes every morning."


class ChartEhr(FakeEhr):
    """`FakeEhr` with the note's Provenance: searched by target, created beside the notes."""

    def __init__(self) -> None:
        super().__init__("epic")
        self.provenance: list[dict[str, Any]] = []

    def client(self) -> dict[str, FhirClient]:
        return {CHART: cast(FhirClient, self)}

    async def search(
        self, resource_type: str, params: list[tuple[str, str]], max_pages: int = 1
    ) -> AsyncIterator[dict[str, Any]]:
        assert resource_type == "Provenance"
        wanted = dict(params)["target"]
        for found in self.provenance:
            if {"reference": wanted} in found["target"]:
                yield found

    async def create(self, body: Any) -> dict[str, Any]:
        if body["resourceType"] != "Provenance":
            return await super().create(body)
        self.provenance.append({**body, "id": f"p-{len(self.provenance) + 1}"})
        return self.provenance[-1]

    def targets(self) -> list[str]:
        """What each Provenance in the chart targets."""
        return [t["reference"] for p in self.provenance for t in p["target"]]


class _Runtime:
    """What the draft step reads of a Runtime."""

    def __init__(self, store: Store) -> None:
        self.store, self.model = store, MODEL

    def connection(self, name: str) -> EhrConnection | None:
        return EPIC if name == CONN else None


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    opened = open_store(database_url)
    yield opened
    opened.close()


def _detection(text: str, label: str) -> dict[str, Any]:
    """One homework detection, as the detect step stores it for the draft step."""
    at = {"unit": "line", "index": 3, "start_s": None, "end_s": None}
    probabilities = {k: 0.9 if k == label else 0.025
                     for k in ("practice", "take_action", "journal", "learn", "none")}  # fmt: skip
    therapist = {"role": "therapist", "speaker": "Dr. Haddad", "text": text, "first": at,
                 "last": at}  # fmt: skip
    return {"index": 1, "therapist": therapist, "client": None, "context": [], "label": label,
            "review": False, "confidence": 0.9, "review_confidence": 0.05,
            "probabilities": probabilities, "evidence": None}  # fmt: skip


def _drafted(store: Store, text: str, label: str = "practice") -> None:
    """The session (again, once amended) at the draft step with `text`'s homework, drafted."""
    encounter = {
        "resourceType": "Encounter", "id": "e1", "status": "finished",
        "subject": {"reference": "Patient/p1"},
        "period": {"start": "2026-03-02T15:00:00Z", "end": "2026-03-02T16:00:00Z"},
        "participant": [{"individual": {"reference": "Practitioner/dr", "display": "Dr. Haddad"}}],
    }  # fmt: skip
    with store.session() as session:
        row, created = work.upsert_encounter(session, CONN, ENCOUNTER, "Patient/p1",
                                             datetime(2026, 3, 2, 15, tzinfo=UTC),
                                             datetime(2026, 3, 2, 16, tzinfo=UTC),
                                             Step.DRAFT)  # fmt: skip
        if created:
            work.stage_source(session, CONN, encounter, ENCOUNTER, "Patient/p1")
        else:
            work.reopen(session, row, Step.DRAFT, "transcript amended")
        state = {"transcript": "DocumentReference/t1", "detections": [_detection(text, label)]}
        work.advance(session, row, Step.DRAFT, state)
    assert draft(cast(Runtime, _Runtime(store)), WorkItem(CONN, ENCOUNTER), now=NOW) is not None


def _rows(store: Store) -> list[OutboxRow]:
    with store.session() as session:
        return list(session.scalars(select(OutboxRow).where(OutboxRow.target == CHART)
                                    .order_by(OutboxRow.id)))  # fmt: skip


def _notes(store: Store) -> list[OutboxRow]:
    return [r for r in _rows(store) if r.resource_type == "DocumentReference"]


async def _flush(store: Store, ehr: ChartEhr) -> tuple[int, int, int]:
    summary = await writeback.flush(store, CONN, ehr.client())
    return summary.done, summary.retrying, summary.failed


def _replaces(note: dict[str, Any]) -> list[str]:
    return [r["target"]["reference"] for r in note.get("relatesTo") or ()]


def _says(ehr: ChartEhr) -> dict[str, str]:
    """Note id -> which homework its text names."""
    return {rid: ("journal" if "notebook" in text else "walk" if "walk" in text
                  else "breathing, longer" if "twenty minutes" in text
                  else "breathing" if "breathing" in text
                  else text) for rid, text in ehr.texts().items()}  # fmt: skip


def _ours(store: Store) -> list[dict[str, Any]]:
    """The session's note in our store (one, updated in place)."""
    with store.session() as session:
        found, _ = resources.search(session, Query("DocumentReference", encounter=ENCOUNTER))
    return found


def _assert_two_versions(store: Store, ehr: ChartEhr) -> None:
    assert _says(ehr) == {"n-1": "breathing", "n-2": "journal"}
    assert _replaces(ehr.notes["n-2"]) == ["DocumentReference/n-1"]
    assert ehr.notes["n-2"]["masterIdentifier"]["system"] == SID_NOTE_VERSION
    assert "masterIdentifier" not in ehr.notes["n-1"]
    assert [i["value"] for i in ehr.notes["n-2"]["identifier"] if i["system"] == SID_NOTE] == [
        i["value"] for i in ehr.notes["n-1"]["identifier"] if i["system"] == SID_NOTE]  # fmt: skip
    # Each version has its Provenance, targeting it.
    assert sorted(ehr.targets()) == ["DocumentReference/n-1", "DocumentReference/n-2"]
    rows = _rows(store)
    assert all(r.status == "done" for r in rows), [(r.id, r.status, r.last_error) for r in rows]
    [first, second] = _notes(store)
    assert (first.identifier_system, first.server_id) == (SID_NOTE, "n-1")
    assert (second.identifier_system, second.server_id) == (SID_NOTE_VERSION, "n-2")
    provenance = {r.identifier_value for r in rows if r.identifier_system == NOTE_PROVENANCE}
    assert provenance == {f"{SID_NOTE}|{first.identifier_value}",
                          f"{SID_NOTE_VERSION}|{second.identifier_value}"}  # fmt: skip
    # Our store keeps one note, updated in place: the amended one, no chart-only `relatesTo`.
    [ours] = _ours(store)
    assert ours["content"] == ehr.notes["n-2"]["content"] and "relatesTo" not in ours


async def test_an_amended_session_goes_to_the_chart_as_a_new_note_replacing_the_first(
    store: Store,
) -> None:
    ehr = ChartEhr()
    _drafted(store, BREATHING)
    assert await _flush(store, ehr) == (2, 0, 0)  # the note, then its Provenance
    assert _notes(store)[0].server_id == "n-1"

    _drafted(store, JOURNAL, "journal")  # the transcript amended
    assert await _flush(store, ehr) == (2, 0, 0)
    _assert_two_versions(store, ehr)

    # Drafted again unchanged (a rerun): nothing new for the chart.
    _drafted(store, JOURNAL, "journal")
    assert await _flush(store, ehr) == (0, 0, 0)
    assert len(ehr.notes) == 2 and len(ehr.provenance) == 2


async def test_an_amendment_drafted_while_the_first_write_is_in_flight_waits_for_it(
    store: Store,
) -> None:
    ehr = ChartEhr()
    _drafted(store, BREATHING)

    def amend_once() -> None:  # while the first note's create is out
        ehr.on_create = None
        _drafted(store, JOURNAL, "journal")

    ehr.on_create = amend_once
    assert await _flush(store, ehr) == (2, 0, 0)  # the first note and its Provenance
    [first, second] = _notes(store)
    assert (first.server_id, second.identifier_system, second.status) == (
        "n-1", SID_NOTE_VERSION, "pending")  # fmt: skip
    # The note it replaces is named by key: it had no EHR id yet when this was queued.
    [relation] = second.payload["relatesTo"]
    assert relation["target"] == {"identifier": {"system": SID_NOTE,
                                                 "value": first.identifier_value}}  # fmt: skip
    assert await _flush(store, ehr) == (2, 0, 0)
    _assert_two_versions(store, ehr)


async def test_an_amendment_after_the_first_write_landed_unconfirmed_waits_for_it(
    store: Store,
) -> None:
    ehr = ChartEhr()
    _drafted(store, BREATHING)
    ehr.lose_reply = True
    assert await _flush(store, ehr) == (0, 1, 0)  # the note landed, its answer lost
    _drafted(store, JOURNAL, "journal")
    with store.session() as session:  # the retry's backoff over (`outbox retry --pending`)
        outbox.requeue(session, CONN, (), outbox.OutboxStatus.PENDING)
    assert await _flush(store, ehr) == (4, 0, 0)  # the first found, not sent again; the next
    _assert_two_versions(store, ehr)


async def test_an_amendment_undone_is_a_third_note_not_a_refused_update(store: Store) -> None:
    """The transcript amended, then amended back: the third version has the first one's text,
    and the second one's would repeat; each is a note of its own, each replacing the last."""
    ehr = ChartEhr()
    _drafted(store, BREATHING)
    assert await _flush(store, ehr) == (2, 0, 0)
    for text, label in ((JOURNAL, "journal"), (BREATHING, "practice"), (JOURNAL, "journal")):
        _drafted(store, text, label)
        assert await _flush(store, ehr) == (2, 0, 0)
    assert _says(ehr) == {"n-1": "breathing", "n-2": "journal", "n-3": "breathing",
                          "n-4": "journal"}  # fmt: skip
    for n in (2, 3, 4):
        assert _replaces(ehr.notes[f"n-{n}"]) == [f"DocumentReference/n-{n - 1}"]
    keys = [r.identifier_value for r in _notes(store)]
    assert len(set(keys)) == 4
    assert all(r.status == "done" for r in _rows(store))


async def test_an_amendment_after_a_writer_died_mid_write_waits_for_its_note(
    store: Store,
) -> None:
    """A writer claimed the note, its create landed, and it died before recording anything;
    its lease expired. The note may be in the chart (it is): the amended one is a new version
    replacing it, never the drafted note's payload replaced (Epic refuses that update)."""
    ehr = ChartEhr()
    _drafted(store, BREATHING)
    [note] = _notes(store)
    with store.session() as session:
        row = outbox.claim(session, note.id)
        assert row is not None
        await ehr.create(row.payload)  # landed; the writer died before its answer
        expired = outbox.CLAIM_LEASE + timedelta(minutes=1)
        row.next_attempt_at -= expired
        row.updated_at -= expired
    _drafted(store, JOURNAL, "journal")
    assert await _flush(store, ehr) == (4, 0, 0)  # the first found, not sent again; the next
    _assert_two_versions(store, ehr)


def test_a_first_draft_reads_no_note_versions(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing of the note is queued yet: it goes out under its own key, without reading every
    version of the connection."""
    read: list[object] = []

    def versions(*args: object) -> list[OutboxRow]:
        read.append(args)
        return []

    monkeypatch.setattr(note_versions, "versions", versions)
    _drafted(store, BREATHING)
    assert read == [] and len(_notes(store)) == 1


def test_a_draft_and_a_decision_aborted_for_a_deadlock_run_again(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each locks rows a re-draft, a decision or an operator's retry may hold in another order
    (PostgreSQL aborts one of two such transactions): run again, each commits once."""
    calls = deadlocked_once(monkeypatch, draft_module, "_earlier_tasks")
    _drafted(store, BREATHING)
    assert len(calls) == 2 and len(_notes(store)) == 1

    calls = deadlocked_once(monkeypatch, actions, "_note_row")
    actor = actions.Actor(connection=EPIC, patient="Patient/p1", encounter=ENCOUNTER,
                          clinician=Ref("Practitioner/dr", "Dr. Haddad"),
                          launch=LaunchContext("audit-key", "launch-1", Ref(ENCOUNTER)),
                          model=MODEL)  # fmt: skip
    assert actions.decide(store, actor, actions.ApproveItems(), NOW).changed
    assert len(calls) > 1  # ran again after the abort
    with store.session() as session:
        assert len(session.scalars(select(FeedbackRow)).all()) == 1  # approved once


def _lock_order(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What takes the note's outbox row lock and what writes our store, in call order."""
    events: list[str] = []
    real_by_key, real_put = outbox._by_key, resources.put

    def by_key(*args: Any, **kwargs: Any) -> OutboxRow | None:
        if kwargs.get("lock") and args[3] == "DocumentReference":
            events.append("lock note")
        return real_by_key(*args, **kwargs)

    def put(*args: Any, **kwargs: Any) -> dict[str, Any]:
        events.append("put")
        return real_put(*args, **kwargs)

    monkeypatch.setattr(outbox, "_by_key", by_key)
    monkeypatch.setattr(resources, "put", put)
    return events


def test_a_draft_and_a_decision_lock_the_note_before_writing_our_store(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One lock order (the note's outbox row, then our store's resources), or on PostgreSQL
    a re-draft and a decision on the session could deadlock."""
    _drafted(store, BREATHING)
    events = _lock_order(monkeypatch)
    _drafted(store, JOURNAL, "journal")
    assert events[0] == "lock note" and "put" in events

    events.clear()
    actor = actions.Actor(connection=EPIC, patient="Patient/p1", encounter=ENCOUNTER,
                          clinician=Ref("Practitioner/dr", "Dr. Haddad"),
                          launch=LaunchContext("audit-key", "launch-1", Ref(ENCOUNTER)),
                          model=MODEL)  # fmt: skip
    assert actions.decide(store, actor, actions.ApproveItems(), NOW).changed
    assert events[0] == "lock note" and "put" in events


async def test_a_retry_leaves_a_refused_amendment_a_later_one_replaced_failed(
    store: Store,
) -> None:
    """Amendment 1's note refused while amendment 2's was queued naming it (failed waiting on
    it); amendment 3 takes 2's place and lands, replacing the first note. An operator's blanket
    retry must not send amendment 1, stale, as another note replacing the first, nor its
    Provenance."""
    ehr = ChartEhr()
    _drafted(store, BREATHING)
    assert await _flush(store, ehr) == (2, 0, 0)
    _drafted(store, JOURNAL, "journal")  # amendment 1

    def amend_while_out() -> None:  # amendment 2, while amendment 1's create is out; refused
        ehr.on_create = None
        _drafted(store, WALK, "take_action")
        ehr.refuse = FatalFhirError("HTTP 422 unprocessable")

    ehr.on_create = amend_while_out
    await _flush(store, ehr)
    await _flush(store, ehr)
    [_, first, second] = _notes(store)
    assert (first.status, second.status) == ("failed", "failed")
    _drafted(store, BREATHING_LONGER)  # amendment 3: takes amendment 2's row
    assert await _flush(store, ehr) == (2, 0, 0)  # the note and its Provenance
    assert _says(ehr) == {"n-1": "breathing", "n-2": "breathing, longer"}
    stale_provenance = [r for r in _rows(store) if r.identifier_system == NOTE_PROVENANCE
                        and r.identifier_value.endswith(f"|{first.identifier_value}")]  # fmt: skip
    assert [r.status for r in stale_provenance] == ["failed"]

    with store.session() as session:
        requeued = outbox.requeue(session, CONN)
    flushed = await _flush(store, ehr)
    assert _says(ehr) == {"n-1": "breathing", "n-2": "breathing, longer"}
    assert len(ehr.provenance) == 2
    assert (requeued, flushed) == (0, (0, 0, 0))
    rows = {r.id: r for r in _rows(store)}
    assert rows[first.id].status == rows[stale_provenance[0].id].status == "failed"
    with store.session() as session:
        assert outbox.superseded(session, CONN) == 2  # the version and its Provenance


async def test_an_amendment_undone_before_it_was_sent_sends_nothing(store: Store) -> None:
    """The transcript amended, then amended back before the amended note went out: the chart
    already has this text. Nothing new is written; the amendment's note, stale, is never sent."""
    ehr = ChartEhr()
    _drafted(store, BREATHING)
    assert await _flush(store, ehr) == (2, 0, 0)
    _drafted(store, JOURNAL, "journal")  # amended: queued, not yet sent
    _drafted(store, BREATHING)  # and back
    assert await _flush(store, ehr) == (0, 0, 0)
    assert _says(ehr) == {"n-1": "breathing"} and len(ehr.provenance) == 1
    [first, amended] = _notes(store)
    assert first.status == "done" and amended.status == "failed"
    # Its Provenance is stale with it, not a failure waiting on it for operators to chase.
    stale = (f"superseded by outbox row {first.id}, the version in the chart, whose text the "
             "note has again: stale, never sent again (nothing to retry)")  # fmt: skip
    assert [(r.resource_type, r.last_error) for r in _rows(store) if r.status == "failed"] == [
        ("DocumentReference", stale), ("Provenance", stale)]  # fmt: skip
    with store.session() as session:
        assert outbox.requeue(session, CONN) == 0
    assert await _flush(store, ehr) == (0, 0, 0)
    assert _says(ehr) == {"n-1": "breathing"}

    # Amended again: the stale version's row carries the new text, and its Provenance follows.
    _drafted(store, JOURNAL, "journal")
    assert [(r.resource_type, r.status, r.last_error) for r in _rows(store)[2:]] == [
        ("DocumentReference", "pending", None), ("Provenance", "pending", None)]  # fmt: skip
    assert await _flush(store, ehr) == (2, 0, 0)
    _assert_two_versions(store, ehr)
