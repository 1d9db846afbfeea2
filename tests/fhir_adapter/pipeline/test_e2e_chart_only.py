"""End to end, chart only, as with Epic or Oracle Health (`care_plan_store = "builtin"`).

The EHR gets the session note, its Provenance and the Communication, nothing else; our store keeps
everything (CarePlan, Tasks, Provenance, Device, model card, note, Communication, scores).
Vendor `epic` (its rules: no CarePlan/Task create, a JWK Set URL), SMART ES384 auth, and the
model in process, as `model.backend = "in-process"` runs it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from fhir_adapter.model_backend import make_backend
from fhir_adapter.store import open_store
from fhir_adapter.store.models import OutboxRow
from fhir_adapter.store.outbox import CARE_PLAN_STORE, CHART
from mapping.fhir.codes import (
    SID_CAREPLAN,
    SID_COMMUNICATION,
    SID_DEVICE,
    SID_MODEL_CARD,
    SID_NOTE,
    SID_TASK,
)
from tests.fhir_adapter.pipeline.checks import ehr_side, note_provenance, store_side
from tests.fhir_adapter.pipeline.seed import ehr_resources, seed_clinic
from tests.fhir_adapter.pipeline.support import (
    connection,
    identifier_of,
    run_pass,
    settings_for,
    stored,
)
from tests.fhir_adapter.sekmet_server import SekmetServer

pytestmark = pytest.mark.integration


async def test_chart_only_writes_note_and_communication_to_the_ehr(
    sekmet_server: SekmetServer, tmp_path: Path
) -> None:
    clinic = seed_clinic(sekmet_server, in_progress=False)
    conn = connection(
        sekmet_server, clinic, client="es384", vendor="epic", care_plan_store="builtin"
    )
    settings = settings_for(tmp_path, [conn])
    assert settings.model.backend == "in-process"
    backend = make_backend(settings)
    store = open_store(settings.database_url)
    try:
        summary = await run_pass(settings, store, backend)
        assert summary.errors == []
        assert (summary.encounters_processed, summary.writes_failed) == (4, 0)
        # Per session: the note, its Provenance, the Communication.
        assert summary.writes_done == 12

        ours = store_side(store)
        assert ours.count(SID_NOTE) == ours.count(SID_COMMUNICATION) == 4
        assert ours.count(SID_CAREPLAN) == 3 and ours.count(SID_TASK) >= 3
        assert ours.count(SID_DEVICE) == ours.count(SID_MODEL_CARD) == 1
        assert len(ours.provenance) >= 3

        ehr = ehr_side(sekmet_server, clinic, store)
        assert ehr.duplicates() == {}
        assert ehr.by_system[SID_NOTE] == ours.by_system[SID_NOTE]
        assert ehr.by_system[SID_COMMUNICATION] == ours.by_system[SID_COMMUNICATION]
        assert ehr.count(SID_CAREPLAN) == ehr.count(SID_TASK) == 0
        assert sum(ehr.provenance.values()) == 0
        for seeded in clinic.patients.values():
            assert ehr_resources(sekmet_server, "CarePlan", {"subject": seeded.patient}) == []
            assert ehr_resources(sekmet_server, "Task", {"patient": seeded.patient}) == []
            # Filed for the treating practitioner, preliminary (for Epic's signing), with the
            # model named as its author in a Provenance of its own.
            docs = ehr_resources(sekmet_server, "DocumentReference", {"subject": seeded.patient})
            notes = [d for d in docs if identifier_of(d, SID_NOTE)]
            assert len(notes) == len(seeded.encounters)
            for note in notes:
                assert note["docStatus"] == "preliminary"
                assert note["author"][0]["reference"] == seeded.practitioner
                assert len(note_provenance(sekmet_server, note)) == 1
        with store.session() as session:
            targets = dict(
                session.execute(
                    select(OutboxRow.target, func.count()).group_by(OutboxRow.target)
                ).all()
            )
        assert targets == {CHART: 12}
        assert CARE_PLAN_STORE not in targets
        # Everything of the session is in our store, CarePlans and Tasks included.
        for encounter in clinic.patients["sam"].encounters:
            assert stored(store, "CarePlan", encounter=encounter)
    finally:
        await backend.close()
        store.close()
