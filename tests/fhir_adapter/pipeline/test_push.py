"""Push: an EHR POSTs a transaction Bundle to `/ingest` of the service built from settings.

The bundle holds what an EHR would send for finished sessions (Patient, Practitioner,
Encounter, transcript DocumentReference with its Binary, PHQ-9). Drafts are made and written
back; a second push of the same bundle makes and writes nothing; no token, no ingest.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fhir_adapter.service import build_service, dev_token
from mapping.fhir.codes import SID_CAREPLAN, SID_NOTE, SID_OBSERVATION, SID_TASK
from tests.fhir_adapter.pipeline.checks import ehr_side, note_provenance_counts, store_side
from tests.fhir_adapter.pipeline.seed import (
    clinic_resources,
    ehr_resources,
    seed_clinic,
    transaction,
)
from tests.fhir_adapter.pipeline.support import (
    TritonHandle,
    connection,
    identifier_of,
    settings_for,
    stored,
)
from tests.fhir_adapter.sekmet_server import SekmetServer

pytestmark = pytest.mark.integration


def _summary(response_body: dict[str, Any]) -> dict[str, Any]:
    assert response_body["resourceType"] == "OperationOutcome"
    summary: dict[str, Any] = json.loads(response_body["issue"][0]["diagnostics"])
    return summary


def _until_complete(client: TestClient, url: str, auth: dict[str, str]) -> dict[str, Any]:
    """Poll a push's status URL (202 + X-Progress while processing) until it answers 200."""
    deadline = time.monotonic() + 300
    while True:
        answer = client.get(url, headers=auth)
        assert answer.status_code in (200, 202), answer.text
        if answer.status_code == 200:
            return _summary(answer.json())
        assert answer.headers["X-Progress"].endswith(" encounters")
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.2)


def test_push_ingests_drafts_writes_back_and_is_idempotent(
    sekmet_server: SekmetServer, pipeline_triton: TritonHandle, tmp_path: Path
) -> None:
    clinic = seed_clinic(sekmet_server, in_progress=False)
    conn = connection(sekmet_server, clinic, care_plan_store="ehr", communication=False)
    settings = settings_for(tmp_path, [conn], triton=pipeline_triton)
    bundle = transaction(clinic_resources(sekmet_server, clinic))
    assert {e["resource"]["resourceType"] for e in bundle["entry"]} >= {"Binary", "Encounter"}
    service = build_service(settings)
    # The app's lifespan opens the runtime (store, model, EHR clients) and closes it.
    with TestClient(service.app) as client:
        # Without the queue this process runs the model: ready only when it is.
        assert client.get("/readyz").json()["checks"] == {"database": "ok", "model": "ok"}
        anonymous = client.post("/ingest", json=bundle)
        assert anonymous.status_code == 401
        assert anonymous.json()["resourceType"] == "OperationOutcome"
        reader = {"Authorization": f"Bearer {dev_token(settings, 'system/*.rs')}"}
        assert client.post("/ingest", json=bundle, headers=reader).status_code == 403
        assert stored(service.store, "Task") == []  # neither made anything

        auth = {"Authorization": f"Bearer {dev_token(settings, 'system/Bundle.c')}"}
        pushed = client.post("/ingest", json=bundle, headers=auth)
        assert pushed.status_code == 202, pushed.text
        staged = _summary(pushed.json())
        assert (staged["encounters_new"], staged["encounters"]) == (4, 4)
        status_url = pushed.headers["Content-Location"]
        assert status_url.startswith("http://testserver/ingest/")
        assert client.get(status_url).status_code == 401  # the status needs the token too
        assert client.get("/ingest/nope", headers=auth).status_code == 404
        status = _until_complete(client, status_url, auth)
        assert status["by_step"] == {"done": 4}  # the Binary-held transcript too
        assert (status["writes_pending"], status["writes_failed"]) == (0, 0)

        ours = store_side(service.store)
        ehr = ehr_side(sekmet_server, clinic, service.store)
        assert ours.duplicates() == {} and ehr.duplicates() == {}
        for system in (SID_CAREPLAN, SID_TASK, SID_NOTE):
            assert ehr.by_system[system] == ours.by_system[system]
        assert ours.count(SID_CAREPLAN) == 3 and ours.count(SID_NOTE) == 4
        # The pushed PHQ-9s were scored; the one without an encounter linked by date.
        assert ours.count(SID_OBSERVATION) == 4
        chart_provenance = note_provenance_counts(sekmet_server, clinic)

        again = client.post("/ingest", json=bundle, headers=auth)
        assert again.status_code == 202
        repeat = _summary(again.json())
        assert (repeat["encounters_new"], repeat["encounters_known"]) == (0, 4)
        assert _until_complete(client, again.headers["Content-Location"], auth)["complete"]
        assert store_side(service.store) == ours
        assert ehr_side(sekmet_server, clinic, service.store) == ehr
        assert note_provenance_counts(sekmet_server, clinic) == chart_provenance
        metrics = client.get("/metrics", headers=reader).text
        assert 'homework_encounters{step="done"} 4.0' in metrics
        assert 'homework_writes_queued{status="done"}' in metrics
        assert 'homework_step_seconds_count{step="detect"}' in metrics
        # One set of EHR clients for the process, opened on first use, not one per request.
        assert service.runtime is not None and len(service.runtime._clients) == 1
    assert service.runtime is None  # closed with the app


AMENDED = (
    "Therapist: How has the week been?\n"
    "Client: Quiet. Work was fine and the weekend was restful.\n"
    "Therapist: Good to hear. Tell me more about the weekend.\n"
    "Client: We went for a long walk by the river.\n"
)


def test_an_amended_transcript_reprocesses_the_session_and_supersedes_its_drafts(
    sekmet_server: SekmetServer, pipeline_triton: TritonHandle, tmp_path: Path
) -> None:
    """The transcript of a processed session is amended (the same DocumentReference, other
    content, docStatus amended): the push reprocesses the session; the Tasks the new transcript
    no longer supports are cancelled and the CarePlan revoked in our store and in the EHR, and
    the chart note is updated in place (a new version, no second note)."""
    clinic = seed_clinic(sekmet_server, sessions=1, in_progress=False)
    conn = connection(sekmet_server, clinic, care_plan_store="ehr", communication=False)
    settings = settings_for(tmp_path, [conn], triton=pipeline_triton)
    resources = clinic_resources(sekmet_server, clinic)
    auth = {"Authorization": f"Bearer {dev_token(settings, 'system/Bundle.c')}"}
    sam = clinic.patients["sam"].encounters[0]
    service = build_service(settings)
    with TestClient(service.app) as client:
        first = client.post("/ingest", json=transaction(resources), headers=auth)
        _until_complete(client, first.headers["Content-Location"], auth)
        before = stored(service.store, "Task", encounter=sam)
        assert before and {t["status"] for t in before} == {"draft"}
        [plan] = stored(service.store, "CarePlan", encounter=sam)

        [doc] = [r for r in resources if r["resourceType"] == "DocumentReference"
                 and r["context"]["encounter"][0]["reference"] == sam]  # fmt: skip
        data = base64.b64encode(AMENDED.encode()).decode()
        content = [{"attachment": {"contentType": "text/plain", "data": data}}]
        amended = {**doc, "docStatus": "amended", "content": content}
        pushed = client.post("/ingest", json=transaction([amended]), headers=auth)
        assert _summary(pushed.json())["encounters_amended"] == 1
        status = _until_complete(client, pushed.headers["Content-Location"], auth)
        assert (status["encounters"], status["by_step"]) == (1, {"done": 1})
        assert status["writes_failed"] == 0

        after = stored(service.store, "Task", encounter=sam)
        assert {t["id"] for t in after} == {t["id"] for t in before}
        assert {t["status"] for t in after} == {"cancelled"}
        assert all("amended" in t["statusReason"]["text"] for t in after)
        assert all(t["meta"]["security"] == before[0]["meta"]["security"] for t in after)
        assert stored(service.store, "CarePlan", encounter=sam)[0]["status"] == "revoked"
        assert plan["id"] == stored(service.store, "CarePlan", encounter=sam)[0]["id"]

        ehr = ehr_side(sekmet_server, clinic, service.store)
        assert ehr.duplicates() == {}
        ehr_tasks = ehr_resources(sekmet_server, "Task", {"encounter": sam})
        assert {t["status"] for t in ehr_tasks} == {"cancelled"}
        charted = ehr_resources(
            sekmet_server, "DocumentReference", {"subject": clinic.patients["sam"].patient}
        )
        notes = [d for d in charted if identifier_of(d, SID_NOTE)]
        assert len(notes) == 1 and notes[0]["meta"]["versionId"] != "1"
