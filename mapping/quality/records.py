"""The plain records fidelity is computed from, read out of the resources the service wrote.

A *session* is a chart note we wrote (one per processed encounter: a session with a transcript,
whether or not it set homework); its author is the treating practitioner, its custodian the
clinic (the encounter's service provider) and `context.period` the session's time. A *task* is
a homework Task we drafted, with its review status. A *score* is a PHQ-9 or GAD-7 total.
Resources that are not ours (other identifier systems), superseded notes and Tasks that are no
homework (cancelled by an amended transcript, rejected by the clinician) are not records: each
reader returns None for them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

from mapping.fhir.codes import (
    CS_HOMEWORK_CATEGORY,
    CS_REVIEW_STATUS,
    LOINC,
    P_REVIEW_ENCOUNTER,
    P_REVIEW_QUOTE,
    SID_NOTE,
    SID_TASK,
)
from mapping.fhir.task import is_homework

__all__ = [
    "INSTRUMENTS",
    "Ref",
    "ScoreRecord",
    "SessionRecord",
    "TaskRecord",
    "score_record",
    "session_record",
    "shifted",
    "task_record",
]

# LOINC total-score codes -> the instrument key used in reports.
INSTRUMENTS: dict[str, str] = {"44261-6": "phq9", "70274-6": "gad7"}
# Review statuses of a Task that had a next session (awaiting-review had none yet).
FOLLOWED_UP = frozenset({"reviewed", "not-reviewed"})

Json = Mapping[str, Any]


@dataclass(frozen=True)
class Ref:
    """A reference and its display ("Practitioner/prac-1", "Dr. Amara Okafor")."""

    reference: str
    display: str

    @staticmethod
    def of(value: Any) -> Ref | None:
        if not isinstance(value, Mapping) or not isinstance(value.get("reference"), str):
            return None
        display = value.get("display")
        reference = value["reference"]
        return Ref(reference, display if isinstance(display, str) and display else reference)


@dataclass(frozen=True)
class SessionRecord:
    encounter: str
    patient: str
    practitioner: Ref | None
    clinic: Ref | None
    start: datetime
    end: datetime | None


@dataclass(frozen=True)
class TaskRecord:
    id: str
    encounter: str
    patient: str
    practitioner: Ref | None
    category: str
    category_display: str
    description: str
    authored: datetime
    review: str  # awaiting-review | reviewed | not-reviewed
    reviewed_in: str | None
    review_quote: str | None

    @property
    def followed_up(self) -> bool:
        """The patient had a next session, so the task was reviewed or not."""
        return self.review in FOLLOWED_UP


@dataclass(frozen=True)
class ScoreRecord:
    patient: str
    encounter: str | None
    instrument: str  # phq9 | gad7
    date: datetime
    value: int


_Day = TypeVar("_Day", date, datetime)


def shifted(when: _Day, delta: timedelta) -> _Day:
    """`when` moved by `delta`, clamped at the calendar's edges (years 1 and 9999): a margin
    around a period that starts or ends there must widen it, not overflow."""
    try:
        return when + delta
    except OverflowError:
        later = delta > timedelta(0)
        if isinstance(when, datetime):
            return (datetime.max if later else datetime.min).replace(tzinfo=when.tzinfo)
        return date.max if later else date.min


# A FHIR date or dateTime to the day or finer (coarser ones, "2025" or "2025-01", name no day).
_DAY_OR_FINER = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"(T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?(Z|[+-][0-9]{2}:[0-9]{2})?)?"
)
_FRACTION = re.compile(r"(\.[0-9]{6})[0-9]+")  # Python reads at most microseconds


def _when(value: Any) -> datetime | None:
    """A FHIR date or dateTime as an aware datetime; None for a year, a month or no date.

    A bare date ("2025-01-15") is its midnight, and a time without a zone is, in UTC: as the
    store indexes them (EHRs send both for scores), so they fall on the day they name.
    """
    if not isinstance(value, str) or not _DAY_OR_FINER.fullmatch(value):
        return None
    try:
        parsed = datetime.fromisoformat(_FRACTION.sub(r"\1", value.replace("Z", "+00:00")))
    except ValueError:  # a day or time that does not exist: 2025-02-30, 25:00
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _ours(body: Json, system: str) -> bool:
    return any(
        isinstance(i, Mapping) and i.get("system") == system for i in body.get("identifier") or ()
    )


def _coding(concept: Any, system: str) -> Mapping[str, Any] | None:
    if not isinstance(concept, Mapping):
        return None
    for c in concept.get("coding") or ():
        if isinstance(c, Mapping) and c.get("system") == system and isinstance(c.get("code"), str):
            return c
    return None


def _reference(value: Any) -> str | None:
    ref = Ref.of(value)
    return ref.reference if ref else None


def session_record(note: Json) -> SessionRecord | None:
    """The session a chart note of ours records; None for any other DocumentReference."""
    if note.get("resourceType") != "DocumentReference" or not _ours(note, SID_NOTE):
        return None
    if note.get("status") != "current":
        return None
    context = note.get("context") or {}
    encounters = [_reference(e) for e in context.get("encounter") or ()]
    encounter = next((e for e in encounters if e), None)
    patient = _reference(note.get("subject"))
    period = context.get("period") or {}
    start = _when(period.get("start")) or _when(note.get("date"))
    if encounter is None or patient is None or start is None:
        return None
    authors = [Ref.of(a) for a in note.get("author") or ()]
    practitioner = next((a for a in authors if a and a.reference.startswith("Practitioner/")), None)
    return SessionRecord(
        encounter=encounter,
        patient=patient,
        practitioner=practitioner,
        clinic=Ref.of(note.get("custodian")),
        start=start,
        end=_when(period.get("end")),
    )


def _output(task: Json, code: str) -> Mapping[str, Any] | None:
    for out in task.get("output") or ():
        if isinstance(out, Mapping) and any(
            isinstance(c, Mapping) and c.get("code") == code
            for c in (out.get("type") or {}).get("coding") or ()
        ):
            return out
    return None


def task_record(task: Json) -> TaskRecord | None:
    """The homework item a drafted Task of ours records; None for other or cancelled Tasks."""
    if task.get("resourceType") != "Task" or not _ours(task, SID_TASK):
        return None
    if not is_homework(task):
        return None
    category = _coding(task.get("code"), CS_HOMEWORK_CATEGORY)
    review = _coding(task.get("businessStatus"), CS_REVIEW_STATUS)
    encounter = _reference(task.get("encounter"))
    patient = _reference(task.get("for"))
    authored = _when(task.get("authoredOn"))
    if category is None or encounter is None or patient is None or authored is None:
        return None
    reviewed_in = _output(task, P_REVIEW_ENCOUNTER)
    quote = _output(task, P_REVIEW_QUOTE)
    quote_text = quote.get("valueString") if quote else None
    return TaskRecord(
        id=str(task.get("id")),
        encounter=encounter,
        patient=patient,
        practitioner=Ref.of(task.get("requester")),
        category=str(category["code"]),
        category_display=str(category.get("display") or category["code"]),
        description=str(task.get("description") or ""),
        authored=authored,
        review=str(review["code"]) if review else "awaiting-review",
        reviewed_in=_reference(reviewed_in.get("valueReference")) if reviewed_in else None,
        review_quote=quote_text if isinstance(quote_text, str) else None,
    )


def score_record(observation: Json) -> ScoreRecord | None:
    """A PHQ-9 or GAD-7 total score; None for any other Observation."""
    if observation.get("resourceType") != "Observation":
        return None
    if observation.get("status") not in ("final", "amended", "corrected"):
        return None
    code = _coding(observation.get("code"), LOINC)
    instrument = INSTRUMENTS.get(str(code["code"])) if code else None
    patient = _reference(observation.get("subject"))
    date = _when(observation.get("effectiveDateTime"))
    value = observation.get("valueInteger")
    if instrument is None or patient is None or date is None or not isinstance(value, int):
        return None
    return ScoreRecord(
        patient=patient,
        encounter=_reference(observation.get("encounter")),
        instrument=instrument,
        date=date,
        value=value,
    )


def sessions_by_encounter(sessions: Iterable[SessionRecord]) -> dict[str, SessionRecord]:
    """One session per encounter (the latest-starting note wins if a store holds two)."""
    found: dict[str, SessionRecord] = {}
    for s in sorted(sessions, key=lambda s: s.start):
        found[s.encounter] = s
    return found
