"""The outbox drained into a real EHR (sekmet): what an earlier, interrupted attempt left there
is recognised by identifier, changes become If-Match updates, PUTs by id never duplicate,
and a write that cannot be decided is kept, failed, with the reason."""

from __future__ import annotations

import base64
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from fhir_adapter.connections import open_clients
from fhir_adapter.pipeline import writeback
from fhir_adapter.pipeline.writeback import flush
from fhir_adapter.settings import EhrConnection
from fhir_adapter.store import Store, outbox
from fhir_adapter.store.models import OutboxRow
from fhir_adapter.store.outbox import CARE_PLAN_STORE, CHART, NOTE_PROVENANCE, outbox_key
from mapping.fhir.codes import SID_NOTE, SID_TASK
from tests.fhir_adapter.pipeline.seed import Clinic, ehr_resources, seed_clinic
from tests.fhir_adapter.pipeline.support import CONNECTION, connection
from tests.fhir_adapter.sekmet_server import SekmetServer

pytestmark = pytest.mark.integration


def _note(clinic: Clinic, value: str, text: str) -> dict[str, Any]:
    sam = clinic.patients["sam"]
    return {
        "resourceType": "DocumentReference",
        "identifier": [{"system": SID_NOTE, "value": value}],
        "status": "current",
        "docStatus": "preliminary",
        "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3"}]},
        "subject": {"reference": sam.patient},
        "author": [{"reference": sam.practitioner}],
        "content": [{"attachment": {"contentType": "text/plain",
                                    "data": base64.b64encode(text.encode()).decode()}}],
        "context": {"encounter": [{"reference": sam.encounters[0]}]},
    }  # fmt: skip


def _task(clinic: Clinic, value: str, business_status: str) -> dict[str, Any]:
    sam = clinic.patients["sam"]
    return {
        "resourceType": "Task",
        "id": value,
        "identifier": [{"system": SID_TASK, "value": value}],
        "status": "requested",
        "intent": "proposal",
        "businessStatus": {"text": business_status},
        "for": {"reference": sam.patient},
        "encounter": {"reference": sam.encounters[0]},
        "description": "Practise the breathing every night before bed",
    }


def _enqueue(store: Store, target: str, body: dict[str, Any]) -> int:
    with store.session() as session:
        return outbox.enqueue(session, CONNECTION, target, outbox_key(body), body).id


def _row(store: Store, row_id: int) -> OutboxRow:
    with store.session() as session:
        row = session.get(OutboxRow, row_id)
        assert row is not None
        return row


def _by_identifier(server: SekmetServer, rtype: str, value: str) -> list[dict[str, Any]]:
    system = SID_NOTE if rtype == "DocumentReference" else SID_TASK
    return ehr_resources(server, rtype, {"identifier": f"{system}|{value}"})


async def _flush(store: Store, conn: EhrConnection) -> tuple[int, int, int]:
    async with open_clients(conn) as clients:
        result = await flush(store, CONNECTION, clients.targets())
    return result.done, result.retrying, result.failed


async def test_a_note_an_interrupted_attempt_left_in_the_chart_is_recorded_not_recreated(
    sekmet_server: SekmetServer, store: Store
) -> None:
    clinic = seed_clinic(sekmet_server, sessions=1, in_progress=False)
    conn = connection(sekmet_server, clinic, care_plan_store="ehr")
    value = uuid.uuid4().hex
    body = _note(clinic, value, "Set this session: breathing.")
    [landed] = sekmet_server.seed([body])  # the create that landed before the crash
    row_id = _enqueue(store, CHART, body)

    assert await _flush(store, conn) == (1, 0, 0)
    assert [f"DocumentReference/{d['id']}" for d in _by_identifier(
        sekmet_server, "DocumentReference", value)] == [landed]  # fmt: skip
    row = _row(store, row_id)
    assert (row.status, f"DocumentReference/{row.server_id}") == ("done", landed)

    # A later change of the same note: an If-Match update of that very resource.
    changed = _note(clinic, value, "Set this session: breathing and a journal.")
    assert _enqueue(store, CHART, changed) == row_id
    assert await _flush(store, conn) == (1, 0, 0)
    [now] = _by_identifier(sekmet_server, "DocumentReference", value)
    assert f"DocumentReference/{now['id']}" == landed
    assert now["meta"]["versionId"] != "1"
    text = base64.b64decode(now["content"][0]["attachment"]["data"]).decode()
    assert text == "Set this session: breathing and a journal."
    # Nothing changed: nothing sent.
    assert _enqueue(store, CHART, changed) == row_id
    assert await _flush(store, conn) == (0, 0, 0)


async def test_a_note_redrafted_after_its_create_landed_unconfirmed_is_updated_not_recorded(
    sekmet_server: SekmetServer, store: Store
) -> None:
    """The create landed but its answer was lost; the transcript was amended and the session
    drafted again under the same key: the retry updates the note it finds (If-Match), it does
    not record the first draft as done."""
    clinic = seed_clinic(sekmet_server, sessions=1, in_progress=False)
    conn = connection(sekmet_server, clinic, care_plan_store="ehr")
    value = uuid.uuid4().hex
    first = _note(clinic, value, "Set this session: breathing.")
    [landed] = sekmet_server.seed([first])
    row_id = _enqueue(store, CHART, first)
    with store.session() as session:
        row = session.get(OutboxRow, row_id)
        assert row is not None
        outbox.mark_retry(session, row, "POST timed out", timedelta(0))
    assert _enqueue(store, CHART, _note(clinic, value, "Set this session: a journal.")) == row_id

    assert await _flush(store, conn) == (1, 0, 0)
    [note] = _by_identifier(sekmet_server, "DocumentReference", value)
    assert f"DocumentReference/{note['id']}" == landed
    text = base64.b64decode(note["content"][0]["attachment"]["data"]).decode()
    assert text == "Set this session: a journal."
    row = _row(store, row_id)
    assert (row.status, f"DocumentReference/{row.server_id}") == ("done", landed)
    assert row.server_version == note["meta"]["versionId"] != "1"


async def test_duplicates_in_the_chart_fail_the_write_and_keep_it(
    sekmet_server: SekmetServer, store: Store
) -> None:
    clinic = seed_clinic(sekmet_server, sessions=1, in_progress=False)
    conn = connection(sekmet_server, clinic, care_plan_store="ehr")
    value = uuid.uuid4().hex
    body = _note(clinic, value, "x")
    sekmet_server.seed([body, body])  # someone charted it twice
    row_id = _enqueue(store, CHART, body)
    provenance = {"resourceType": "Provenance", "target": [{"reference": "DocumentReference/x"}]}
    with store.session() as session:
        system, ident = outbox_key(body)
        key = (NOTE_PROVENANCE, f"{system}|{ident}")
        provenance_id = outbox.enqueue(session, CONNECTION, CHART, key, provenance).id

    assert await _flush(store, conn) == (0, 0, 2)
    row = _row(store, row_id)
    assert row.status == "failed"
    assert "matches several DocumentReference" in str(row.last_error)
    assert "resolve the duplicates" in str(row.last_error)
    assert len(_by_identifier(sekmet_server, "DocumentReference", value)) == 2  # none added
    # The note's Provenance is never sent on its own: failed with its note, naming it, so an
    # operator sees it (and `outbox retry` of the note brings it back).
    waiting = _row(store, provenance_id)
    assert (waiting.status, waiting.last_error) == (
        "failed", f"waits on outbox row {row_id}, which failed")  # fmt: skip


async def test_care_plan_store_writes_are_puts_by_id(
    sekmet_server: SekmetServer, store: Store
) -> None:
    clinic = seed_clinic(sekmet_server, sessions=1, in_progress=False)
    conn = connection(sekmet_server, clinic, care_plan_store="ehr")
    value = uuid.uuid4().hex
    row_id = _enqueue(store, CARE_PLAN_STORE, _task(clinic, value, "Awaiting review"))
    assert await _flush(store, conn) == (1, 0, 0)
    _enqueue(store, CARE_PLAN_STORE, _task(clinic, value, "Reviewed"))
    assert await _flush(store, conn) == (1, 0, 0)
    [task] = _by_identifier(sekmet_server, "Task", value)
    assert (task["id"], task["businessStatus"]["text"]) == (value, "Reviewed")
    assert task["meta"]["versionId"] == "2"  # one resource, updated in place
    row = _row(store, row_id)
    assert (row.status, row.server_id, row.server_version) == ("done", value, "2")


async def test_a_target_without_a_client_is_failed_not_dropped(
    sekmet_server: SekmetServer, store: Store
) -> None:
    clinic = seed_clinic(sekmet_server, sessions=1, in_progress=False)
    conn = connection(sekmet_server, clinic, care_plan_store="ehr")
    _enqueue(store, "somewhere-else", _task(clinic, uuid.uuid4().hex, "Awaiting review"))
    assert await _flush(store, conn) == (0, 0, 1)
    with store.session() as session:
        [row] = session.scalars(select(OutboxRow)).all()
        assert (row.status, row.last_error) == (
            "failed",
            "no client configured for target somewhere-else",
        )


async def test_a_payload_changed_in_flight_goes_out_in_the_same_flush(
    sekmet_server: SekmetServer, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process's draft updates a Task while this one is sending it: the newer payload
    is sent before this flush returns (no process may flush after it, as with `run --once`)."""
    clinic = seed_clinic(sekmet_server, sessions=1, in_progress=False)
    conn = connection(sekmet_server, clinic, care_plan_store="ehr")
    value = uuid.uuid4().hex
    row_id = _enqueue(store, CARE_PLAN_STORE, _task(clinic, value, "Awaiting review"))
    real_attempt = writeback._attempt
    calls = 0

    async def attempt_then_update(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        outcome = await real_attempt(*args, **kwargs)
        if calls == 1:  # the other process's update lands while the first write is in flight
            _enqueue(store, CARE_PLAN_STORE, _task(clinic, value, "Reviewed"))
        return outcome

    monkeypatch.setattr(writeback, "_attempt", attempt_then_update)
    assert await _flush(store, conn) == (1, 0, 0)
    assert calls == 2
    [task] = _by_identifier(sekmet_server, "Task", value)
    assert task["businessStatus"]["text"] == "Reviewed"
    assert _row(store, row_id).status == "done"
