"""End to end with the EHR as the care-plan store (`care_plan_store = "ehr"`, vendor generic).

One poll of a seeded clinic (2 patients x 2 finished sessions, one session in progress) on a
real sekmet-fhir server, the shipped model behind a real Triton, our store on SQLite and on
PostgreSQL. Afterwards the EHR holds the CarePlans, Tasks, Provenance, Device, model card,
notes and Communications, our store holds the same plus the PHQ-9 Observations, and a second
run changes nothing on either side.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fhir_adapter.pipeline.steps import Step
from fhir_adapter.store import open_store, work
from inference_server.client import TritonBackend
from mapping.fhir.codes import (
    SID_CAREPLAN,
    SID_COMMUNICATION,
    SID_DEVICE,
    SID_MODEL_CARD,
    SID_NOTE,
    SID_OBSERVATION,
    SID_TASK,
)
from tests.fhir_adapter.pipeline.checks import (
    ehr_side,
    ehr_tasks,
    note_provenance_counts,
    note_text,
    notes_of,
    review_encounter,
    statuses,
    store_side,
)
from tests.fhir_adapter.pipeline.seed import ehr_resources, seed_clinic, seed_session
from tests.fhir_adapter.pipeline.support import (
    CONNECTION,
    TritonHandle,
    connection,
    review_status,
    run_pass,
    settings_for,
    stored,
)
from tests.fhir_adapter.sekmet_server import SekmetServer

pytestmark = pytest.mark.integration


async def test_run_once_writes_care_plans_and_chart_to_the_ehr_and_our_store(
    sekmet_server: SekmetServer,
    pipeline_triton: TritonHandle,
    triton_backend: TritonBackend,
    database_url: str,
    tmp_path: Path,
) -> None:
    # Another practice's patients on the same server: sekmet ignores the patient parameter of
    # a QuestionnaireResponse search, so their PHQ-9s come back too and must be left out.
    other = seed_clinic(sekmet_server, sessions=1, in_progress=False)
    clinic = seed_clinic(sekmet_server)
    conn = connection(sekmet_server, clinic, client="rs384", care_plan_store="ehr")
    settings = settings_for(tmp_path, [conn], database_url=database_url, triton=pipeline_triton)
    store = open_store(settings.database_url)
    try:
        summary = await run_pass(settings, store, triton_backend)

        assert summary.errors == []
        assert summary.encounters_new == 4  # the session still in progress is not polled
        assert summary.encounters_processed == 4
        assert (summary.encounters_failed, summary.encounters_skipped) == (0, 0)
        assert (summary.writes_failed, summary.writes_retrying) == (0, 0)
        with store.session() as session:
            assert work.get_encounter(session, CONNECTION, str(clinic.in_progress)) is None
            rows = {e: work.get_encounter(session, CONNECTION, e) for e in clinic.encounters}
            assert {e: r.step if r else None for e, r in rows.items()} == dict.fromkeys(
                clinic.encounters, Step.DONE
            )
            # Jordan's second transcript is only a url to a Binary: fetched, then read.
            jordan = clinic.patients["jordan"]
            row = rows[jordan.encounters[1]]
            assert row is not None and row.state["transcript"] == jordan.transcripts[1]
            assert row.state["dialogues"] == 5

        # Homework in every session that sets some (both of Sam's, Jordan's first).
        homework_sessions = [*clinic.patients["sam"].encounters, jordan.encounters[0]]
        for encounter in homework_sessions:
            assert stored(store, "Task", encounter=encounter), f"no Task for {encounter}"
            assert len(stored(store, "CarePlan", encounter=encounter)) == 1
        assert summary.homework_found == len(stored(store, "Task"))

        ours, ehr = store_side(store), ehr_side(sekmet_server, clinic, store)
        assert ours.duplicates() == {} and ehr.duplicates() == {}
        for system in (SID_CAREPLAN, SID_TASK, SID_DEVICE, SID_MODEL_CARD, SID_NOTE,
                       SID_COMMUNICATION):  # fmt: skip
            assert ehr.by_system[system] == ours.by_system[system], system
        assert ours.count(SID_NOTE) == ours.count(SID_COMMUNICATION) == 4
        assert ours.count(SID_DEVICE) == ours.count(SID_MODEL_CARD) == 1
        assert ours.count(SID_CAREPLAN) == 3
        assert ehr.provenance == ours.provenance and len(ours.provenance) >= 3
        # Each note in the chart has its own Provenance naming the model.
        chart_provenance = note_provenance_counts(sekmet_server, clinic)
        assert chart_provenance == dict.fromkeys(ours.by_system[SID_NOTE], 1)
        # PHQ-9 scores stay in our store: one per questionnaire, none written to the EHR.
        assert ours.count(SID_OBSERVATION) == 4
        assert ehr.count(SID_OBSERVATION) == 0
        patients = {p.patient for p in clinic.patients.values()}
        assert {o["subject"]["reference"] for o in stored(store, "Observation")} == patients
        assert not patients & {p.patient for p in other.patients.values()}

        # The same review status on both sides; the first sessions' homework is settled.
        ehr_status = statuses(ehr_tasks(sekmet_server, clinic))
        assert ehr_status == statuses(stored(store, "Task"))
        for seeded in clinic.patients.values():
            first, second = seeded.encounters
            settled = statuses(stored(store, "Task", encounter=first)).values()
            assert set(settled) <= {"reviewed", "not-reviewed"}
            assert set(statuses(stored(store, "Task", encounter=second)).values()) <= {
                "awaiting-review"
            }

        # Idempotency: a second run finds nothing new and writes nothing.
        again = await run_pass(settings, store, triton_backend)
        assert (again.encounters_new, again.encounters_processed, again.writes_done) == (0, 0, 0)
        assert store_side(store) == ours
        assert ehr_side(sekmet_server, clinic, store) == ehr
        assert note_provenance_counts(sekmet_server, clinic) == chart_provenance
    finally:
        store.close()


async def test_a_later_session_settles_the_review_status_of_earlier_homework(
    sekmet_server: SekmetServer,
    pipeline_triton: TritonHandle,
    triton_backend: TritonBackend,
    tmp_path: Path,
) -> None:
    """Session 1 -> Tasks awaiting review; session 2 with a review (Sam) -> `reviewed`, with
    none (Jordan) -> `not-reviewed`, on both sides, citing encounter 2; session 2's note lists
    what became of the earlier homework."""
    clinic = seed_clinic(sekmet_server, sessions=1, in_progress=False)
    conn = connection(sekmet_server, clinic, client="es384", care_plan_store="ehr")
    settings = settings_for(tmp_path, [conn], triton=pipeline_triton)
    store = open_store(settings.database_url)
    try:
        first = await run_pass(settings, store, triton_backend)
        assert (first.encounters_processed, first.writes_failed) == (2, 0), first.errors
        set_earlier = {
            key: {str(t["id"]) for t in stored(store, "Task", patient=p.patient)}
            for key, p in clinic.patients.items()
        }
        assert set_earlier["sam"] and set_earlier["jordan"]
        ehr_before = statuses(ehr_tasks(sekmet_server, clinic))
        assert ehr_before == statuses(stored(store, "Task"))
        assert set(ehr_before.values()) == {"awaiting-review"}

        seed_session(sekmet_server, clinic, 2)
        second = await run_pass(settings, store, triton_backend)
        assert (second.encounters_new, second.encounters_processed) == (2, 2), second.errors
        assert second.writes_failed == 0 and second.writes_retrying == 0
        assert second.tasks_reviewed == len(set_earlier["sam"])
        assert second.tasks_not_reviewed == len(set_earlier["jordan"])

        ehr_now = ehr_tasks(sekmet_server, clinic)
        ours_now = {str(t["id"]): t for t in stored(store, "Task")}
        for key, outcome in (("sam", "reviewed"), ("jordan", "not-reviewed")):
            later = clinic.patients[key].encounters[1]
            for task_id in set_earlier[key]:
                for side in (ehr_now, ours_now):
                    task = side[task_id]
                    assert review_status(task) == outcome, (key, task_id)
                    assert review_encounter(task) == later
        # Session 2's own homework (Sam's walk) waits for session 3.
        for task_id in set(ours_now) - set_earlier["sam"] - set_earlier["jordan"]:
            assert review_status(ours_now[task_id]) == "awaiting-review"
            assert review_status(ehr_now[task_id]) == "awaiting-review"

        # The note of session 2, in the EHR and in our store, says what became of them.
        phrases = {"sam": "Reviewed this session", "jordan": "Not reviewed this session"}
        for key, phrase in phrases.items():
            later = clinic.patients[key].encounters[1]
            [ours] = notes_of(stored(store, "DocumentReference", encounter=later), later)
            [theirs] = notes_of(
                ehr_resources(sekmet_server, "DocumentReference", {"encounter": later}), later
            )
            text = note_text(theirs)
            assert text == note_text(ours)
            earlier_part = text.split("Homework from earlier sessions:")[1]
            items = [line for line in earlier_part.splitlines() if line.startswith("- ")]
            assert len(items) == len(set_earlier[key])
            assert all(phrase in item for item in items), items
            if key == "sam":
                assert all("Not reviewed" not in item for item in items)
    finally:
        store.close()


async def test_the_runtime_records_the_served_model_version_and_refuses_another(
    pipeline_triton: TritonHandle, tmp_path: Path
) -> None:
    """Triton publishes the version of the weights it serves; a process whose local model card
    names another version refuses to start (its Provenance would name the wrong model)."""
    import json
    import shutil

    from fhir_adapter.runtime import ModelVersionMismatchError, open_runtime
    from inference_server.classifier import CARD_FILE, WEIGHTS_DIR

    backend = TritonBackend(pipeline_triton.url)
    try:
        shipped = json.loads((WEIGHTS_DIR / CARD_FILE).read_text())["version"]
        assert await backend.served_version() == shipped
    finally:
        await backend.close()
    settings = settings_for(tmp_path, [], triton=pipeline_triton)
    async with open_runtime(settings) as runtime:
        assert runtime.model.version == shipped

    other = tmp_path / "other-weights"
    shutil.copytree(WEIGHTS_DIR, other)
    card = json.loads((other / CARD_FILE).read_text())
    (other / CARD_FILE).write_text(json.dumps({**card, "version": "0.0.1+other"}))
    mismatched = settings.model_copy(
        update={"model": settings.model.model_copy(update={"model_dir": other})}
    )
    with pytest.raises(
        ModelVersionMismatchError,
        match=r"serves model version .* local model card is 0\.0\.1\+other",
    ):
        async with open_runtime(mismatched):
            pass
