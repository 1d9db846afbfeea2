"""What becomes of drafts that an amended transcript no longer supports, and of a chart note
that a newer version replaces.

Pure functions of the stored resource: the Task is cancelled and the CarePlan revoked, each
with the reason, and both keep their identifiers, so the update reaches every target that
holds them (our store, the care-plan store) as a new version of the same resource. A note
replaced by a newer version (`note.superseding_note`) becomes `superseded`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from fhir.resources.R4B.careplan import CarePlan
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.task import Task

from mapping.fhir.validate import as_json

SUPERSEDED_REASON = "Superseded: the session's transcript was amended and no longer supports it"


def without_server_meta(resource: Mapping[str, Any]) -> dict[str, Any]:
    """The resource without what servers own (version, last updated); profiles and the AI
    security label stay."""
    body = copy.deepcopy(dict(resource))  # never change the caller's resource
    meta = {k: v for k, v in (body.pop("meta", None) or {}).items()
            if k not in ("versionId", "lastUpdated")}  # fmt: skip
    if meta:
        body["meta"] = meta
    return body


def superseded_task(task: dict[str, Any]) -> dict[str, Any]:
    """The Task, cancelled with the reason (its review status and evidence kept)."""
    body = without_server_meta(task)
    body.update(status="cancelled", statusReason={"text": SUPERSEDED_REASON})
    return as_json(Task.model_validate(body))


def revoked_careplan(plan: dict[str, Any]) -> dict[str, Any]:
    """The CarePlan, revoked (R4 CarePlan has no status reason: the note says why)."""
    body = without_server_meta(plan)
    body["status"] = "revoked"
    return as_json(CarePlan.model_validate(body))


def superseded_note(note: dict[str, Any]) -> dict[str, Any]:
    """The chart note, marked superseded once its new version (relatesTo replaces) is written."""
    body = without_server_meta(note)
    body["status"] = "superseded"
    return as_json(DocumentReference.model_validate(body))
