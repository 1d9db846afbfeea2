"""End to end, review per task: session 1 sets two pieces of homework, session 2 follows up
only one of them.

Alex Moreno (Dr. Sara Haddad) is set a slow-breathing practice and a panic diary; a week later
the therapist asks only how the breathing went. The breathing Task becomes `reviewed`, quoting
that turn; the diary Task `not-reviewed`, quoting nothing. The same on every target: our store,
the care-plan store (the EHR itself, or a FHIR store of its own: a second sekmet server), and
in the chart, where session 2's note and inbox message say per task what became of it.

A backfill of the same two sessions held a year ago (dated 2025) settles them the same way and
dates everything by the sessions: Task.authoredOn and CarePlan.created at session 1's start,
the notes and messages at each session's end, the note's "set DATE" at session 1's day.

The shipped model runs in process; the transcripts were checked with `homework-fhir detect`:
session 1 gives exactly one `practice` (line 5) and one `journal` (line 7) detection, session 2
exactly one review turn (line 3) and no homework.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fhir_adapter.model_backend import make_backend
from fhir_adapter.pipeline.runner import RunSummary
from fhir_adapter.settings import EhrConnection, FhirStore, Settings
from fhir_adapter.store import Store, open_store, resources
from fhir_adapter.store.search_index import parse_datetime
from inference_server.client import Backend
from mapping import terminology
from mapping.fhir.approval import Reject, reject
from mapping.fhir.codes import CS_HOMEWORK_CATEGORY, P_REVIEW_QUOTE, SID_COMMUNICATION, SID_TASK
from mapping.fhir.context import Ref
from tests.fhir_adapter.pipeline.checks import note_text, notes_of, review_encounter
from tests.fhir_adapter.pipeline.seed import (
    Clinic,
    PatientPlan,
    SessionPlan,
    clinic_resources,
    ehr_resources,
    seed_clinic,
    seed_session,
)
from tests.fhir_adapter.pipeline.support import (
    connection,
    identifier_of,
    ingest_pass,
    review_status,
    run_pass,
    settings_for,
    stored,
)
from tests.fhir_adapter.sekmet_server import SekmetServer, start_sekmet

pytestmark = pytest.mark.integration

ALEX_SESSION_1 = """\
Dr. Haddad: Good to see you, Alex. What would you like to work on today?
Alex: The panic attacks. I had three this week, the worst one on the bus on Tuesday.
Dr. Haddad: That sounds frightening. Let's try the slow breathing together now, in for four and out for six.
Alex: It felt strange, but I calmed down once I got the rhythm.
Dr. Haddad: This week, practise the slow breathing for ten minutes every morning, even on calm days.
Alex: Ten minutes every morning. Okay, I can do that before work.
Dr. Haddad: And keep a panic diary: each time an attack comes, write down where you were, what you felt in your body and how long it lasted.
Alex: A panic diary, every attack. I will keep it on my phone.
Dr. Haddad: Tell me more about what happened on the bus.
Alex: It was crowded and I felt trapped.
"""  # noqa: E501 - transcript lines are as long as people speak

BREATHING_REVIEW = (
    "Last week you were going to practise the slow breathing every morning. "
    "How did the breathing go?"
)
ALEX_SESSION_2 = f"""\
Dr. Haddad: Welcome back, Alex. How has the week been?
Alex: A bit calmer, I think. Only one attack.
Dr. Haddad: {BREATHING_REVIEW}
Alex: I did the breathing on most mornings, and it made the mornings feel calmer.
Dr. Haddad: That's good to hear. What did you notice when you were breathing slowly?
Alex: My heart slowed down after a few minutes.
Dr. Haddad: Let's talk about your sister's wedding next month.
Alex: I'm worried about the crowd at the reception.
Dr. Haddad: What worries you most about it?
Alex: That I will have an attack in front of everyone.
"""

ALEX = PatientPlan(
    "alex", "Alex", "Moreno", "Sara", "Haddad",
    (SessionPlan(ALEX_SESSION_1, "text/plain; charset=utf-8", 7.5),
     SessionPlan(ALEX_SESSION_2, "text/plain; charset=utf-8", 0.5)),
)  # fmt: skip

# Session 2 amended: the breathing follow-up (lines 3-6) taken out; nothing else is a review.
ALEX_SESSION_2_NO_REVIEW = "".join(
    line for n, line in enumerate(ALEX_SESSION_2.splitlines(keepends=True), 1) if not 3 <= n <= 6
)

# A backfill a year on: the sessions were held on 2025-03-04 and 2025-03-11 (UTC).
BACKFILL_NOW = datetime(2025, 3, 11, 21, 0, tzinfo=UTC)


@dataclass(frozen=True)
class CarePlanTarget:
    """Where the connection writes CarePlans and Tasks, and how the test reads them back."""

    name: str
    server: SekmetServer

    def tasks(self, patient: str) -> dict[str, dict[str, Any]]:
        return {
            str(t["id"]): t for t in ehr_resources(self.server, "Task", {"patient": patient})
        }

    def careplans(self, patient: str) -> list[dict[str, Any]]:
        return ehr_resources(self.server, "CarePlan", {"subject": patient})


@pytest.fixture(params=["ehr", "fhir-store"])
def care_plan_target(
    request: pytest.FixtureRequest, sekmet_server: SekmetServer, tmp_path: Path
) -> Iterator[CarePlanTarget]:
    """The EHR itself, or a FHIR server of its own (started for the test, ~2 s)."""
    if request.param == "ehr":
        yield CarePlanTarget("ehr", sekmet_server)
        return
    with start_sekmet(tmp_path / "care-plan-store") as server:
        yield CarePlanTarget("fhir-store", server)


def _connection(ehr: SekmetServer, clinic: Clinic, target: CarePlanTarget) -> EhrConnection:
    if target.name == "ehr":
        return connection(ehr, clinic, client="es384", care_plan_store="ehr")
    auth = target.server.clients["rs384"].auth(token_endpoint=target.server.token_endpoint)
    store = FhirStore(base_url=target.server.base_url, auth=auth)
    return connection(ehr, clinic, client="es384", care_plan_store=store)


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[Backend]:
    """The shipped model in process, as `model.backend = "in-process"` runs it."""
    opened = make_backend(settings_for(tmp_path, []))
    try:
        yield opened
    finally:
        await opened.close()


def _category(task: dict[str, Any]) -> str:
    return str(task["code"]["coding"][0]["code"])


def _review_quote(task: dict[str, Any]) -> str | None:
    for output in task.get("output") or []:
        codes = {c.get("code") for c in (output.get("type") or {}).get("coding") or []}
        if P_REVIEW_QUOTE in codes:
            return str(output["valueString"])
    return None


def _by_category(tasks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found = {_category(t): t for t in tasks}
    assert len(found) == len(tasks), [t["description"] for t in tasks]
    return found


def _earlier_lines(text: str) -> list[str]:
    """The note's "Homework from earlier sessions" items."""
    assert "Homework from earlier sessions:" in text, text
    part = text.split("Homework from earlier sessions:")[1]
    return [line[2:] for line in part.splitlines() if line.startswith("- ")]


def _line_for(lines: list[str], category: str) -> str:
    """The line of the Task of `category` (by its display: "Practise a skill", ...)."""
    shown = terminology.display(CS_HOMEWORK_CATEGORY, category)
    [line] = [line for line in lines if line.startswith(f"{shown}, set ")]
    return line


def _communication_text(message: dict[str, Any]) -> str:
    [payload] = message["payload"]
    return str(payload["contentString"])


def _messages_of(found: list[dict[str, Any]], encounter: str) -> list[dict[str, Any]]:
    return [
        m for m in found
        if identifier_of(m, SID_COMMUNICATION) is not None
        and (m.get("encounter") or {}).get("reference") == encounter
    ]  # fmt: skip


def _check_per_task_review(
    ehr: SekmetServer, target: CarePlanTarget, store: Store, clinic: Clinic
) -> dict[str, dict[str, Any]]:
    """Session 2 reviewed the breathing, not the diary: on every target and in the chart.
    Returns our store's Tasks of session 1 by category."""
    alex = clinic.patients["alex"]
    first, second = alex.encounters
    ours = _by_category(stored(store, "Task", encounter=first))
    assert set(ours) == {"practice", "journal"}
    breathing, diary = ours["practice"], ours["journal"]
    assert "slow breathing" in breathing["description"]
    assert "panic diary" in diary["description"]
    assert stored(store, "Task", encounter=second) == []  # session 2 sets no homework

    # The Tasks themselves: our store and the care-plan store agree, field for field.
    theirs = target.tasks(alex.patient)
    assert set(theirs) == {breathing["id"], diary["id"]}
    for task in (breathing, diary):
        mine, written = task, theirs[task["id"]]
        assert identifier_of(written, SID_TASK) == identifier_of(mine, SID_TASK)
        assert written["businessStatus"] == mine["businessStatus"]
        assert written.get("output") == mine.get("output")
        assert written["authoredOn"] == mine["authoredOn"]
        assert review_encounter(written) == second  # both settled by session 2
    assert review_status(breathing) == "reviewed"
    assert _review_quote(breathing) == BREATHING_REVIEW
    assert review_status(diary) == "not-reviewed"
    assert _review_quote(diary) is None

    # Session 2's note and message, in the chart and in our store: one line per Task.
    in_chart = ehr_resources(ehr, "DocumentReference", {"subject": alex.patient})
    [note] = notes_of(in_chart, second)
    [our_note] = notes_of(stored(store, "DocumentReference", encounter=second), second)
    text = note_text(note)
    assert text == note_text(our_note)
    set_on = breathing["authoredOn"][:10]
    lines = _earlier_lines(text)
    assert len(lines) == 2, lines
    breathing_line = _line_for(lines, "practice")
    assert f", set {set_on}: " in breathing_line
    assert "Reviewed this session (line 3): " in breathing_line
    assert BREATHING_REVIEW in breathing_line
    diary_line = _line_for(lines, "journal")
    assert f", set {set_on}: " in diary_line
    assert diary_line.endswith("Not reviewed this session")
    assert "breathing" not in diary_line  # no one's review is quoted for the diary

    [message] = _messages_of(
        ehr_resources(ehr, "Communication", {"subject": alex.patient}), second
    )
    [our_message] = _messages_of(stored(store, "Communication", encounter=second), second)
    assert _communication_text(message) == _communication_text(our_message) == text
    return ours


async def test_only_the_homework_followed_up_is_reviewed_in_every_target(
    sekmet_server: SekmetServer,
    care_plan_target: CarePlanTarget,
    backend: Backend,
    database_url: str,
    tmp_path: Path,
) -> None:
    clinic = seed_clinic(sekmet_server, sessions=1, in_progress=False, plans=[ALEX])
    conn = _connection(sekmet_server, clinic, care_plan_target)
    settings = settings_for(tmp_path, [conn], database_url=database_url)
    store = open_store(settings.database_url)
    try:
        first = await run_pass(settings, store, backend)
        assert (first.encounters_processed, first.writes_failed) == (1, 0), first.errors
        alex = clinic.patients["alex"]
        waiting = stored(store, "Task", patient=alex.patient)
        assert sorted(_category(t) for t in waiting) == ["journal", "practice"]
        assert {review_status(t) for t in waiting} == {"awaiting-review"}
        written = care_plan_target.tasks(alex.patient)
        assert {review_status(t) for t in written.values()} == {"awaiting-review"}
        assert len(written) == 2 and len(care_plan_target.careplans(alex.patient)) == 1

        seed_session(sekmet_server, clinic, 2)
        second = await run_pass(settings, store, backend)
        assert (second.encounters_new, second.encounters_processed) == (1, 1), second.errors
        assert (second.writes_failed, second.writes_retrying) == (0, 0)
        assert (second.tasks_reviewed, second.tasks_not_reviewed) == (1, 1)
        _check_per_task_review(sekmet_server, care_plan_target, store, clinic)
        if care_plan_target.name == "fhir-store":  # the EHR gets the chart only
            assert ehr_resources(sekmet_server, "Task", {"patient": alex.patient}) == []
            assert ehr_resources(sekmet_server, "CarePlan", {"subject": alex.patient}) == []
    finally:
        store.close()


async def test_a_backfill_of_old_sessions_reviews_per_task_and_carries_their_dates(
    sekmet_server: SekmetServer, backend: Backend, tmp_path: Path
) -> None:
    clinic = seed_clinic(
        sekmet_server, sessions=2, in_progress=False, plans=[ALEX], now=BACKFILL_NOW
    )
    # An export promises no order: here session 2 comes first, and is still settled after 1.
    export = clinic_resources(sekmet_server, clinic)[::-1]
    periods = {
        f"Encounter/{r['id']}": r["period"] for r in export if r["resourceType"] == "Encounter"
    }
    alex = clinic.patients["alex"]
    first, second = alex.encounters
    assert periods[first]["start"].startswith("2025-03-04")
    assert periods[second]["start"].startswith("2025-03-11")
    conn = connection(sekmet_server, clinic, client="rs384", care_plan_store="ehr")
    settings = settings_for(tmp_path, [conn])
    started = datetime.now(UTC).replace(microsecond=0)
    store = open_store(settings.database_url)
    try:
        summary = await ingest_pass(settings, store, backend, export, conn.name)
        assert (summary.encounters_new, summary.encounters_processed) == (2, 2), summary.errors
        assert (summary.writes_failed, summary.writes_retrying) == (0, 0)
        assert (summary.tasks_reviewed, summary.tasks_not_reviewed) == (1, 1)
        ours = _check_per_task_review(sekmet_server, CarePlanTarget("ehr", sekmet_server),
                                      store, clinic)  # fmt: skip

        def at(encounter: str, end: str) -> datetime:
            return parse_datetime(periods[encounter][end])

        # Homework is set when session 1 started, in our store and in the EHR.
        in_ehr = CarePlanTarget("ehr", sekmet_server)
        theirs = in_ehr.tasks(alex.patient)
        for task in ours.values():
            assert parse_datetime(task["authoredOn"]) == at(first, "start")
            assert parse_datetime(theirs[task["id"]]["authoredOn"]) == at(first, "start")
        [plan] = in_ehr.careplans(alex.patient)
        assert parse_datetime(plan["created"]) == at(first, "start")
        # Notes and messages are dated at the end of their session, on both sides.
        for encounter in (first, second):
            charted = ehr_resources(sekmet_server, "DocumentReference", {"subject": alex.patient})
            sent = ehr_resources(sekmet_server, "Communication", {"subject": alex.patient})
            [note] = notes_of(charted, encounter)
            [our_note] = notes_of(stored(store, "DocumentReference", encounter=encounter),
                                  encounter)  # fmt: skip
            [message] = _messages_of(sent, encounter)
            [our_message] = _messages_of(stored(store, "Communication", encounter=encounter),
                                         encounter)  # fmt: skip
            for dated in (note["date"], our_note["date"], message["sent"], our_message["sent"]):
                assert parse_datetime(dated) == at(encounter, "end"), encounter
        # Session 2's note says the homework was set on 2025-03-04, not on the day it ran.
        [note] = notes_of(stored(store, "DocumentReference", encounter=second), second)
        lines = _earlier_lines(note_text(note))
        assert all(", set 2025-03-04: " in line for line in lines), lines
        # Only the Provenance records when the backfill ran.
        assert all(parse_datetime(p["recorded"]) >= started for p in stored(store, "Provenance"))
    finally:
        store.close()


async def test_a_session_charted_late_is_settled_in_session_order(
    sekmet_server: SekmetServer, backend: Backend, database_url: str, tmp_path: Path
) -> None:
    """Session 2 is charted and processed first; session 1 arrives later. Session 2 is then
    processed again after it, so session 1's homework is settled by session 2 exactly as in
    order, in our store, the EHR and session 2's note; charting it again changes nothing."""
    clinic = seed_clinic(
        sekmet_server, sessions=2, in_progress=False, plans=[ALEX], now=BACKFILL_NOW
    )
    export = clinic_resources(sekmet_server, clinic)
    first, second = clinic.patients["alex"].encounters
    late = [r for r in export if first.split("/")[-1] in json.dumps(r)]
    early = [r for r in export if r not in late]
    assert late and any(r["resourceType"] == "Encounter" for r in late)
    conn = connection(sekmet_server, clinic, client="rs384", care_plan_store="ehr")
    settings = settings_for(tmp_path, [conn], database_url=database_url)
    store = open_store(settings.database_url)
    try:
        alone = await ingest_pass(settings, store, backend, early, conn.name)
        assert (alone.encounters_new, alone.encounters_processed) == (1, 1), alone.errors
        assert stored(store, "Task", encounter=second) == []
        charted_late = await ingest_pass(settings, store, backend, late, conn.name)
        # Session 1, then session 2 again.
        assert charted_late.encounters_processed == 2, charted_late.errors
        assert (charted_late.writes_failed, charted_late.writes_retrying) == (0, 0)
        assert (charted_late.tasks_reviewed, charted_late.tasks_not_reviewed) == (1, 1)
        _check_per_task_review(sekmet_server, CarePlanTarget("ehr", sekmet_server), store,
                               clinic)  # fmt: skip
        versions = {t["id"]: t["meta"]["versionId"] for t in stored(store, "Task")}
        again = await ingest_pass(settings, store, backend, late, conn.name)
        assert again.encounters_processed == 0
        assert {t["id"]: t["meta"]["versionId"] for t in stored(store, "Task")} == versions
    finally:
        store.close()


def _amended(export: list[dict[str, Any]], encounter: str, text: str) -> dict[str, Any]:
    """`encounter`'s transcript as the EHR sends it once amended: the same DocumentReference,
    docStatus amended, `text` as its content."""
    [doc] = [r for r in export if r["resourceType"] == "DocumentReference"
             and r["context"]["encounter"][0]["reference"] == encounter]  # fmt: skip
    data = base64.b64encode(text.encode()).decode()
    content = [{"attachment": {"contentType": "text/plain; charset=utf-8", "data": data}}]
    return {**doc, "docStatus": "amended", "content": content}


@dataclass
class _Settled:
    """Alex's two sessions processed: session 2 settled session 1's homework (one reviewed)."""

    clinic: Clinic
    export: list[dict[str, Any]]
    settings: Settings
    store: Store
    connection: str

    async def amend(self, backend: Backend, encounter: str, text: str) -> RunSummary:
        """`encounter`'s transcript amended to `text` in the EHR, and the pass that takes it."""
        return await ingest_pass(self.settings, self.store, backend,
                                 [_amended(self.export, encounter, text)],
                                 self.connection)  # fmt: skip


@asynccontextmanager
async def _settled(
    sekmet_server: SekmetServer, backend: Backend, tmp_path: Path
) -> AsyncIterator[_Settled]:
    clinic = seed_clinic(
        sekmet_server, sessions=2, in_progress=False, plans=[ALEX], now=BACKFILL_NOW
    )
    export = clinic_resources(sekmet_server, clinic)
    conn = connection(sekmet_server, clinic, client="rs384", care_plan_store="ehr")
    settings = settings_for(tmp_path, [conn])
    store = open_store(settings.database_url)
    try:
        both = await ingest_pass(settings, store, backend, export, conn.name)
        assert (both.tasks_reviewed, both.tasks_not_reviewed) == (1, 1), both.errors
        yield _Settled(clinic, export, settings, store, conn.name)
    finally:
        store.close()


async def test_an_amended_session_is_settled_again_by_its_next_session(
    sekmet_server: SekmetServer, backend: Backend, tmp_path: Path
) -> None:
    """Session 1's transcript is amended (a comma) after session 2 settled its homework: the
    Tasks session 1 drafts again are settled again by session 2, not left awaiting review."""
    async with _settled(sekmet_server, backend, tmp_path) as it:
        typo = ALEX_SESSION_1.replace("crowded and I", "crowded, and I")
        assert typo != ALEX_SESSION_1
        amended = await it.amend(backend, it.clinic.patients["alex"].encounters[0], typo)
        # Session 1, then session 2 again.
        assert amended.encounters_processed == 2, amended.errors
        assert (amended.writes_failed, amended.writes_retrying) == (0, 0)
        assert (amended.tasks_reviewed, amended.tasks_not_reviewed) == (1, 1)
        _check_per_task_review(sekmet_server, CarePlanTarget("ehr", sekmet_server), it.store,
                               it.clinic)  # fmt: skip


async def test_an_amended_reviewing_session_settles_the_homework_again(
    sekmet_server: SekmetServer, backend: Backend, tmp_path: Path
) -> None:
    """Session 2's transcript is amended so it no longer follows the breathing up: session 1's
    Tasks are settled again from the new text, both not reviewed, here and in the EHR."""
    async with _settled(sekmet_server, backend, tmp_path) as it:
        alex = it.clinic.patients["alex"]
        first, second = alex.encounters
        amended = await it.amend(backend, second, ALEX_SESSION_2_NO_REVIEW)
        assert amended.encounters_processed == 1, amended.errors
        assert (amended.writes_failed, amended.writes_retrying) == (0, 0)
        assert (amended.tasks_reviewed, amended.tasks_not_reviewed) == (0, 2)
        ours = _by_category(stored(it.store, "Task", encounter=first))
        assert set(ours) == {"practice", "journal"}
        theirs = CarePlanTarget("ehr", sekmet_server).tasks(alex.patient)
        for task in ours.values():
            assert review_status(task) == "not-reviewed"
            assert review_encounter(task) == second
            assert _review_quote(task) is None
            assert theirs[task["id"]]["businessStatus"] == task["businessStatus"]
            assert theirs[task["id"]].get("output") == task.get("output")


async def test_a_rejected_task_is_left_alone_when_its_settling_session_is_amended(
    sekmet_server: SekmetServer, backend: Backend, tmp_path: Path
) -> None:
    """The clinician rejects session 1's diary after session 2 settled it; session 2 is then
    amended. The breathing practice is settled again; the rejected diary is not put back to
    awaiting review (it was never set, so nothing will settle it again)."""
    async with _settled(sekmet_server, backend, tmp_path) as it:
        alex = it.clinic.patients["alex"]
        first, second = alex.encounters
        diary = _by_category(stored(it.store, "Task", encounter=first))["journal"]
        decision = Reject(Ref(alex.practitioner), datetime.now(UTC), "not what we agreed")
        with it.store.session() as session:
            rejected = resources.put(session, reject(diary, decision))
        amended = await it.amend(backend, second, ALEX_SESSION_2_NO_REVIEW)
        assert amended.encounters_processed == 1, amended.errors
        assert (amended.tasks_reviewed, amended.tasks_not_reviewed) == (0, 1)
        ours = _by_category(stored(it.store, "Task", encounter=first))
        assert review_status(ours["practice"]) == "not-reviewed"
        assert ours["journal"] == rejected
