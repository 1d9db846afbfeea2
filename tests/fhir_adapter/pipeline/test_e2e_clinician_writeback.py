"""End to end, the clinician's decisions written back to a real EHR (sekmet-fhir).

Alex Moreno's session (test_e2e_review_per_task.py: a breathing practice and a panic diary,
the shipped model in process) is processed against sekmet; then a clinician edits and approves
the breathing practice, rejects the diary with a reason, adds an item the model missed and
approves the plan; the normal write-back sends it. Our store on SQLite and PostgreSQL.

The decisions are made with `actions.decide()` and an `Actor` built exactly as the review
screen's routes build it after the callback, to cover both vendors and both stores quickly.
The same decisions made in a real browser through a SMART launch (sekmet as the EHR's FHIR
API, the development authorization server as its authorization server, since sekmet offers
SMART Backend Services only) are test_e2e_clinician_browser.py.

- generic (care_plan_store = "ehr"): the CarePlan, the Tasks (status, label), the rejected and
  the added Task and the clinician's Provenance are in sekmet, one of each; the chart note is
  updated in place (a new version of the same note).
- epic (care_plan_store = "builtin": Epic refuses Task and CarePlan create): the chart gets a
  new note whose `relatesTo` replaces the one written first.

A rerun of every decision and of the write-back changes nothing in sekmet (versions).

And the reprocessing guard: an amended transcript for the session after the clinician decided
leaves the decisions as they are, in our store and in sekmet.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from fhir_adapter.model_backend import make_backend
from fhir_adapter.pipeline import runner
from fhir_adapter.pipeline.runner import RunSummary
from fhir_adapter.runtime import Runtime
from fhir_adapter.settings import EhrConnection, Settings
from fhir_adapter.smart import actions
from fhir_adapter.store import Store, open_store
from inference_server.client import Backend
from mapping.fhir.audit import LaunchContext
from mapping.fhir.codes import AIAST, CLINAST_AIRPT, SID_CAREPLAN, SID_NOTE, SID_TASK
from mapping.fhir.context import Ref
from mapping.fhir.validate import problems
from tests.fhir_adapter.pipeline.checks import notes_of
from tests.fhir_adapter.pipeline.seed import Clinic, clinic_resources, ehr_resources, seed_clinic
from tests.fhir_adapter.pipeline.support import (
    CONNECTION,
    connection,
    identifier_of,
    ingest_pass,
    run_pass,
    settings_for,
    stored,
)
from tests.fhir_adapter.pipeline.test_e2e_review_per_task import ALEX
from tests.fhir_adapter.sekmet_server import SekmetServer

pytestmark = pytest.mark.integration

EDITED = "Practise the slow breathing for ten minutes every morning, before work"
DUE = date(2099, 1, 15)
REASON = "The diary was the client's own idea; not set as homework"
ADDED = "Write down one calm moment each evening"
AMENDED = (
    "Dr. Haddad: Good to see you, Alex. How has the week been?\n"
    "Alex: Quiet. Work was fine and the weekend was restful.\n"
    "Dr. Haddad: Good to hear. Tell me more about the weekend.\n"
    "Alex: We went for a long walk by the river.\n"
)


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[Backend]:
    opened = make_backend(settings_for(tmp_path, []))
    try:
        yield opened
    finally:
        await opened.close()


@dataclass
class Decided:
    clinic: Clinic
    conn: EhrConnection
    settings: Settings
    encounter: str
    practice: str  # Task ids
    journal: str
    added: str
    written_note: dict[str, Any]  # the chart note as the first run wrote it


def _actor(conn: EhrConnection, clinic: Clinic, runtime: Runtime) -> actions.Actor:
    """What the review routes build from the SMART session (routes.act)."""
    alex = clinic.patients["alex"]
    encounter = alex.encounters[0]
    return actions.Actor(
        connection=conn,
        patient=alex.patient,
        encounter=encounter,
        clinician=Ref(alex.practitioner),
        launch=LaunchContext("audit-key-of-the-session", "launch-1", Ref(encounter)),
        model=runtime.model,
    )


def _decisions(practice: str, journal: str) -> list[actions.Action]:
    return [
        actions.EditItem(practice, description=EDITED, due=DUE),
        actions.RejectItem(journal, REASON),
        actions.AddItem("journal", ADDED),
        actions.ApproveItems(None),
    ]


async def _decide_and_write_back(
    settings: Settings, store: Store, backend: Backend, clinic: Clinic, conn: EhrConnection,
    practice: str, journal: str,
) -> list[actions.Decided]:  # fmt: skip
    async with Runtime(settings, store, backend) as runtime:
        actor = _actor(conn, clinic, runtime)
        done = [actions.decide(store, actor, d, datetime.now(UTC))
                for d in _decisions(practice, journal)]  # fmt: skip
        summary = RunSummary()
        await runner.write_back(runtime, CONNECTION, summary)
        assert (summary.writes_failed, summary.writes_retrying) == (0, 0)
    return done


async def _process_and_decide(
    sekmet: SekmetServer, backend: Backend, tmp_path: Path, database_url: str, vendor: str,
    store_of: list[Store],
) -> Decided:  # fmt: skip
    clinic = seed_clinic(sekmet, sessions=1, in_progress=False, plans=[ALEX])
    care_plan_store = "ehr" if vendor == "generic" else "builtin"
    conn = connection(sekmet, clinic, client="es384", vendor=vendor,
                      care_plan_store=care_plan_store, communication=False)  # fmt: skip
    settings = settings_for(tmp_path, [conn], database_url=database_url)
    store = open_store(settings.database_url)
    store_of.append(store)
    first = await run_pass(settings, store, backend)
    assert (first.encounters_processed, first.writes_failed) == (1, 0), first.errors
    alex = clinic.patients["alex"]
    encounter = alex.encounters[0]
    drafted = {str(t["code"]["coding"][0]["code"]): t for t in stored(store, "Task")}
    assert set(drafted) == {"practice", "journal"}
    [written_note] = notes_of(
        ehr_resources(sekmet, "DocumentReference", {"subject": alex.patient}), encounter
    )
    practice, journal = drafted["practice"]["id"], drafted["journal"]["id"]
    done = await _decide_and_write_back(settings, store, backend, clinic, conn, practice,
                                        journal)  # fmt: skip
    assert [d.kind for d in done] == ["edit", "reject", "add", "approve"]
    assert all(d.changed and d.queued_for == CONNECTION for d in done), done
    [added] = [t for t in stored(store, "Task", encounter=encounter) if t["description"] == ADDED]
    return Decided(clinic, conn, settings, encounter, practice, journal, added["id"],
                   written_note)  # fmt: skip


def _security(resource: dict[str, Any]) -> set[str]:
    return {str(s.get("code")) for s in (resource.get("meta") or {}).get("security") or ()}


def _versions(sekmet: SekmetServer, patient: str, provenance: list[str]) -> dict[str, str]:
    """Type/id -> versionId of everything of the patient's care plan, chart and Provenance."""
    found = [
        *ehr_resources(sekmet, "Task", {"patient": patient}),
        *ehr_resources(sekmet, "CarePlan", {"subject": patient}),
        *ehr_resources(sekmet, "DocumentReference", {"subject": patient}),
        *(p for pid in provenance for p in ehr_resources(sekmet, "Provenance", {"_id": pid})),
    ]
    return {f"{r['resourceType']}/{r['id']}": str(r["meta"]["versionId"]) for r in found}


def _clinician_provenance(store: Store, practitioner: str) -> list[dict[str, Any]]:
    return [p for p in stored(store, "Provenance")
            if p["agent"][0]["who"]["reference"] == practitioner]  # fmt: skip


@pytest.mark.parametrize("vendor", ["generic", "epic"])
async def test_decisions_reach_the_ehr_once(
    sekmet_server: SekmetServer, backend: Backend, database_url: str, tmp_path: Path,
    vendor: str,
) -> None:  # fmt: skip
    opened: list[Store] = []
    try:
        got = await _process_and_decide(sekmet_server, backend, tmp_path, database_url,
                                        vendor, opened)  # fmt: skip
        store, alex = opened[0], got.clinic.patients["alex"]
        ours = {t["id"]: t for t in stored(store, "Task", encounter=got.encounter)}
        clinician = _clinician_provenance(store, alex.practitioner)
        assert clinician
        notes = notes_of(
            ehr_resources(sekmet_server, "DocumentReference", {"subject": alex.patient}),
            got.encounter,
        )
        if vendor == "generic":
            theirs = {t["id"]: t for t in ehr_resources(sekmet_server, "Task",
                                                        {"patient": alex.patient})}  # fmt: skip
            assert set(theirs) == {got.practice, got.journal, got.added}
            for task_id, task in theirs.items():
                assert task["status"] == ours[task_id]["status"]
                assert _security(task) == _security(ours[task_id])
            practice = theirs[got.practice]
            assert (practice["status"], practice["intent"]) == ("requested", "plan")
            assert practice["description"] == EDITED
            assert practice["restriction"]["period"]["end"] == DUE.isoformat()
            assert _security(practice) == {CLINAST_AIRPT}
            journal = theirs[got.journal]
            assert journal["status"] == "rejected"
            assert journal["statusReason"]["text"] == REASON
            added = theirs[got.added]
            assert added["status"] == "requested" and added["description"] == ADDED
            assert not _security(added) & {AIAST, CLINAST_AIRPT}
            [plan] = ehr_resources(sekmet_server, "CarePlan", {"subject": alex.patient})
            assert (plan["status"], plan["intent"]) == ("active", "plan")
            assert {a["reference"]["reference"] for a in plan["activity"]} >= {
                f"Task/{got.practice}",
                f"Task/{got.added}",
            }
            # One of each, by identifier.
            for system, found in ((SID_TASK, theirs.values()), (SID_CAREPLAN, [plan])):
                values = [identifier_of(r, system) for r in found]
                assert len(values) == len(set(values)), (system, values)
            for prov in clinician:
                [there] = ehr_resources(sekmet_server, "Provenance", {"_id": prov["id"]})
                assert there["agent"][0]["who"]["reference"] == alex.practitioner
                # Ours name the versions written in our store; the care-plan store's copy,
                # whose versions are its own, the resources only.
                assert {t["reference"] for t in there["target"]} == {
                    t["reference"].split("/_history/")[0] for t in prov["target"]
                }
            # The chart note: the same note, updated in place, saying it was reviewed.
            [note] = notes
            assert note["id"] == got.written_note["id"]
            assert int(note["meta"]["versionId"]) > int(got.written_note["meta"]["versionId"])
            assert "reviewed by clinician" in note["description"]
            assert "relatesTo" not in note
            for body in [*theirs.values(), plan, note]:
                assert problems(body) == [], (body["resourceType"], problems(body))
        else:
            # Epic: the Tasks stay in our store; the chart gets a new note replacing the first.
            assert ehr_resources(sekmet_server, "Task", {"patient": alex.patient}) == []
            assert len(notes) == 2, [n["id"] for n in notes]
            [new] = [n for n in notes if n["id"] != got.written_note["id"]]
            assert new["relatesTo"] == [
                {"code": "replaces",
                 "target": {"reference": f"DocumentReference/{got.written_note['id']}"}}
            ]  # fmt: skip
            assert "reviewed by clinician" in new["description"]
            assert identifier_of(new, SID_NOTE) == identifier_of(got.written_note, SID_NOTE)
            assert new["masterIdentifier"]["value"]  # the reviewed version's own key
            assert new.get("masterIdentifier") != got.written_note.get("masterIdentifier")
            assert problems(new) == [], problems(new)

        # A rerun of every decision and of the write-back changes nothing in the EHR.
        ids = [p["id"] for p in clinician] if vendor == "generic" else []
        before = _versions(sekmet_server, alex.patient, ids)
        again = await _decide_and_write_back(got.settings, store, backend, got.clinic,
                                             got.conn, got.practice, got.journal)  # fmt: skip
        assert [d.written for d in again] == [()] * 4
        assert _versions(sekmet_server, alex.patient, ids) == before
    finally:
        for store in opened:
            store.close()


async def test_an_amended_transcript_leaves_the_clinicians_decisions(
    sekmet_server: SekmetServer, backend: Backend, tmp_path: Path
) -> None:
    opened: list[Store] = []
    try:
        got = await _process_and_decide(sekmet_server, backend, tmp_path,
                                        f"sqlite:///{tmp_path / 'store.db'}", "generic",
                                        opened)  # fmt: skip
        store, alex = opened[0], got.clinic.patients["alex"]
        decided = {t["id"]: (t["status"], t["description"])
                   for t in stored(store, "Task", encounter=got.encounter)}  # fmt: skip
        [plan] = stored(store, "CarePlan", encounter=got.encounter)
        [note] = notes_of(stored(store, "DocumentReference", encounter=got.encounter),
                          got.encounter)  # fmt: skip

        # The transcript is amended: the same DocumentReference, other content (no homework).
        [doc] = [r for r in clinic_resources(sekmet_server, got.clinic)
                 if r["resourceType"] == "DocumentReference"
                 and r["context"]["encounter"][0]["reference"] == got.encounter]  # fmt: skip
        data = base64.b64encode(AMENDED.encode()).decode()
        content = [{"attachment": {"contentType": "text/plain", "data": data}}]
        amended = {**doc, "docStatus": "amended", "content": content}
        summary = await ingest_pass(got.settings, store, backend, [amended], CONNECTION)
        assert summary.encounters_processed == 1, summary.errors
        assert summary.writes_failed == 0

        # Nothing the clinician decided went back to draft or was cancelled.
        after = {t["id"]: (t["status"], t["description"])
                 for t in stored(store, "Task", encounter=got.encounter)}  # fmt: skip
        assert after == decided
        [plan_after] = stored(store, "CarePlan", encounter=got.encounter)
        assert (plan_after["status"], plan_after["intent"]) == ("active", "plan")
        assert plan_after["activity"] == plan["activity"]
        in_ehr = ehr_resources(sekmet_server, "Task", {"patient": alex.patient})
        theirs = {t["id"]: (t["status"], t["description"]) for t in in_ehr}
        assert theirs == decided
        [their_plan] = ehr_resources(sekmet_server, "CarePlan", {"subject": alex.patient})
        assert their_plan["status"] == "active"
        # The note in our store and in the chart still says what the clinician approved.
        [note_after] = notes_of(stored(store, "DocumentReference", encounter=got.encounter),
                                got.encounter)  # fmt: skip
        [charted] = notes_of(
            ehr_resources(sekmet_server, "DocumentReference", {"subject": alex.patient}),
            got.encounter,
        )
        for shown in (note_after, charted):
            assert "reviewed by clinician" in shown["description"], shown["description"]
        assert note_after["id"] == note["id"]
    finally:
        for store in opened:
            store.close()
