"""The clinician-facing summary of a session's homework, as plain text and as XHTML.

The chart note and the inbox message carry the same summary: what homework was set this
session (with the quoted turns and where they are in the transcript) and what became of the
homework set earlier. It says plainly that a model drafted it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mapping import terminology
from mapping.domain import Detection, HomeworkLabel
from mapping.errors import ResourceError
from mapping.fhir.codes import CS_HOMEWORK_CATEGORY, CS_REVIEW_STATUS, LABEL_CODES
from mapping.fhir.context import EarlierTask, EncounterContext, ModelInfo, ReviewStatus
from mapping.fhir.text import describe_position, esc, quoted, xhtml_div


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


@dataclass(frozen=True)
class SessionSummary:
    session_date: str
    new: tuple[HomeworkLine, ...]
    earlier: tuple[EarlierLine, ...]
    model_name: str
    model_version: str
    model_card_url: str

    @property
    def heading(self) -> str:
        return f"Between-session homework, session of {self.session_date} (AI draft)"

    @property
    def footer(self) -> str:
        return (
            f"Drafted from the session transcript by the model {self.model_name} "
            f"{self.model_version} (model card: {self.model_card_url}). Confidence is the "
            "model's probability. The model can be wrong: check each item against the "
            "transcript before acting on it."
        )

    def text(self) -> str:
        lines = [self.heading, ""]
        if self.new:
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
        if self.new:
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


def _task_category(task: Mapping[str, Any]) -> str | None:
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
        category=_task_category(task),
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
