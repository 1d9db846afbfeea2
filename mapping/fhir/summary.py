"""The clinician-facing summary of a session's homework, as plain text and as XHTML.

The chart note and the inbox message carry the same summary: what homework was set this
session (with the quoted turns and where they are in the transcript) and what became of the
homework set earlier. It says plainly that a model drafted it.

Once a clinician has decided on the drafts, `approved_summary` gives the same summary for the
note's new version, read from the Tasks as the clinician left them: each item's category,
description, due date and decision (approved, added by the clinician, rejected with the
reason, or still awaiting review), with the turn the model drafted it from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from mapping import terminology
from mapping.domain import Detection, HomeworkLabel
from mapping.errors import ResourceError
from mapping.fhir.codes import (
    CS_HOMEWORK_CATEGORY,
    CS_REVIEW_STATUS,
    CS_TASK_PARAMETER,
    EXT_AI_CONFIDENCE,
    LABEL_CODES,
    P_REVIEW_POSITION,
    P_REVIEW_QUOTE,
    P_SOURCE_POSITION,
    P_THERAPIST_QUOTE,
)
from mapping.fhir.context import EarlierTask, EncounterContext, ModelInfo, ReviewStatus
from mapping.fhir.task import is_homework
from mapping.fhir.text import clean, describe_position, esc, quoted, xhtml_div


@dataclass(frozen=True)
class HomeworkLine:
    """One homework item set this session."""

    category: str
    therapist: str
    client: str | None
    position: str
    confidence: float


@dataclass(frozen=True)
class EarlierLine:
    """One homework item from an earlier session and what this session did about it."""

    category: str | None
    description: str
    proposed: str | None
    outcome: ReviewStatus
    review_quote: str | None = None
    review_position: str | None = None


class Decided(StrEnum):
    """Where a homework item stands after the clinician's review, as the note says it."""

    APPROVED = "Approved"
    ADDED = "Added by the clinician"
    REJECTED = "Rejected"
    AWAITING = "Awaiting clinician review"


@dataclass(frozen=True)
class PlanItem:
    """One homework item of the session as the clinician left it (the approved note)."""

    category: str
    description: str
    decided: Decided
    due: str | None = None
    reason: str | None = None  # why it was rejected
    therapist: str | None = None  # the turn the model drafted it from; None when added
    position: str | None = None
    confidence: float | None = None

    def line(self) -> str:
        due = f", due {self.due}" if self.due else ""
        text = f"{self.category}{due}: {quoted(self.description)} \u2014 {self.decided.value}"
        return f"{text} ({clean(self.reason)})" if self.reason else text

    def evidence(self) -> str | None:
        if self.therapist is None:
            return None
        where = f", {self.position}" if self.position else ""
        confidence = f"confidence {self.confidence:.2f}" if self.confidence is not None else ""
        drafted = f"Drafted by the model ({confidence}{where})"
        if clean(self.therapist) == clean(self.description):
            return f"{drafted}."
        return f"{drafted} from: {quoted(self.therapist)}"


@dataclass(frozen=True)
class Approval:
    """Who reviewed the drafts and on which day, for the note's heading and footer."""

    clinician: str
    day: str


@dataclass(frozen=True)
class SessionSummary:
    session_date: str
    new: tuple[HomeworkLine, ...]
    earlier: tuple[EarlierLine, ...]
    model_name: str
    model_version: str
    model_card_url: str
    # Set for the note's version after a clinician's review; `plan` then replaces `new`.
    approval: Approval | None = None
    plan: tuple[PlanItem, ...] = ()

    @property
    def heading(self) -> str:
        if self.approval is not None:
            return (
                f"Between-session homework, session of {self.session_date} (reviewed by "
                f"{self.approval.clinician} on {self.approval.day})"
            )
        return f"Between-session homework, session of {self.session_date} (AI draft)"

    @property
    def footer(self) -> str:
        if self.approval is not None:
            earlier = (
                " The review status of earlier homework is the model's finding, not reviewed "
                "by a clinician."
                if self.earlier
                else ""
            )
            return (
                f"Drafted from the session transcript by the model {self.model_name} "
                f"{self.model_version} (model card: {self.model_card_url}) and reviewed by "
                f"{self.approval.clinician} on {self.approval.day}: approved and added items "
                f"are the clinician's.{earlier}"
            )
        return (
            f"Drafted from the session transcript by the model {self.model_name} "
            f"{self.model_version} (model card: {self.model_card_url}). Confidence is the "
            "model's probability. The model can be wrong: check each item against the "
            "transcript before acting on it."
        )

    def _plan_text(self) -> list[str]:
        if not self.plan:
            return ["Set this session: no homework."]
        lines = ["Set this session:"]
        for n, item in enumerate(self.plan, 1):
            lines.append(f"{n}. {item.line()}")
            evidence = item.evidence()
            if evidence:
                lines.append(f"   {evidence}")
        return lines

    def _plan_xhtml(self) -> str:
        if not self.plan:
            return "<p>Set this session: no homework.</p>"
        items = []
        for item in self.plan:
            evidence = item.evidence()
            more = f"<br/>{esc(evidence)}" if evidence else ""
            items.append(f"<li>{esc(item.line())}{more}</li>")
        return f"<p>Set this session:</p><ol>{''.join(items)}</ol>"

    def text(self) -> str:
        lines = [self.heading, ""]
        if self.approval is not None:
            lines += self._plan_text()
        elif self.new:
            lines.append("Set this session:")
            for n, item in enumerate(self.new, 1):
                lines.append(
                    f"{n}. {item.category} (confidence {item.confidence:.2f}, {item.position})"
                )
                lines.append(f"   Therapist: {quoted(item.therapist)}")
                if item.client:
                    lines.append(f"   Client: {quoted(item.client)}")
        else:
            lines.append("Set this session: no homework detected.")
        if self.earlier:
            lines += ["", "Homework from earlier sessions:"]
            lines += [f"- {_earlier_text(e)}" for e in self.earlier]
        lines += ["", self.footer]
        return "\n".join(lines) + "\n"

    def xhtml(self) -> str:
        parts = [f"<p><b>{esc(self.heading)}</b></p>"]
        if self.approval is not None:
            parts.append(self._plan_xhtml())
        elif self.new:
            items = []
            for item in self.new:
                client = f"<br/>Client: {esc(quoted(item.client))}" if item.client else ""
                items.append(
                    f"<li><b>{esc(item.category)}</b> (confidence {item.confidence:.2f}, "
                    f"{esc(item.position)})<br/>Therapist: {esc(quoted(item.therapist))}"
                    f"{client}</li>"
                )
            parts.append(f"<p>Set this session:</p><ol>{''.join(items)}</ol>")
        else:
            parts.append("<p>Set this session: no homework detected.</p>")
        if self.earlier:
            rows = "".join(f"<li>{esc(_earlier_text(e))}</li>" for e in self.earlier)
            parts.append(f"<p>Homework from earlier sessions:</p><ul>{rows}</ul>")
        parts.append(f"<p><i>{esc(self.footer)}</i></p>")
        return xhtml_div("".join(parts))


def _earlier_text(line: EarlierLine) -> str:
    what = line.category or "Homework"
    when = f", set {line.proposed}" if line.proposed else ""
    status = terminology.display(CS_REVIEW_STATUS, line.outcome.value)
    text = f"{what}{when}: {quoted(line.description)} \u2014 {status}"
    if line.outcome is ReviewStatus.REVIEWED:
        text += " this session"
        if line.review_position:
            text += f" ({line.review_position})"
        if line.review_quote:
            text += f": {quoted(line.review_quote)}"
    elif line.outcome is ReviewStatus.NOT_REVIEWED:
        text += " this session"
    return text


def homework_detections(detections: Sequence[Detection]) -> list[Detection]:
    """Detections that set homework (label other than none), in transcript order."""
    return sorted(
        (d for d in detections if d.label is not HomeworkLabel.NONE),
        key=lambda d: d.dialogue.index,
    )


def category_display(label: HomeworkLabel) -> str:
    return terminology.display(CS_HOMEWORK_CATEGORY, LABEL_CODES[label])


def homework_line(detection: Detection) -> HomeworkLine:
    dialogue = detection.dialogue
    return HomeworkLine(
        category=category_display(detection.label),
        # A long turn is quoted where the homework was found (the model's evidence window).
        therapist=detection.evidence or dialogue.therapist.text,
        client=dialogue.client.text if dialogue.client else None,
        position=describe_position(dialogue.therapist.first, dialogue.therapist.last),
        confidence=detection.confidence,
    )


def task_category(task: Mapping[str, Any]) -> str | None:
    for c in task.get("code", {}).get("coding", []):
        if c.get("system") == CS_HOMEWORK_CATEGORY and c.get("code"):
            try:
                return terminology.display(CS_HOMEWORK_CATEGORY, c["code"])
            except ResourceError:  # a code from a newer CodeSystem version
                return None
    text = task.get("code", {}).get("text")
    return text if isinstance(text, str) else None


def earlier_line(item: EarlierTask) -> EarlierLine:
    task = item.task
    authored = task.get("authoredOn")
    evidence = item.evidence if item.outcome is ReviewStatus.REVIEWED else None
    return EarlierLine(
        category=task_category(task),
        description=str(task.get("description") or "(no description)"),
        proposed=authored[:10] if isinstance(authored, str) else None,
        outcome=item.outcome,
        review_quote=(evidence.evidence or evidence.dialogue.therapist.text) if evidence else None,
        review_position=(
            describe_position(evidence.dialogue.therapist.first, evidence.dialogue.therapist.last)
            if evidence
            else None
        ),
    )


def build_summary(
    ctx: EncounterContext,
    detections: Sequence[Detection],
    model: ModelInfo,
    earlier: Sequence[EarlierTask] = (),
) -> SessionSummary:
    return SessionSummary(
        session_date=ctx.period_start.date().isoformat(),
        new=tuple(homework_line(d) for d in homework_detections(detections)),
        earlier=tuple(earlier_line(e) for e in earlier),
        model_name=model.name,
        model_version=model.version,
        model_card_url=model.model_card_url,
    )


# --- the note's version after a clinician's review --------------------------------------------


def parameter(items: Any, code: str) -> Mapping[str, Any] | None:
    """The Task.input or Task.output (`items`) of our parameter type `code`, or None."""
    for item in items or ():
        codings = (item.get("type") or {}).get("coding") or ()
        if any(c.get("system") == CS_TASK_PARAMETER and c.get("code") == code for c in codings):
            return item  # type: ignore[no-any-return]
    return None


def parameter_string(items: Any, code: str) -> str | None:
    """The valueString of that parameter, or None."""
    item = parameter(items, code)
    value = item.get("valueString") if item else None
    return value if isinstance(value, str) else None


def model_confidence(task: Mapping[str, Any]) -> float | None:
    """The AIconfidence of a Task the model drafted; None for one a clinician added."""
    for ext in task.get("extension") or ():
        if ext.get("url") == EXT_AI_CONFIDENCE and isinstance(ext.get("valueDecimal"), int | float):
            return float(ext["valueDecimal"])
    return None


def due_date(task: Mapping[str, Any]) -> str | None:
    """Task.restriction.period.end, the date the homework is due by."""
    end = ((task.get("restriction") or {}).get("period") or {}).get("end")
    return end if isinstance(end, str) else None


def plan_item(task: Mapping[str, Any]) -> PlanItem | None:
    """The Task as the approved note lists it; None for a cancelled or erroneous one."""
    status = task.get("status")
    confidence = model_confidence(task)
    if status == "requested":
        decided = Decided.APPROVED if confidence is not None else Decided.ADDED
    elif status == "rejected":
        decided = Decided.REJECTED
    elif status == "draft":
        decided = Decided.AWAITING
    else:
        return None
    reason = (task.get("statusReason") or {}).get("text") if status == "rejected" else None
    inputs = task.get("input")
    return PlanItem(
        category=task_category(task) or "Homework",
        description=str(task.get("description") or "(no description)"),
        decided=decided,
        due=due_date(task),
        reason=reason if isinstance(reason, str) else None,
        therapist=parameter_string(inputs, P_THERAPIST_QUOTE) if confidence is not None else None,
        position=parameter_string(inputs, P_SOURCE_POSITION),
        confidence=confidence,
    )


def earlier_line_from_task(task: Mapping[str, Any]) -> EarlierLine:
    """An earlier session's Task as read from the store, with the review outcome it records."""
    codes = {
        str(c.get("code"))
        for c in (task.get("businessStatus") or {}).get("coding") or ()
        if c.get("system") == CS_REVIEW_STATUS
    }
    outcome = next((s for s in ReviewStatus if s.value in codes), ReviewStatus.AWAITING)
    authored = task.get("authoredOn")
    outputs = task.get("output")
    reviewed = outcome is ReviewStatus.REVIEWED
    return EarlierLine(
        category=task_category(task),
        description=str(task.get("description") or "(no description)"),
        proposed=authored[:10] if isinstance(authored, str) else None,
        outcome=outcome,
        review_quote=parameter_string(outputs, P_REVIEW_QUOTE) if reviewed else None,
        review_position=parameter_string(outputs, P_REVIEW_POSITION) if reviewed else None,
    )


def approved_summary(
    session_date: str,
    tasks: Sequence[Mapping[str, Any]],
    model: ModelInfo,
    approval: Approval,
    earlier: Sequence[Mapping[str, Any]] = (),
) -> SessionSummary:
    """The summary for the note's version after review: this session's Tasks (AI-drafted and
    added) as the clinician left them, in the given order, and the earlier Tasks this session
    settled (as stored), less those never set: rejected since, or cancelled by an amended
    transcript (the draft that replaced it is listed)."""
    plan = tuple(item for item in (plan_item(t) for t in tasks) if item is not None)
    return SessionSummary(
        session_date=session_date,
        new=(),
        earlier=tuple(earlier_line_from_task(t) for t in earlier if is_homework(t)),
        model_name=model.name,
        model_version=model.version,
        model_card_url=model.model_card_url,
        approval=approval,
        plan=plan,
    )
