"""Communication: the same summary as the note, sent to the treating practitioner's inbox."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fhir.resources.R4B.communication import Communication

from mapping.fhir.codes import COMMUNICATION_CATEGORY, SID_COMMUNICATION, ai_asserted, coding
from mapping.fhir.context import EncounterContext, NoteOptions
from mapping.fhir.identifiers import communication_value, identifier
from mapping.fhir.summary import SessionSummary
from mapping.fhir.text import instant
from mapping.fhir.validate import parse

__all__ = ["build_communication"]


def build_communication(
    ctx: EncounterContext,
    summary: SessionSummary,
    *,
    now: datetime,
    options: NoteOptions = NoteOptions(),  # noqa: B008 - frozen dataclass, never mutated
) -> Communication:
    """An inbox message to every practitioner of the encounter; no id (the EHR assigns one)."""
    data: dict[str, Any] = {
        "resourceType": "Communication",
        "meta": {"security": [ai_asserted()]},
        "identifier": [identifier(SID_COMMUNICATION, communication_value(ctx.encounter_key))],
        "status": options.communication_status,
        "category": [{"coding": [coding(COMMUNICATION_CATEGORY, "notification", "Notification")]}],
        "priority": "routine",
        "subject": ctx.patient.as_json(),
        "topic": {"text": options.title},
        "encounter": ctx.encounter.as_json(),
        "sent": instant(now),
        "recipient": [p.as_json() for p in ctx.practitioners],
        "payload": [{"contentString": summary.text()}],
    }
    if ctx.organization is not None:
        data["sender"] = ctx.organization.as_json()
    return parse(data, Communication)
