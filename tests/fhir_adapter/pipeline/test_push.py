"""Push: an EHR POSTs a transaction Bundle to `/ingest` of the service built from settings.

The bundle holds what an EHR would send for finished sessions (Patient, Practitioner,
Encounter, transcript DocumentReference with its Binary, PHQ-9). Drafts are made and written
back; a second push of the same bundle makes and writes nothing; no token, no ingest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fhir_adapter.service import build_service, dev_token
from mapping.fhir.codes import SID_CAREPLAN, SID_NOTE, SID_OBSERVATION, SID_TASK
from tests.fhir_adapter.pipeline.checks import ehr_side, note_provenance_counts, store_side
from tests.fhir_adapter.pipeline.seed import clinic_resources, seed_clinic, transaction
from tests.fhir_adapter.pipeline.support import (
    TritonHandle,
    connection,
    settings_for,
    stored,
)
from tests.fhir_adapter.sekmet_server import SekmetServer

pytestmark = pytest.mark.integration


def _summary(response_body: dict[str, Any]) -> dict[str, Any]:
    assert response_body["resourceType"] == "OperationOutcome"
    summary: dict[str, Any] = json.loads(response_body["issue"][0]["diagnostics"])
    return summary


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
        anonymous = client.post("/ingest", json=bundle)
        assert anonymous.status_code == 401
        assert anonymous.json()["resourceType"] == "OperationOutcome"
        reader = {"Authorization": f"Bearer {dev_token(settings, 'system/*.rs')}"}
        assert client.post("/ingest", json=bundle, headers=reader).status_code == 403
        assert stored(service.store, "Task") == []  # neither made anything

        auth = {"Authorization": f"Bearer {dev_token(settings, 'system/Bundle.c')}"}
        pushed = client.post("/ingest", json=bundle, headers=auth)
        assert pushed.status_code == 202, pushed.text
        summary = _summary(pushed.json())
        assert (summary["encounters_new"], summary["encounters_processed"]) == (4, 4)
        assert summary["encounters_skipped"] == 0  # the Binary-held transcript too
        assert (summary["writes_failed"], summary["writes_retrying"]) == (0, 0)
        assert summary["errors"] == []

        ours = store_side(service.store)
        ehr = ehr_side(sekmet_server, clinic, service.store)
        assert ours.duplicates() == {} and ehr.duplicates() == {}
        for system in (SID_CAREPLAN, SID_TASK, SID_NOTE):
            assert ehr.by_system[system] == ours.by_system[system]
        assert ours.count(SID_CAREPLAN) == 3 and ours.count(SID_NOTE) == 4
        # The pushed PHQ-9s were scored; the one without an encounter linked by date.
        assert ours.count(SID_OBSERVATION) == 4
        assert summary["observations"] == 4
        chart_provenance = note_provenance_counts(sekmet_server, clinic)

        again = client.post("/ingest", json=bundle, headers=auth)
        assert again.status_code == 202
        repeat = _summary(again.json())
        assert (repeat["encounters_new"], repeat["encounters_processed"]) == (0, 0)
        assert repeat["writes_done"] == 0
        assert store_side(service.store) == ours
        assert ehr_side(sekmet_server, clinic, service.store) == ehr
        assert note_provenance_counts(sekmet_server, clinic) == chart_provenance
    assert service.runtime is None  # closed with the app
