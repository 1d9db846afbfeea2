"""Vendor rules on a real server: Epic and Oracle Health accept no CarePlan or Task create, so
a connection that would write care plans into them stops at start-up, naming what to change;
Oracle Health takes only final notes with a service period end."""

from __future__ import annotations

from pathlib import Path

import pytest

from fhir_adapter.ehr.errors import CapabilityError
from fhir_adapter.pipeline.fetch import CURSOR_FEED
from fhir_adapter.store import open_store, work
from inference_server.client import TritonBackend
from mapping.fhir.codes import SID_NOTE
from tests.fhir_adapter.pipeline.checks import note_provenance
from tests.fhir_adapter.pipeline.seed import ehr_resources, seed_clinic
from tests.fhir_adapter.pipeline.support import (
    CONNECTION,
    TritonHandle,
    connection,
    identifier_of,
    run_pass,
    settings_for,
    stored,
)
from tests.fhir_adapter.sekmet_server import SekmetServer

pytestmark = pytest.mark.integration

# Oracle Health refuses wildcard scopes: each one spelled out (SMART v2).
ORACLE_SCOPES = (
    "system/Group.rs system/Encounter.rs system/Patient.rs system/DocumentReference.crs "
    "system/Binary.r "
    "system/QuestionnaireResponse.rs system/Observation.rs system/Communication.crs "
    "system/Provenance.crs system/CarePlan.cruds system/Task.cruds"
)


@pytest.mark.parametrize("vendor", ["epic", "oracle-health"])
async def test_care_plans_in_epic_or_oracle_health_stop_the_run_at_start_up(
    sekmet_server: SekmetServer,
    pipeline_triton: TritonHandle,
    triton_backend: TritonBackend,
    tmp_path: Path,
    vendor: str,
) -> None:
    clinic = seed_clinic(sekmet_server, sessions=1, in_progress=False)
    scopes = ORACLE_SCOPES if vendor == "oracle-health" else None
    conn = connection(sekmet_server, clinic, vendor=vendor, care_plan_store="ehr", scopes=scopes)
    settings = settings_for(tmp_path, [conn], triton=pipeline_triton)
    store = open_store(settings.database_url)
    try:
        with pytest.raises(CapabilityError) as info:
            await run_pass(settings, store, triton_backend)
        refused = [p for p in info.value.problems if f"refused by vendor {vendor}" in p]
        assert [p.split(" needs ")[1].split(",")[0] for p in refused] == [
            "CarePlan create",
            "Task create",
        ]
        for problem in refused:
            assert problem.startswith(f"ehr.{CONNECTION}.write.care_plan_store needs ")
            assert 'set ehr.clinic.write.care_plan_store = "builtin"' in problem
        assert info.value.connection == CONNECTION
        # Stopped before anything was read or written.
        with store.session() as session:
            assert work.get_cursor(session, CONNECTION, CURSOR_FEED) is None
            assert work.encounters_at(session, CONNECTION, ["fetch", "detect", "draft"]) == []
        for seeded in clinic.patients.values():
            docs = ehr_resources(sekmet_server, "DocumentReference", {"subject": seeded.patient})
            assert [d for d in docs if identifier_of(d, SID_NOTE)] == []
    finally:
        store.close()


async def test_oracle_health_gets_final_notes_with_a_period_end(
    sekmet_server: SekmetServer,
    pipeline_triton: TritonHandle,
    triton_backend: TritonBackend,
    tmp_path: Path,
) -> None:
    clinic = seed_clinic(sekmet_server, sessions=1, in_progress=False)
    conn = connection(
        sekmet_server, clinic, vendor="oracle-health", care_plan_store="builtin",
        communication=False, scopes=ORACLE_SCOPES,
    )  # fmt: skip
    settings = settings_for(tmp_path, [conn], triton=pipeline_triton)
    store = open_store(settings.database_url)
    try:
        summary = await run_pass(settings, store, triton_backend)
        assert summary.errors == [] and summary.encounters_processed == 2
        assert (summary.writes_done, summary.writes_failed) == (4, 0)  # 2 notes, 2 Provenance
        for seeded in clinic.patients.values():
            docs = ehr_resources(sekmet_server, "DocumentReference", {"subject": seeded.patient})
            [note] = [d for d in docs if identifier_of(d, SID_NOTE)]
            assert note["docStatus"] == "final"
            assert note["context"]["period"]["end"]
            assert len(note_provenance(sekmet_server, note)) == 1
            assert ehr_resources(sekmet_server, "Communication", {"subject": seeded.patient}) == []
            # Our own copy says the same.
            [ours] = [
                d for d in stored(store, "DocumentReference", patient=seeded.patient)
                if identifier_of(d, SID_NOTE)
            ]  # fmt: skip
            assert ours["docStatus"] == "final"
    finally:
        store.close()
