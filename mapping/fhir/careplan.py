"""CarePlan: the session's drafted homework plan, one per encounter that set homework.

US Core CarePlan: generated narrative listing the Tasks, status draft, intent proposal,
category assess-plan plus our `homework` category, subject and encounter; each homework Task is
an activity (activity.reference).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from fhir.resources.R4B.careplan import CarePlan
from fhir.resources.R4B.task import Task

from mapping import terminology
from mapping.errors import ResourceError
from mapping.fhir.codes import (
    CAREPLAN_CATEGORY,
    CS_HOMEWORK_CATEGORY,
    HOMEWORK,
    PROFILE_CAREPLAN,
    SID_CAREPLAN,
    ai_asserted,
    coding,
)
from mapping.fhir.context import EncounterContext
from mapping.fhir.identifiers import careplan_value, identifier
from mapping.fhir.summary import Approval, PlanItem
from mapping.fhir.text import esc, instant, quoted, xhtml_div
from mapping.fhir.validate import parse

__all__ = ["build_careplan", "careplan_id", "reviewed_narrative"]

_ASSESS_PLAN = "Assessment and Plan of Treatment"


def careplan_id(ctx: EncounterContext) -> str:
    """The CarePlan's identifier value and logical id for this encounter."""
    return careplan_value(ctx.encounter_key)


def _narrative(ctx: EncounterContext, tasks: Sequence[Task]) -> str:
    items = []
    for task in tasks:
        kind = task.code.text if task.code and task.code.text else "Homework"
        items.append(f"<li><b>{esc(kind)}</b>: {esc(quoted(task.description or ''))}</li>")
    date = ctx.period_start.date().isoformat()
    return xhtml_div(
        f"<p><b>Between-session homework</b> proposed in the session of {esc(date)} "
        f"(AI draft, awaiting clinician review):</p><ol>{''.join(items)}</ol>"
    )


def reviewed_narrative(session_date: str, items: Sequence[PlanItem], approval: Approval) -> str:
    """The CarePlan's narrative once a clinician has reviewed its drafts (and added to them)."""
    rows = "".join(f"<li>{esc(item.line())}</li>" for item in items)
    return xhtml_div(
        f"<p><b>Between-session homework</b> agreed in the session of {esc(session_date)}, "
        f"reviewed by {esc(approval.clinician)} on {esc(approval.day)}:</p><ol>{rows}</ol>"
    )


def build_careplan(
    ctx: EncounterContext, tasks: Sequence[Task], *, device_id: str, now: datetime
) -> CarePlan:
    """The draft CarePlan whose activities are `tasks` (at least one)."""
    if not tasks:
        raise ResourceError("a CarePlan needs at least one homework Task; build none instead")
    value = careplan_id(ctx)
    homework = terminology.display(CS_HOMEWORK_CATEGORY, HOMEWORK)
    data: dict[str, Any] = {
        "resourceType": "CarePlan",
        "id": value,
        "meta": {"profile": [PROFILE_CAREPLAN], "security": [ai_asserted()]},
        "text": {"status": "generated", "div": _narrative(ctx, tasks)},
        "identifier": [identifier(SID_CAREPLAN, value)],
        "status": "draft",
        "intent": "proposal",
        "category": [
            {
                "coding": [coding(CAREPLAN_CATEGORY, "assess-plan", _ASSESS_PLAN)],
                "text": _ASSESS_PLAN,
            },
            {"coding": [coding(CS_HOMEWORK_CATEGORY, HOMEWORK, homework)], "text": homework},
        ],
        "title": "Between-session homework",
        "description": (
            f"Homework proposed in the session of {ctx.period_start.date().isoformat()}, "
            "drafted by a model from the transcript; awaiting clinician review."
        ),
        "subject": ctx.patient.as_json(),
        "encounter": ctx.encounter.as_json(),
        "created": instant(now),
        "author": {"reference": f"Device/{device_id}"},
        # The session's treating practitioner(s): whose plan it is, and what quality teams
        # search by (the model, its author, is named in the Provenance too).
        "contributor": [p.as_json() for p in ctx.practitioners],
        "activity": [{"reference": {"reference": f"Task/{t.id}"}} for t in tasks],
    }
    return parse(data, CarePlan)
