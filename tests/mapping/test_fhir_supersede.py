"""Drafts an amended transcript no longer supports: cancelled or revoked, labels kept."""

from __future__ import annotations

from mapping.fhir import as_json, build_session_resources
from mapping.fhir.supersede import SUPERSEDED_REASON, revoked_careplan, superseded_task
from mapping.fhir.validate import problems
from tests.mapping import golden
from tests.mapping.fhir_cases import load_case


def test_a_superseded_task_is_cancelled_with_the_reason_and_keeps_its_labels() -> None:
    args = load_case(golden.load("fhir", "two-homework"))
    ctx, detections, model = args.pop("ctx"), args.pop("detections"), args.pop("model")
    built = build_session_resources(ctx, detections, model, **args)
    stored = as_json(built.tasks[0])
    server_meta = {"versionId": "3", "lastUpdated": "2026-01-01T00:00:00Z"}
    task = {**stored, "meta": {**stored["meta"], **server_meta}}
    cancelled = superseded_task(task)
    assert cancelled["status"] == "cancelled"
    assert cancelled["statusReason"]["text"] == SUPERSEDED_REASON
    assert cancelled["meta"]["security"] == task["meta"]["security"]  # still AI-asserted
    assert "versionId" not in cancelled["meta"] and cancelled["identifier"] == task["identifier"]
    assert cancelled["businessStatus"] == task["businessStatus"]
    assert problems(cancelled) == []
    assert built.careplan is not None
    revoked = revoked_careplan(as_json(built.careplan))
    assert revoked["status"] == "revoked" and revoked["id"] == built.careplan.id
    assert problems(revoked) == []
