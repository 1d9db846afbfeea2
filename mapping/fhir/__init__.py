"""Detections -> FHIR R4 (R4B models): CarePlan, Task, Provenance, Device, note, Communication.

Pure functions, no IO. Builders return validated fhir.resources R4B model objects; send them
with `validate.as_json(resource)` (model_dump(mode="json", exclude_none=True)).
"""

from mapping.fhir.context import (
    EarlierTask,
    EncounterContext,
    ModelInfo,
    NoteOptions,
    Ref,
    ReviewStatus,
)
from mapping.fhir.provenance import build_provenance
from mapping.fhir.session import SessionResources, build_session_resources, transaction_bundle
from mapping.fhir.task import review_outcomes, review_task
from mapping.fhir.validate import as_json, check, problems

__all__ = [
    "EarlierTask",
    "EncounterContext",
    "ModelInfo",
    "NoteOptions",
    "Ref",
    "ReviewStatus",
    "SessionResources",
    "as_json",
    "build_provenance",
    "build_session_resources",
    "check",
    "problems",
    "review_outcomes",
    "review_task",
    "transaction_bundle",
]
