"""A clinician's decisions on drafted homework, as pure transitions of the stored resources.

    approve(careplan, tasks, Approve(...))   -> Approved(careplan, tasks)
    edit(task, Edit(...))                    -> Task
    reject(task, Reject(...))                -> Task
    add(ctx, Add(...))                       -> Task, asserted by the clinician
    clinician_careplan(ctx, tasks, Approve)  -> CarePlan for added items when the model drafted none
    feedback_record(task_before, decision)   -> one labelled example for the model team

Each takes the resources as read from the store (JSON or R4B models; the server's versionId
and lastUpdated are dropped) and a decision that names the clinician and `now`, and returns
new JSON that validates as R4B. Each is idempotent: applying a decision to its own output
returns that output unchanged, and a decision that changes nothing leaves `lastModified`
alone, so a double submit writes nothing new.

Stale pages: a decision may name the Task versions (`meta.versionId`) the clinician saw. A
decision that would change a Task whose version is another is a DecisionError (someone else
changed it since: applying the form's values would silently undo their change); one that
changes nothing is still the idempotent repeat, whatever version it names.

States (R4 task-status; the CarePlan follows its Tasks):

    Task      draft --edit--> draft --approve--> requested --edit--> requested
              draft --reject--> rejected          (approve or edit it, or reject it again
                                                   with another reason: DecisionError)
              add --> requested
    CarePlan  draft/proposal --approve--> active/plan

Choices, with the reasons:
- Approved Tasks get intent `plan`, like the CarePlan (R4 task-intent: "plan" is an intention
  to ensure something occurs without authorising others to act; "order" is a request and
  authorisation for a performer to act). Homework is agreed with the client, not ordered from
  a filler, and the README promises drafts never become orders. US Core has no Task profile.
- A declined draft becomes `rejected`, not `cancelled`: `cancelled` already means "superseded
  by an amended transcript" here (supersede.py), and a search for `status=rejected` is the
  model team's feedback. (R4 words `rejected` for the performer declining before acting; a
  draft declined at review is the nearest fit; the reason is `statusReason.text`.) A rejected
  Task keeps AIAST: nobody asserted its content. Its review status is dropped, since homework
  that was never set cannot be followed up.
- The due date is `Task.restriction.period.end` ("over what time-period is fulfillment
  sought"); `executionPeriod` records when work actually started and ended.
- Approval swaps `meta.security` AIAST (v3-ObservationValue) for CLINAST_AIRPT (the AI
  Transparency IG's AddedProvenanceCS: "Clinician Asserted from AI Reported"), keeping other
  labels and the AIconfidence extension (the content is still what the AI reported).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from fhir.resources.R4B.careplan import CarePlan
from fhir.resources.R4B.task import Task
from fhir_core.fhirabstractmodel import FHIRAbstractModel

from mapping import terminology
from mapping.errors import DecisionError, ResourceError
from mapping.fhir.careplan import careplan_id, reviewed_narrative
from mapping.fhir.codes import (
    AIAST,
    CAREPLAN_CATEGORY,
    CS_HOMEWORK_CATEGORY,
    CS_REVIEW_STATUS,
    CS_TASK_PARAMETER,
    HOMEWORK,
    P_CLIENT_REPLY,
    P_MODEL_CATEGORY,
    P_SOURCE_DOCUMENT,
    P_SOURCE_POSITION,
    P_THERAPIST_QUOTE,
    PROFILE_CAREPLAN,
    SID_CAREPLAN,
    SID_TASK,
    V3_OBSERVATION_VALUE,
    clinician_asserted_ai_reported,
    coding,
)
from mapping.fhir.context import EncounterContext, Ref, ReviewStatus
from mapping.fhir.identifiers import added_task_value, identifier
from mapping.fhir.references import parse_reference
from mapping.fhir.summary import (
    Approval,
    model_confidence,
    parameter,
    parameter_string,
    plan_item,
    task_category,
)
from mapping.fhir.supersede import without_server_meta
from mapping.fhir.text import clean, day, instant, quoted
from mapping.fhir.validate import as_json, parse

__all__ = [
    "MAX_DESCRIPTION",
    "MAX_REASON",
    "Add",
    "Approve",
    "Approved",
    "Edit",
    "Reject",
    "add",
    "approve",
    "clinician_careplan",
    "edit",
    "feedback_record",
    "reject",
]

Json = Mapping[str, Any]
Resource = Json | FHIRAbstractModel

# What a clinician may write (characters, a line break counting one): the review screen's
# fields say the same (maxlength), so only a hand-made request meets these errors.
MAX_DESCRIPTION = 2000
MAX_REASON = 500


# --- decisions ---------------------------------------------------------------------------------


def _check_who(clinician: Ref, now: datetime) -> None:
    if clinician.resource_type not in ("Practitioner", "PractitionerRole"):
        raise ResourceError(
            "a decision is a clinician's: pass a Practitioner reference, got "
            f"{clinician.reference!r}"
        )
    if now.tzinfo is None or now.utcoffset() is None:
        raise ResourceError(f"now {now.isoformat()} has no time zone; pass an aware datetime")


def _category_code(code: str) -> str:
    """A homework kind from our CodeSystem ("take-action"); the grouping code is refused."""
    if code == HOMEWORK:
        raise ResourceError(
            f"'{HOMEWORK}' groups the homework kinds; pick one of practice, take-action, "
            "journal, learn"
        )
    terminology.display(CS_HOMEWORK_CATEGORY, code)  # ResourceError naming an unknown code
    return code


def _text(value: str, what: str, limit: int | None) -> str:
    cleaned = clean(value)
    if not cleaned:
        raise ResourceError(f"{what} is empty; say what the client is to do")
    # A browser counts a line break as one character and sends it as CRLF.
    length = len(cleaned.replace("\r\n", "\n"))
    if limit is not None and length > limit:
        raise ResourceError(
            f"{what} is {length} characters long; shorten it to {limit} characters or fewer"
        )
    return cleaned


@dataclass(frozen=True)
class Approve:
    """Approve the drafts named by `task_ids` (None: every Task of the plan still a draft).

    `versions`: Task id -> the versionId the clinician saw; a Task the approval would change
    must be there with its current version (None: not checked)."""

    clinician: Ref
    now: datetime
    task_ids: tuple[str, ...] | None = None
    versions: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        _check_who(self.clinician, self.now)


@dataclass(frozen=True)
class Edit:
    """Change a Task's description, category (a code of our homework-category) or due date;
    `version` is the Task's versionId the clinician saw (None: not checked)."""

    clinician: Ref
    now: datetime
    description: str | None = None
    category: str | None = None
    due: date | None = None
    version: str | None = None

    def __post_init__(self) -> None:
        _check_who(self.clinician, self.now)
        if self.description is None and self.category is None and self.due is None:
            raise ResourceError("an edit names at least one of description, category, due")
        if self.description is not None:  # its length is checked if it changes (see edit)
            _text(self.description, "the description", None)
        if self.category is not None:
            _category_code(self.category)
        if isinstance(self.due, datetime):
            raise ResourceError("due is a date (the day it is due by), not a datetime")


@dataclass(frozen=True)
class Reject:
    """Decline a draft; `reason` is recorded on the Task and in the model team's feedback;
    `version` is the Task's versionId the clinician saw (None: not checked)."""

    clinician: Ref
    now: datetime
    reason: str
    version: str | None = None

    def __post_init__(self) -> None:
        _check_who(self.clinician, self.now)
        _text(self.reason, "the reason for rejecting", MAX_REASON)


@dataclass(frozen=True)
class Add:
    """A homework item the model did not draft, asserted by the clinician."""

    clinician: Ref
    now: datetime
    category: str
    description: str
    due: date | None = None

    def __post_init__(self) -> None:
        _check_who(self.clinician, self.now)
        _category_code(self.category)
        _text(self.description, "the description", MAX_DESCRIPTION)
        if isinstance(self.due, datetime):
            raise ResourceError("due is a date (the day it is due by), not a datetime")


Decision = Approve | Edit | Reject | Add


# --- helpers -----------------------------------------------------------------------------------


def _stored(resource: Resource, rtype: str) -> dict[str, Any]:
    data = (
        as_json(resource)
        if isinstance(resource, FHIRAbstractModel)
        else copy.deepcopy(dict(resource))
    )
    if data.get("resourceType") != rtype:
        raise ResourceError(f"expected a {rtype}, got {data.get('resourceType')!r}")
    if not data.get("id"):
        raise ResourceError(f"the {rtype} has no id; pass it as read from the store")
    return without_server_meta(data)


def _who(clinician: Ref) -> str:
    return clinician.display or clinician.reference


def _concept(system: str, code: str) -> dict[str, Any]:
    display = terminology.display(system, code)
    return {"coding": [coding(system, code, display)], "text": display}


def _category_of(task: Json) -> str | None:
    for c in (task.get("code") or {}).get("coding") or ():
        if c.get("system") == CS_HOMEWORK_CATEGORY and c.get("code"):
            return str(c["code"])
    return None


def _clinician_asserted(resource: dict[str, Any]) -> None:
    """AIAST -> CLINAST_AIRPT in place (same position), other labels kept; nothing to do for a
    resource without AIAST (already approved, or added by a clinician)."""
    meta = resource.get("meta") or {}
    labels = meta.get("security") or []
    out: list[dict[str, Any]] = []
    for label in labels:
        if label.get("system") == V3_OBSERVATION_VALUE and label.get("code") == AIAST:
            label = clinician_asserted_ai_reported()
        if label not in out:
            out.append(label)
    if labels:
        meta["security"] = out


def _task_id(task: Json) -> str:
    return f"Task/{task['id']}"


def _refuse(task: Json, action: str, hint: str) -> DecisionError:
    return DecisionError(f"{_task_id(task)} is {task.get('status')}: it cannot be {action}; {hint}")


def _check_seen(task: Resource, seen: str | None) -> None:
    """Refuse to change a Task the clinician saw in another version (`seen`; None: not
    checked; "": a form that named none, never current). Called only for a decision that
    changes the Task: a repeat that changes nothing stands, whatever page it came from."""
    data = as_json(task) if isinstance(task, FHIRAbstractModel) else task
    current = (data.get("meta") or {}).get("versionId")
    if seen is None or (current is not None and seen == str(current)):
        return
    raise DecisionError(
        f"{_task_id(data)} was changed by someone else (or in another tab) since this page "
        "was loaded, so nothing was saved; reload the page to see it as it is now, then "
        "decide again"
    )


def _finish_task(before: dict[str, Any], after: dict[str, Any], now: datetime) -> dict[str, Any]:
    """`after` validated, with lastModified = now; `before` itself when nothing changed."""
    if after == before:
        return as_json(parse(before, Task))
    after["lastModified"] = instant(now)
    return as_json(parse(after, Task))


def _note(clinician: Ref, now: datetime, text: str) -> dict[str, Any]:
    return {"authorReference": clinician.as_json(), "time": instant(now), "text": text}


def _session_day(task: Json) -> str | None:
    authored = task.get("authoredOn")
    return authored[:10] if isinstance(authored, str) and len(authored) >= 10 else None


def _check_due(due: date, session_day: str | None, where: str) -> None:
    if session_day is not None and due.isoformat() < session_day:
        raise DecisionError(
            f"due date {due.isoformat()} is before the session ({session_day}) of {where}; "
            "pick a day after it"
        )


def _set_due(task: dict[str, Any], due: date) -> None:
    restriction = task.setdefault("restriction", {})
    restriction.setdefault("period", {})["end"] = due.isoformat()


# --- edit, reject ------------------------------------------------------------------------------


def edit(task: Resource, decision: Edit) -> dict[str, Any]:
    """The Task with the clinician's changes and a note (author, time) saying what changed.

    Allowed on a draft (before approval) and on a requested Task (approved, or added by a
    clinician). The first change of a model-drafted Task's category keeps the model's category
    as an input (`model-category`) so the feedback still knows what the model said; the Task's
    id and identifier stay (they name the drafted item, not its category).
    """
    before = _stored(task, "Task")
    if before.get("status") not in ("draft", "requested"):
        raise _refuse(
            before,
            "edited",
            "only a draft or an approved item can be edited; add a new item instead",
        )
    after = copy.deepcopy(before)
    changes: list[str] = []
    if decision.description is not None:
        description = clean(decision.description)
        if description != before.get("description"):
            # Only a new text is held to the limit: the form sends the drafted one back as it
            # is when the clinician changes something else, however long the model made it.
            _text(description, "the description", MAX_DESCRIPTION)
            was = before.get("description")
            changes.append(
                f"description was {quoted(was)}" if isinstance(was, str) else "description set"
            )
            after["description"] = description
    if decision.category is not None:
        old = _category_of(before)
        if decision.category != old:
            first_change = parameter(before.get("input"), P_MODEL_CATEGORY) is None
            if old is not None and model_confidence(before) is not None and first_change:
                after.setdefault("input", []).append(
                    {
                        "type": _concept(CS_TASK_PARAMETER, P_MODEL_CATEGORY),
                        "valueCodeableConcept": _concept(CS_HOMEWORK_CATEGORY, old),
                    }
                )
            new_display = terminology.display(CS_HOMEWORK_CATEGORY, decision.category)
            changes.append(
                f"category changed from {task_category(before) or 'none'} to {new_display}"
            )
            after["code"] = _concept(CS_HOMEWORK_CATEGORY, decision.category)
    if decision.due is not None:
        old_due = ((before.get("restriction") or {}).get("period") or {}).get("end")
        if decision.due.isoformat() != old_due:
            _check_due(decision.due, _session_day(before), _task_id(before))
            changes.append(f"due date {decision.due.isoformat()}")
            _set_due(after, decision.due)
    if not changes:
        return as_json(parse(before, Task))
    _check_seen(task, decision.version)
    after.setdefault("note", []).append(
        _note(
            decision.clinician,
            decision.now,
            f"Edited by {_who(decision.clinician)}: {'; '.join(changes)}.",
        )
    )
    return _finish_task(before, after, decision.now)


def reject(task: Resource, decision: Reject) -> dict[str, Any]:
    """The draft, rejected with the reason (`statusReason.text`); AIAST and the model's
    confidence stay, the review status goes (nothing was set to follow up)."""
    before = _stored(task, "Task")
    status = before.get("status")
    reason = clean(decision.reason)
    if status == "rejected":
        # The same rejection again (a double submit) stands; another reason would silently
        # replace the first decision, and the model team would get two contradictory labels.
        was = (before.get("statusReason") or {}).get("text")
        if reason == was:
            return as_json(parse(before, Task))
        raise _refuse(
            before,
            "rejected again",
            f"it was rejected already{f' ({quoted(was)})' if was else ''}; reload the page to "
            "see it, and add a new item if the homework is wanted after all",
        )
    if status != "draft":
        raise _refuse(
            before,
            "rejected",
            "only a draft can be rejected; an approved or added item is part of the plan "
            "(change it with edit)",
        )
    _check_seen(task, decision.version)
    after = copy.deepcopy(before)
    after["status"] = "rejected"
    after["statusReason"] = {"text": reason}
    after.pop("businessStatus", None)
    return _finish_task(before, after, decision.now)


# --- approve -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Approved:
    """The CarePlan and every one of its Tasks after an approval (JSON, in the given order)."""

    careplan: dict[str, Any]
    tasks: tuple[dict[str, Any], ...]


def _based_on(task: Json, plan_ref: str) -> bool:
    return any(
        (ref := parse_reference(b)) is not None and ref.relative == plan_ref
        for b in task.get("basedOn") or ()
    )


def _approve_task(before: dict[str, Any], now: datetime) -> dict[str, Any]:
    if before.get("status") == "requested":  # approved already, or added by a clinician
        return as_json(parse(before, Task))
    if before.get("status") != "draft":
        raise _refuse(
            before,
            "approved",
            "a rejected or withdrawn draft stays so; add the homework as a new item if the "
            "clinician now wants it",
        )
    after = copy.deepcopy(before)
    after["status"] = "requested"
    after["intent"] = "plan"
    _clinician_asserted(after)
    return _finish_task(before, after, now)


def _activity_refs(plan: Json) -> list[str]:
    out = []
    for activity in plan.get("activity") or ():
        ref = parse_reference(activity.get("reference"))
        if ref is not None and ref.resource_type == "Task":
            out.append(ref.relative)
    return out


def _reviewed_plan(
    plan: dict[str, Any], tasks: Sequence[Json], clinician: Ref, now: datetime
) -> dict[str, Any]:
    """The plan as the clinician approved it: active, intent plan, the clinician as author,
    every Task an activity, narrative and description saying who reviewed it and when."""
    plan["status"] = "active"
    plan["intent"] = "plan"
    _clinician_asserted(plan)
    refs = _activity_refs(plan)
    for task in tasks:
        if _task_id(task) not in refs:
            plan.setdefault("activity", []).append({"reference": {"reference": _task_id(task)}})
            refs.append(_task_id(task))
    created = plan.get("created")
    session = created[:10] if isinstance(created, str) else day(now)
    approval = Approval(clinician=_who(clinician), day=day(now))
    items = [item for item in (plan_item(t) for t in tasks) if item is not None]
    plan["text"] = {
        "status": "generated",
        "div": reviewed_narrative(session, items, approval),
    }
    plan["description"] = (
        f"Homework agreed in the session of {session}, reviewed and approved by "
        f"{approval.clinician} on {approval.day}."
    )
    plan["author"] = clinician.as_json()
    return plan


def approve(careplan: Resource, tasks: Sequence[Resource], decision: Approve) -> Approved:
    """The CarePlan active with intent plan and each approved draft requested (intent plan),
    AIAST replaced by CLINAST_AIRPT on both.

    `tasks` are every Task of the plan (each CarePlan activity, and items added by a clinician
    `basedOn` it), as stored, so the narrative lists them all; Tasks added since are appended
    as activities. Drafts not approved stay drafts; a rejected Task named in `task_ids` is a
    DecisionError, as is an approval that leaves nothing approved, and one that would approve
    a draft in another version than `versions` names (or not named there: a draft that
    appeared after the page was loaded).
    """
    plan = _stored(careplan, "CarePlan")
    plan_ref = f"CarePlan/{plan['id']}"
    if plan.get("status") not in ("draft", "active"):
        raise DecisionError(
            f"{plan_ref} is {plan.get('status')}: only a draft or active plan can be approved; "
            "a revoked plan was superseded by an amended transcript, review its replacement"
        )
    items = [_stored(t, "Task") for t in tasks]
    ids = [_task_id(t) for t in items]
    if len(set(ids)) != len(ids):
        raise ResourceError(f"a Task is passed twice: {sorted(ids)}")
    for task in items:
        if not _based_on(task, plan_ref):
            raise ResourceError(f"{_task_id(task)} is not based on {plan_ref}")
    missing = [r for r in _activity_refs(plan) if r not in ids]
    if missing:
        raise ResourceError(
            f"pass every Task of {plan_ref}: missing {', '.join(missing)} (the plan's "
            "narrative lists them all)"
        )
    if decision.task_ids is None:
        chosen = {t["id"] for t in items if t.get("status") == "draft"}
    else:
        chosen = set(decision.task_ids)
        unknown = sorted(chosen - {t["id"] for t in items})
        if unknown:
            raise DecisionError(
                f"Task/{unknown[0]} is not a Task of {plan_ref}; approve only its own items"
            )
    after = tuple(
        _approve_task(t, decision.now) if t["id"] in chosen else as_json(parse(t, Task))
        for t in items
    )
    if not any(t.get("status") == "requested" for t in after):
        raise DecisionError(
            f"nothing to approve in {plan_ref}: no draft is left (every item was rejected); "
            "add an item or leave the plan as it is"
        )
    # Compared as serialized, so that a server's spelling of the same value is no change.
    changes = [a != as_json(parse(b, Task)) for a, b in zip(after, items, strict=True)]
    seen = decision.versions
    for raw, item, change in zip(tasks, items, changes, strict=True):
        if change and seen is not None:
            _check_seen(raw, seen.get(item["id"], ""))
    changed = any(changes)
    new_activity = any(_task_id(t) not in _activity_refs(plan) for t in items)
    if plan.get("status") == "active" and not changed and not new_activity:
        return Approved(as_json(parse(plan, CarePlan)), after)
    reviewed = _reviewed_plan(copy.deepcopy(plan), after, decision.clinician, decision.now)
    return Approved(as_json(parse(reviewed, CarePlan)), after)


# --- add ---------------------------------------------------------------------------------------


def add(ctx: EncounterContext, decision: Add) -> dict[str, Any]:
    """A homework item the clinician adds to this session: requested, intent plan, no AI label
    and no AIconfidence, based on the session's CarePlan.

    Its id and identifier derive from the encounter, category and description (space and case
    folded), so a double submit gives the same Task. It is dated by the session (authoredOn),
    like the drafts, and requested by the treating practitioner; a note names the clinician.
    """
    description = clean(decision.description)
    value = added_task_value(ctx.encounter_key, decision.category, description)
    session_day = ctx.period_start.date().isoformat()
    task: dict[str, Any] = {
        "resourceType": "Task",
        "id": value,
        "identifier": [identifier(SID_TASK, value)],
        "basedOn": [{"reference": f"CarePlan/{careplan_id(ctx)}"}],
        "status": "requested",
        "businessStatus": _concept(CS_REVIEW_STATUS, ReviewStatus.AWAITING.value),
        "intent": "plan",
        "code": _concept(CS_HOMEWORK_CATEGORY, decision.category),
        "description": description,
        "for": ctx.patient.as_json(),
        "encounter": ctx.encounter.as_json(),
        "authoredOn": instant(ctx.period_start),
        "lastModified": instant(decision.now),
        "requester": ctx.practitioners[0].as_json(),
        "owner": ctx.patient.as_json(),
        "note": [
            _note(
                decision.clinician,
                decision.now,
                f"Added by {_who(decision.clinician)}: the model did not draft this item.",
            )
        ],
    }
    if decision.due is not None:
        _check_due(decision.due, session_day, f"the session {ctx.encounter.reference}")
        _set_due(task, decision.due)
    return as_json(parse(task, Task))


def clinician_careplan(
    ctx: EncounterContext, tasks: Sequence[Resource], decision: Approve
) -> dict[str, Any]:
    """The session's CarePlan when the model drafted none and the clinician added `tasks`:
    active, intent plan, US Core CarePlan, no AI label, the clinician as author. It has the
    id the pipeline would have given it, so the added Tasks' `basedOn` resolves."""
    items = [_stored(t, "Task") for t in tasks]
    if not items:
        raise ResourceError("a CarePlan needs at least one homework Task; add one first")
    value = careplan_id(ctx)
    for task in items:
        if not _based_on(task, f"CarePlan/{value}"):
            raise ResourceError(f"{_task_id(task)} is not based on this session's CarePlan")
        if model_confidence(task) is not None:
            raise ResourceError(
                f"{_task_id(task)} was drafted by the model: approve its CarePlan instead"
            )
    homework = terminology.display(CS_HOMEWORK_CATEGORY, HOMEWORK)
    plan: dict[str, Any] = {
        "resourceType": "CarePlan",
        "id": value,
        "meta": {"profile": [PROFILE_CAREPLAN]},
        "identifier": [identifier(SID_CAREPLAN, value)],
        "status": "active",
        "intent": "plan",
        "category": [
            {
                "coding": [
                    coding(CAREPLAN_CATEGORY, "assess-plan", "Assessment and Plan of Treatment")
                ],
                "text": "Assessment and Plan of Treatment",
            },
            {"coding": [coding(CS_HOMEWORK_CATEGORY, HOMEWORK, homework)], "text": homework},
        ],
        "title": "Between-session homework",
        "subject": ctx.patient.as_json(),
        "encounter": ctx.encounter.as_json(),
        "created": instant(ctx.period_start),
        "activity": [],
    }
    reviewed = _reviewed_plan(plan, items, decision.clinician, decision.now)
    return as_json(parse(reviewed, CarePlan))


# --- feedback for the model team ---------------------------------------------------------------


def _model_category(task: Json) -> str | None:
    kept = parameter(task.get("input"), P_MODEL_CATEGORY)
    if kept is not None:
        for c in (kept.get("valueCodeableConcept") or {}).get("coding") or ():
            if c.get("system") == CS_HOMEWORK_CATEGORY:
                return str(c.get("code"))
    return _category_of(task)


_DECISION_CODES: dict[type, str] = {Approve: "approve", Edit: "edit", Reject: "reject", Add: "add"}


def feedback_record(task_before: Resource, decision: Decision) -> dict[str, Any]:
    """One labelled example for the model team: what the model said about a turn and what the
    clinician decided, as plain JSON.

    `task_before` is the Task as stored before the decision. The model's category is the one it
    drafted (kept through edits); `clinician_category` is the category the clinician settled on
    (None when rejected); `reason` is the rejection's. A Task added by a clinician has no model
    fields: it is homework the model missed. No patient or encounter reference is included: the
    Task and transcript references let the model team join what they are allowed to see.
    """
    task = _stored(task_before, "Task")
    confidence = model_confidence(task)
    source = parameter(task.get("input"), P_SOURCE_DOCUMENT)
    source_ref = parse_reference(source.get("valueReference")) if source else None
    category = _category_of(task)
    record: dict[str, Any] = {
        "task": _task_id(task),
        "decision": _DECISION_CODES[type(decision)],
        "decided_by": decision.clinician.reference,
        "decided_at": instant(decision.now),
        "model_category": _model_category(task) if confidence is not None else None,
        "model_confidence": confidence,
        "therapist_quote": parameter_string(task.get("input"), P_THERAPIST_QUOTE),
        "client_reply": parameter_string(task.get("input"), P_CLIENT_REPLY),
        "source_document": source_ref.relative if source_ref else None,
        "source_position": parameter_string(task.get("input"), P_SOURCE_POSITION),
        "clinician_category": None,
        "clinician_description": None,
        "reason": None,
    }
    if isinstance(decision, Reject):
        record["reason"] = clean(decision.reason)
    elif isinstance(decision, Edit):
        record["clinician_category"] = decision.category or category
        record["clinician_description"] = (
            clean(decision.description) if decision.description is not None else None
        )
    elif isinstance(decision, Add):
        record["clinician_category"] = decision.category
        record["clinician_description"] = clean(decision.description)
    else:
        record["clinician_category"] = category
    return record
