"""What becomes of drafts that an amended transcript no longer supports.

Pure functions of the stored resource: the Task is cancelled and the CarePlan revoked, each
with the reason, and both keep their identifiers, so the update reaches every target that
holds them (our store, the care-plan store) as a new version of the same resource.
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.careplan import CarePlan
from fhir.resources.R4B.task import Task

from mapping.fhir.validate import as_json

SUPERSEDED_REASON = "Superseded: the session's transcript was amended and no longer supports it"


def _ours(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource without what servers own (version, last updated); profiles and the AI
    security label stay."""
    body = dict(resource)
    meta = {k: v for k, v in (resource.get("meta") or {}).items()
            if k not in ("versionId", "lastUpdated")}  # fmt: skip
    body.pop("meta", None)
    if meta:
        body["meta"] = meta
    return body


def superseded_task(task: dict[str, Any]) -> dict[str, Any]:
    """The Task, cancelled with the reason (its review status and evidence kept)."""
    body = _ours(task)
    body.update(status="cancelled", statusReason={"text": SUPERSEDED_REASON})
    return as_json(Task.model_validate(body))


def revoked_careplan(plan: dict[str, Any]) -> dict[str, Any]:
    """The CarePlan, revoked (R4 CarePlan has no status reason: the note says why)."""
    body = _ours(plan)
    body["status"] = "revoked"
    return as_json(CarePlan.model_validate(body))
