"""Drafts that are no homework (cancelled by an amended transcript, rejected by the clinician)
are never settled by a later session, and never counted by the quality measures."""

from __future__ import annotations

from datetime import UTC, datetime

from fhir_adapter.pipeline.draft import _earlier_tasks
from fhir_adapter.store import open_store, resources
from fhir_adapter.store.models import EncounterRow
from mapping.fhir.context import ReviewStatus
from mapping.quality.records import task_record
from tests.security.support import task

SESSION_1 = datetime(2026, 3, 1, 15, tzinfo=UTC)


def earlier(status: str, value: str) -> dict[str, object]:
    body = task(value, "Patient/p1", "awaiting-review", "2026-03-01T15:00:00Z")
    return {**body, "status": status, "encounter": {"reference": "Encounter/e1"}}


def test_only_homework_waits_for_review(database_url: str) -> None:
    store = open_store(database_url)
    try:
        with store.session() as session:
            session.add(EncounterRow(connection="c", encounter="Encounter/e1", patient="Patient/p1",
                                     period_start=SESSION_1, period_end=SESSION_1, step="done",
                                     state={}, updated_at=SESSION_1))  # fmt: skip
            for status in ("draft", "requested", "cancelled", "rejected"):
                resources.put(session, earlier(status, status))
        with store.session() as session:
            found = _earlier_tasks(session, "Patient/p1", datetime(2026, 3, 8, tzinfo=UTC), [], "c")
        assert {e.task["id"] for e in found} == {"draft", "requested"}
        assert {e.outcome for e in found} == {ReviewStatus.NOT_REVIEWED}
    finally:
        store.close()


def test_quality_records_leave_out_what_is_no_homework() -> None:
    sid = "https://homework-fhir.org/fhir/sid/task"
    for status, counted in (("draft", True), ("requested", True), ("cancelled", False),
                            ("rejected", False), ("entered-in-error", False)):  # fmt: skip
        body = {**earlier(status, status), "identifier": [{"system": sid, "value": status}],
                "code": {"coding": [{"system": "https://homework-fhir.org/fhir/CodeSystem/homework-category",
                                     "code": "practice"}]}}  # fmt: skip
        assert (task_record(body) is not None) is counted, status
