"""A patient's homework drafts awaiting clinician review, counted from the store.

A draft is a Task with `status = draft` for the patient (the pipeline drafts every Task so;
approval or rejection moves it on). Two bounded queries through the patient index
(`ix_resource_patient`; `resource_type` and `status` are checked on that patient's rows): the
count and the number of sessions (encounters) in one aggregate, then the one latest draft for
its session date. No body is read but that one, however many drafts a patient has. PostgreSQL
and SQLite both choose that index once the store has statistics (`Store.refresh_statistics`,
at open and after each pass): a few ms at 6,000 Tasks of 300 patients.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session

from fhir_adapter.store.models import ResourceRow

# Card summaries are English; month names are not left to the process's locale.
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# CDS Hooks: a card's summary is under 140 characters.
MAX_SUMMARY = 139


@dataclass(frozen=True)
class Drafts:
    count: int
    sessions: int
    # The latest session's date as the EHR wrote it (the Task's authoredOn, the session's
    # start, in its own time zone); None when no draft carries one.
    latest: date | None


def awaiting_review(session: Session, patient_id: str) -> Drafts:
    """The drafts of `Patient/{patient_id}`."""
    row = ResourceRow
    where = (
        row.patient == f"Patient/{patient_id}",
        row.resource_type == "Task",
        row.status == "draft",
    )
    # A draft without an encounter (not one of ours) counts as a session of its own.
    count, sessions = session.execute(
        select(func.count(), func.count(distinct(func.coalesce(row.encounter, row.id)))).where(
            *where
        )
    ).one()
    if not count:
        return Drafts(0, 0, None)
    body = session.scalar(
        select(row.body)
        .where(*where, row.date.is_not(None))
        .order_by(row.date.desc(), row.id)
        .limit(1)
    )
    return Drafts(int(count), int(sessions), _day((body or {}).get("authoredOn")))


def _day(authored: object) -> date | None:
    if not isinstance(authored, str):
        return None
    try:
        return date.fromisoformat(authored[:10])
    except ValueError:  # a year or a month alone (FHIR allows them): no day to show
        return None


def show_day(day: date, today: date) -> str:
    """'2 Dec', with the year when it is not this year's: '2 Dec 2025'."""
    text = f"{day.day} {_MONTHS[day.month - 1]}"
    return text if day.year == today.year else f"{text} {day.year}"


def summary(drafts: Drafts, today: date) -> str:
    """'3 homework drafts from 2 Dec awaiting review'; several sessions: '5 homework drafts
    from 2 sessions, latest 2 Dec, awaiting review'."""
    noun = "homework draft" if drafts.count == 1 else "homework drafts"
    day = show_day(drafts.latest, today) if drafts.latest else None
    if drafts.sessions > 1:
        source = f" from {drafts.sessions} sessions" + (f", latest {day}," if day else "")
    else:
        source = f" from {day}" if day else ""
    return f"{drafts.count} {noun}{source} awaiting review"[:MAX_SUMMARY]
