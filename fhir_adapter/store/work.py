"""Pipeline work state per encounter, and polling cursors.

The pipeline's steps read an encounter's `step` and `state` and write the next ones in the same
transaction as their results, so a crash between steps loses nothing and a rerun resumes.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fhir_adapter.store.models import CursorRow, EncounterRow, IngestJobRow, SourceRow


def _now() -> datetime:
    return datetime.now(UTC)


def get_encounter(session: Session, connection: str, encounter: str) -> EncounterRow | None:
    return session.get(EncounterRow, (connection, encounter))


def upsert_encounter(
    session: Session,
    connection: str,
    encounter: str,
    patient: str,
    period_start: datetime | None,
    period_end: datetime | None,
    first_step: str,
) -> tuple[EncounterRow, bool]:
    """Register an encounter for processing; returns (row, created). Known ones are kept."""
    row = session.get(EncounterRow, (connection, encounter))
    if row is not None:
        return row, False
    row = EncounterRow(
        connection=connection,
        encounter=encounter,
        patient=patient,
        period_start=period_start,
        period_end=period_end,
        step=first_step,
        state={},
        attempts=0,
        updated_at=_now(),
    )
    session.add(row)
    session.flush()
    return row, True


def advance(
    session: Session, row: EncounterRow, step: str, state: dict[str, Any] | None = None
) -> None:
    """Move an encounter to `step`, merging `state`; clears the last error."""
    row.step = step
    if state:
        row.state = {**row.state, **state}
    row.last_error = None
    row.attempts = 0
    row.retry_at = None
    row.updated_at = _now()
    session.flush()


def reopen(session: Session, row: EncounterRow, step: str, cause: str) -> None:
    """Send a processed encounter back to `step` (its transcript changed), keeping what the
    earlier run used so the draft step can supersede it."""
    previous = {k: v for k, v in row.state.items() if k in ("transcript", "tasks", "skipped")}
    row.state = {"reopened_by": cause, "previous": previous}
    row.step = step
    row.attempts = 0
    row.retry_at = None
    row.last_error = None
    row.updated_at = _now()
    session.flush()


def record_failure(session: Session, row: EncounterRow, error: str, count: bool = True) -> None:
    """Keep the encounter at its step with the error (it must carry no PHI); `count` adds an
    attempt (a failure of the encounter itself, not of the model server)."""
    if count:
        row.attempts += 1
    row.last_error = error[:2000]
    row.updated_at = _now()
    session.flush()


def dead_letter(session: Session, row: EncounterRow, step: str) -> None:
    """Set the encounter aside at `step` (the dead-letter step), remembering where it was."""
    row.state = {**row.state, "failed_at": row.step}
    row.step = step
    row.retry_at = None
    row.updated_at = _now()
    session.flush()


def retry(
    session: Session, dead_step: str, connection: str | None = None, encounters: Sequence[str] = ()
) -> list[EncounterRow]:
    """Put dead-lettered encounters back at the step they failed at, due now."""
    stmt = select(EncounterRow).where(EncounterRow.step == dead_step)
    if connection is not None:
        stmt = stmt.where(EncounterRow.connection == connection)
    if encounters:
        stmt = stmt.where(EncounterRow.encounter.in_(list(encounters)))
    rows = list(session.scalars(stmt))
    for row in rows:
        state = dict(row.state)
        row.step = str(state.pop("failed_at", "fetch"))
        row.state = state
        row.attempts = 0
        row.retry_at = None
        row.updated_at = _now()
    session.flush()
    return rows


def listing(
    session: Session, steps: Sequence[str] = (), connection: str | None = None, limit: int = 100
) -> list[EncounterRow]:
    """Encounters for operators, most recently changed first."""
    stmt = select(EncounterRow).order_by(EncounterRow.updated_at.desc())
    if steps:
        stmt = stmt.where(EncounterRow.step.in_(list(steps)))
    if connection is not None:
        stmt = stmt.where(EncounterRow.connection == connection)
    return list(session.scalars(stmt.limit(limit)))


def encounters_at(
    session: Session, connection: str, steps: Sequence[str], limit: int = 500
) -> list[EncounterRow]:
    """Encounters waiting at one of `steps`, oldest session first."""
    stmt = (
        select(EncounterRow)
        .where(EncounterRow.connection == connection, EncounterRow.step.in_(steps))
        .order_by(EncounterRow.period_start, EncounterRow.encounter)
        .limit(limit)
    )
    return list(session.scalars(stmt))


def patient_encounters(
    session: Session, connection: str, patient: str, steps: Sequence[str] = ()
) -> list[EncounterRow]:
    """The known encounters of a patient (at one of `steps`, if given), in session order."""
    stmt = (
        select(EncounterRow)
        .where(EncounterRow.connection == connection, EncounterRow.patient == patient)
        .order_by(EncounterRow.period_start, EncounterRow.encounter)
    )
    if steps:
        stmt = stmt.where(EncounterRow.step.in_(list(steps)))
    return list(session.scalars(stmt))


def get_cursor(session: Session, connection: str, feed: str) -> str | None:
    row = session.get(CursorRow, (connection, feed))
    return None if row is None else row.value


def set_cursor(session: Session, connection: str, feed: str, value: str) -> None:
    row = session.get(CursorRow, (connection, feed))
    if row is None:
        session.add(CursorRow(connection=connection, feed=feed, value=value, updated_at=_now()))
    else:
        row.value = value
        row.updated_at = _now()
    session.flush()


def stage_source(
    session: Session,
    connection: str,
    body: dict[str, Any],
    encounter: str | None,
    patient: str | None,
) -> None:
    """Keep an input resource (transcript, questionnaire, ...) for the encounter's steps."""
    key = (connection, body["resourceType"], body["id"])
    row = session.get(SourceRow, key)
    if row is None:
        row = SourceRow(connection=connection, resource_type=body["resourceType"], id=body["id"])
        session.add(row)
    row.encounter = encounter
    row.patient = patient
    row.body = body
    row.received_at = _now()
    session.flush()


def sources_for(
    session: Session, connection: str, encounter: str, resource_type: str | None = None
) -> list[dict[str, Any]]:
    stmt = select(SourceRow).where(
        SourceRow.connection == connection, SourceRow.encounter == encounter
    )
    if resource_type:
        stmt = stmt.where(SourceRow.resource_type == resource_type)
    return [
        row.body for row in session.scalars(stmt.order_by(SourceRow.resource_type, SourceRow.id))
    ]


def source(
    session: Session, connection: str, resource_type: str, rid: str
) -> dict[str, Any] | None:
    row = session.get(SourceRow, (connection, resource_type, rid))
    return None if row is None else row.body


def sources_of_patient(
    session: Session, connection: str, patient: str, resource_type: str
) -> list[SourceRow]:
    stmt = select(SourceRow).where(
        SourceRow.connection == connection,
        SourceRow.patient == patient,
        SourceRow.resource_type == resource_type,
    )
    return list(session.scalars(stmt.order_by(SourceRow.id)))


def create_ingest_job(
    session: Session, connection: str, encounters: Sequence[str], staged: dict[str, Any]
) -> str:
    """Record an accepted push; returns its id (random: it names a status URL)."""
    job_id = uuid.uuid4().hex
    session.add(
        IngestJobRow(
            id=job_id,
            connection=connection,
            encounters=list(encounters),
            staged=staged,
            created_at=_now(),
        )
    )
    session.flush()
    return job_id


def ingest_job(session: Session, job_id: str) -> IngestJobRow | None:
    return session.get(IngestJobRow, job_id) if len(job_id) <= 32 else None


def steps_of(session: Session, connection: str, encounters: Sequence[str]) -> dict[str, str]:
    """Encounter -> its step, for the given encounters of a connection."""
    if not encounters:
        return {}
    stmt = select(EncounterRow.encounter, EncounterRow.step).where(
        EncounterRow.connection == connection, EncounterRow.encounter.in_(list(encounters))
    )
    return {str(e): str(s) for e, s in session.execute(stmt)}
