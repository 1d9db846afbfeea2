"""Polling a real FHIR server (sekmet): sessions charted late, per-patient polls of a Group's
members (how Epic and Oracle Health must be asked), and transcripts amended in the EHR after
their session was processed."""

from __future__ import annotations

import base64
from datetime import timedelta
from pathlib import Path

import pytest

from fhir_adapter.connections import open_clients
from fhir_adapter.model_backend import make_backend
from fhir_adapter.pipeline import fetch
from fhir_adapter.store import Store, open_store, work
from tests.fhir_adapter.pipeline.seed import PLANS, _encounter, seed_clinic
from tests.fhir_adapter.pipeline.support import (
    CONNECTION,
    connection,
    run_pass,
    settings_for,
    stored,
)
from tests.fhir_adapter.sekmet_server import SekmetServer


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return open_store(f"sqlite:///{tmp_path / 'store.db'}")


def _known(store: Store) -> set[str]:
    with store.session() as session:
        return {row.encounter for row in work.encounters_at(session, CONNECTION, ["fetch"])}


@pytest.mark.parametrize(("since", "found"), [("last-updated", True), ("date", False)])
async def test_a_session_charted_late_is_seen_by_last_updated(
    sekmet_server: SekmetServer, store: Store, since: str, found: bool
) -> None:
    """After a poll, a session held 40 days ago is charted now (the lookback is 30 days): a
    poll by `_lastUpdated` registers it, one by session date cannot."""
    clinic = seed_clinic(sekmet_server, sessions=1, in_progress=False)
    poll = {**clinic.poll(), "since": since}
    conn = connection(sekmet_server, clinic, encounter_poll=poll)
    async with open_clients(conn, verify=False) as clients:
        first = await fetch.poll(clients.ehr, store, conn)
        assert first.encounters_new == 2
        sam = clinic.patients["sam"]
        start = clinic.now - timedelta(days=40)
        [late] = sekmet_server.seed(
            [_encounter(clinic, PLANS[0], sam, start, start + timedelta(minutes=50))]
        )
        second = await fetch.poll(clients.ehr, store, conn)
    assert (late in _known(store)) is found
    assert second.encounters_new == int(found)


async def test_a_group_poll_asks_per_patient_and_only_for_members(
    sekmet_server: SekmetServer, store: Store
) -> None:
    clinic = seed_clinic(sekmet_server, sessions=2, in_progress=False)
    conn = connection(sekmet_server, clinic, encounter_poll=clinic.poll(per_patient=True))
    async with open_clients(conn, verify=False) as clients:
        assert sorted(await fetch.group_members(clients.ehr, str(clinic.group))) == sorted(
            p.patient for p in clinic.patients.values()
        )
        staged = await fetch.poll(clients.ehr, store, conn)
    assert staged.encounters_new == 4 and _known(store) == set(clinic.encounters)

    # A panel without Jordan: only Sam's sessions are asked for.
    other = seed_clinic(sekmet_server, sessions=1, in_progress=False)
    sam = other.patients["sam"].patient
    [panel] = sekmet_server.seed([{"resourceType": "Group", "type": "person", "actual": True,
                                   "member": [{"entity": {"reference": sam}}]}])  # fmt: skip
    poll = {**other.poll(), "scope": "group", "group": panel}
    conn = connection(sekmet_server, other, encounter_poll=poll)
    fresh = open_store(str(store.engine.url).replace("store.db", "other.db"))
    async with open_clients(conn, verify=False) as clients:
        await fetch.poll(clients.ehr, fresh, conn)
    assert _known(fresh) == set(other.patients["sam"].encounters)


AMENDED = (
    "Therapist: How has the week been?\n"
    "Client: Quiet. Work was fine and the weekend was restful.\n"
    "Therapist: Good to hear. Tell me more about the weekend.\n"
    "Client: We went for a long walk by the river.\n"
)


@pytest.mark.parametrize("per_patient", [False, True])
@pytest.mark.parametrize("transcripts", [True, False])
async def test_a_transcript_amended_in_the_ehr_is_noticed_by_the_poll(
    sekmet_server: SekmetServer, tmp_path: Path, per_patient: bool, transcripts: bool
) -> None:
    """Sessions processed; then one transcript is amended in the EHR (a new version of the same
    DocumentReference, docStatus amended, other content). The next pass polls it
    (`_lastUpdated`, across the server or per Group member), processes that session again and
    cancels the drafts the new text no longer supports, nothing else. With
    `encounter_poll.transcripts = false` the poll does not ask, and nothing changes."""
    clinic = seed_clinic(sekmet_server, sessions=1, in_progress=False)
    poll = {**clinic.poll(per_patient=per_patient), "transcripts": transcripts}
    conn = connection(sekmet_server, clinic, encounter_poll=poll, care_plan_store="builtin")
    settings = settings_for(tmp_path, [conn])
    backend = make_backend(settings)
    store = open_store(settings.database_url)
    try:
        first = await run_pass(settings, store, backend)
        assert (first.encounters_processed, first.errors) == (2, [])
        sam = clinic.patients["sam"]
        before = stored(store, "Task", encounter=sam.encounters[0])
        assert before and {t["status"] for t in before} == {"draft"}
        # A pass with nothing amended processes nothing (the transcripts are seen, unchanged).
        assert (await run_pass(settings, store, backend)).encounters_processed == 0

        doc = sekmet_server.admin_get(sam.transcripts[0])
        data = base64.b64encode(AMENDED.encode()).decode()
        content = [{"attachment": {"contentType": "text/plain", "data": data}}]
        amended = {**doc, "docStatus": "amended", "content": content}
        sekmet_server.seed([amended])
        second = await run_pass(settings, store, backend)
        after = stored(store, "Task", encounter=sam.encounters[0])
        if transcripts:
            assert (second.encounters_processed, second.errors) == (1, [])
            assert {t["status"] for t in after} == {"cancelled"}
            assert stored(store, "CarePlan", encounter=sam.encounters[0])[0]["status"] == (
                "revoked"
            )
        else:
            assert second.encounters_processed == 0
            assert {t["status"] for t in after} == {"draft"}
        # Jordan's session is not touched either way.
        jordan = clinic.patients["jordan"].encounters[0]
        assert {t["status"] for t in stored(store, "Task", encounter=jordan)} <= {"draft"}
    finally:
        await backend.close()
        store.close()
