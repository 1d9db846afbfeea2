"""Task: one drafted homework item, and its update when a later session reviews it.

A Task is a draft proposal (status draft, intent proposal) coded from our homework-category
CodeSystem, `basedOn` the session's CarePlan. Its inputs quote the evidence: the therapist turn
that set it, the client's reply, the transcript and the position there. The model's confidence
is the AI Transparency `AIconfidence` extension. `businessStatus` tracks review:
awaiting-review -> reviewed | not-reviewed; when reviewed, `output` names the reviewing
encounter and quotes the turn.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from fhir.resources.R4B.task import Task

from mapping import terminology
from mapping.domain import Detection, HomeworkLabel, SourcePosition
from mapping.errors import ResourceError
from mapping.fhir.codes import (
    AIAST,
    CS_HOMEWORK_CATEGORY,
    CS_REVIEW_STATUS,
    CS_TASK_PARAMETER,
    EXT_AI_CONFIDENCE,
    EXT_INLINE_SECURITY_LABEL,
    LABEL_CODES,
    P_CLIENT_REPLY,
    P_REVIEW_ENCOUNTER,
    P_REVIEW_POSITION,
    P_REVIEW_QUOTE,
    P_SOURCE_DOCUMENT,
    P_SOURCE_POSITION,
    P_THERAPIST_QUOTE,
    REVIEW_PARAMETERS,
    SID_TASK,
    ai_asserted,
    coding,
)
from mapping.fhir.context import EarlierTask, EncounterContext, Ref, ReviewStatus
from mapping.fhir.identifiers import identifier, task_value
from mapping.fhir.text import clean, describe_position, instant
from mapping.fhir.validate import parse

__all__ = [
    "NOT_HOMEWORK",
    "awaiting_again",
    "build_task",
    "is_homework",
    "review_encounter",
    "review_outcomes",
    "review_task",
    "task_identifier_value",
]

# Task statuses that are no homework set for the client: superseded by an amended transcript
# (cancelled), declined by the clinician (rejected), or recorded in error. Such a Task is never
# reviewed, nor counted by quality measures.
NOT_HOMEWORK = frozenset({"cancelled", "rejected", "entered-in-error"})


def is_homework(task: Mapping[str, Any]) -> bool:
    return task.get("status") not in NOT_HOMEWORK


def review_encounter(task: Mapping[str, Any]) -> str | None:
    """The encounter whose session settled the Task (reviewed or not), if any."""
    for out in task.get("output") or ():
        codes = {c.get("code") for c in (out.get("type") or {}).get("coding") or ()}
        if P_REVIEW_ENCOUNTER in codes:
            ref = (out.get("valueReference") or {}).get("reference")
            return ref if isinstance(ref, str) else None
    return None


def awaiting_again(task: Mapping[str, Any]) -> dict[str, Any]:
    """The Task back to awaiting-review, its review outputs removed: a session charted late
    came between it and the session that settled it, or one of them was amended, so the
    settling is done again, in session order."""
    data = copy.deepcopy(dict(task))
    data["output"] = [
        o for o in data.get("output") or ()
        if not ({c.get("code") for c in (o.get("type") or {}).get("coding") or ()}
                & REVIEW_PARAMETERS)
    ]  # fmt: skip
    if not data["output"]:
        del data["output"]
    data["businessStatus"] = _concept(CS_REVIEW_STATUS, ReviewStatus.AWAITING.value)
    return data


def _parameter(code: str) -> dict[str, Any]:
    display = terminology.display(CS_TASK_PARAMETER, code)
    return {"coding": [coding(CS_TASK_PARAMETER, code, display)], "text": display}


def _concept(system: str, code: str) -> dict[str, Any]:
    display = terminology.display(system, code)
    return {"coding": [coding(system, code, display)], "text": display}


def confidence_extension(value: float) -> dict[str, Any]:
    """AIconfidence as a probability, rounded so that reruns serialize identically."""
    if not 0.0 <= value <= 1.0:
        raise ResourceError(f"confidence {value} is not a probability in [0, 1]")
    return {"url": EXT_AI_CONFIDENCE, "valueDecimal": round(value, 4)}


def task_identifier_value(ctx: EncounterContext, detection: Detection) -> str:
    """The Task's identifier value (and logical id) for a homework detection."""
    return task_value(
        ctx.encounter_key, detection.dialogue.therapist.first, LABEL_CODES[detection.label]
    )


def build_task(
    ctx: EncounterContext, detection: Detection, *, careplan_id: str, now: datetime
) -> Task:
    """A draft Task for one homework detection (label other than none)."""
    if detection.label is HomeworkLabel.NONE:
        raise ResourceError("a detection labelled 'none' sets no homework; leave it out")
    therapist = detection.dialogue.therapist
    # A long turn's quote is the part the homework was found in, so a reader sees the task.
    quote = clean(detection.evidence or therapist.text)
    if not quote:
        raise ResourceError(
            f"the therapist turn at {describe_position(therapist.first)} is empty; "
            "check the transcript reader"
        )
    value = task_identifier_value(ctx, detection)
    inputs: list[dict[str, Any]] = [
        {"type": _parameter(P_THERAPIST_QUOTE), "valueString": quote},
    ]
    client = detection.dialogue.client
    if client is not None and clean(client.text):
        inputs.append({"type": _parameter(P_CLIENT_REPLY), "valueString": clean(client.text)})
    inputs += [
        {
            "type": _parameter(P_SOURCE_DOCUMENT),
            "valueReference": ctx.source_transcript().as_json(),
        },
        {
            "type": _parameter(P_SOURCE_POSITION),
            "valueString": describe_position(therapist.first, therapist.last),
        },
    ]
    task = {
        "resourceType": "Task",
        "id": value,
        "meta": {"security": [ai_asserted()]},
        "extension": [confidence_extension(detection.confidence)],
        "identifier": [identifier(SID_TASK, value)],
        "basedOn": [{"reference": f"CarePlan/{careplan_id}"}],
        "status": "draft",
        "businessStatus": _concept(CS_REVIEW_STATUS, ReviewStatus.AWAITING.value),
        "intent": "proposal",
        "code": _concept(CS_HOMEWORK_CATEGORY, LABEL_CODES[detection.label]),
        "description": quote,
        "for": ctx.patient.as_json(),
        "encounter": ctx.encounter.as_json(),
        "authoredOn": instant(now),
        "lastModified": instant(now),
        "requester": ctx.practitioners[0].as_json(),
        "owner": ctx.patient.as_json(),
        "input": inputs,
    }
    return parse(task, Task)


def _our_identifier(task: Mapping[str, Any]) -> str | None:
    for ident in task.get("identifier", []):
        if ident.get("system") == SID_TASK and ident.get("value"):
            return str(ident["value"])
    return None


def review_task(
    task: Mapping[str, Any] | Task,
    outcome: ReviewStatus,
    *,
    encounter: Ref,
    now: datetime,
    quote: str | None = None,
    position: SourcePosition | None = None,
    confidence: float | None = None,
) -> Task:
    """The Task updated for a review outcome in `encounter`; id and identifier are kept.

    REVIEWED needs the `quote` of the therapist turn that followed the homework up;
    `position` and the model's `confidence` in the review are recorded when given.
    NOT_REVIEWED records the encounter that did not follow it up. Earlier review outputs are
    replaced, other outputs kept; `lastModified` becomes `now`. A draft is labelled AIAST; a
    Task a clinician approved (CLINAST_AIRPT) or added (no AI label) keeps its own label and
    the review outputs carry AIAST as DS4P inline security labels: the review is the model's.
    """
    data: dict[str, Any] = (
        task.model_dump(mode="json", exclude_none=True)
        if isinstance(task, Task)
        else copy.deepcopy(dict(task))  # never change the caller's Task
    )
    if data.get("resourceType") != "Task":
        raise ResourceError(f"expected a Task, got {data.get('resourceType')!r}")
    if _our_identifier(data) is None:
        raise ResourceError(
            f"Task/{data.get('id', '?')} has no {SID_TASK} identifier; "
            "only Tasks drafted by homework-fhir can be reviewed"
        )
    if outcome is ReviewStatus.AWAITING:
        raise ResourceError("awaiting-review is not a review outcome; leave the Task unchanged")
    if encounter.resource_type != "Encounter":
        raise ResourceError(f"reviewing encounter must reference an Encounter: {encounter}")
    outputs = [
        o
        for o in data.get("output", [])
        if not any(
            c.get("system") == CS_TASK_PARAMETER and c.get("code") in REVIEW_PARAMETERS
            for c in o.get("type", {}).get("coding", [])
        )
    ]
    outputs.append({"type": _parameter(P_REVIEW_ENCOUNTER), "valueReference": encounter.as_json()})
    if outcome is ReviewStatus.REVIEWED:
        if quote is None or not clean(quote):
            raise ResourceError("a reviewed Task needs the quote of the reviewing turn")
        review: dict[str, Any] = {"type": _parameter(P_REVIEW_QUOTE), "valueString": clean(quote)}
        if confidence is not None:
            review["extension"] = [confidence_extension(confidence)]
        outputs.append(review)
        if position is not None:
            outputs.append(
                {"type": _parameter(P_REVIEW_POSITION), "valueString": describe_position(position)}
            )
    labels = (data.get("meta") or {}).get("security") or []
    if data.get("status") == "draft":
        security = data.setdefault("meta", {}).setdefault("security", [])
        if ai_asserted() not in security:
            security.append(ai_asserted())
    elif not any(label.get("code") == AIAST for label in labels):
        # A Task a clinician approved (CLINAST_AIRPT) or added (no label) keeps its label: the
        # review outcome is the model's, so the AI label goes on the review outputs instead,
        # as an inline security label (R4B has no element-level meta.security).
        for output in outputs:
            if any(c.get("system") == CS_TASK_PARAMETER and c.get("code") in REVIEW_PARAMETERS
                   for c in output.get("type", {}).get("coding", [])):  # fmt: skip
                extensions = output.setdefault("extension", [])
                label = {"url": EXT_INLINE_SECURITY_LABEL, "valueCoding": ai_asserted()}
                if label not in extensions:
                    extensions.append(label)
    data["output"] = outputs
    data["businessStatus"] = _concept(CS_REVIEW_STATUS, outcome.value)
    data["lastModified"] = instant(now)
    return parse(data, Task)


def business_status(task: Mapping[str, Any]) -> str | None:
    """The Task's review status code in our CodeSystem, or None."""
    for c in task.get("businessStatus", {}).get("coding", []):
        if c.get("system") == CS_REVIEW_STATUS:
            return str(c.get("code"))
    return None


def review_outcomes(
    earlier_tasks: Sequence[Mapping[str, Any]], detections: Sequence[Detection]
) -> list[EarlierTask]:
    """The default review policy, per session: coarse, because the model cannot say which task.

    Only Tasks still awaiting review are considered. If this session has at least one review
    detection, each of them is REVIEWED with the most confident review turn as evidence;
    otherwise each is NOT_REVIEWED. Pass the Tasks of the patient's previous session only.
    """
    reviews = sorted(
        (d for d in detections if d.review),
        key=lambda d: (-d.review_confidence, d.dialogue.index),
    )
    best = reviews[0] if reviews else None
    out = []
    for task in earlier_tasks:
        if business_status(task) != ReviewStatus.AWAITING.value:
            continue
        if best is not None:
            out.append(EarlierTask(task, ReviewStatus.REVIEWED, best))
        else:
            out.append(EarlierTask(task, ReviewStatus.NOT_REVIEWED))
    return out
