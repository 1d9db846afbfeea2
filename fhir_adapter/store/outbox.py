"""The write-back outbox: every write to a FHIR server waits here until it has succeeded.

Rows are keyed by (connection, target, resource type, business identifier). Enqueuing the same
resource again is a no-op; enqueuing a changed one (a Task whose review status moved) puts the
row back to `pending` with the new payload, remembering the server id so it becomes an update.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fhir_adapter.store.models import OutboxRow


class OutboxStatus(StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"  # gave up: a fatal error (bad request, forbidden) that a retry won't fix


def _now() -> datetime:
    return datetime.now(UTC)


def enqueue(
    session: Session,
    connection: str,
    target: str,
    identifier: tuple[str, str],
    payload: dict[str, Any],
) -> OutboxRow:
    system, value = identifier
    resource_type = payload["resourceType"]
    row = session.scalar(
        select(OutboxRow).where(
            OutboxRow.connection == connection,
            OutboxRow.target == target,
            OutboxRow.resource_type == resource_type,
            OutboxRow.identifier_system == system,
            OutboxRow.identifier_value == value,
        )
    )
    now = _now()
    if row is None:
        row = OutboxRow(
            connection=connection,
            target=target,
            resource_type=resource_type,
            identifier_system=system,
            identifier_value=value,
            payload=payload,
            status=OutboxStatus.PENDING,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )
        session.add(row)
    elif row.payload != payload:
        row.payload = payload
        row.status = OutboxStatus.PENDING
        row.attempts = 0
        row.last_error = None
        row.next_attempt_at = now
        row.updated_at = now
    session.flush()
    return row


def due(
    session: Session, connection: str, now: datetime | None = None, limit: int = 100
) -> list[OutboxRow]:
    """Pending rows whose next attempt is due, in the order they were enqueued."""
    stmt = (
        select(OutboxRow)
        .where(
            OutboxRow.connection == connection,
            OutboxRow.status == OutboxStatus.PENDING,
            OutboxRow.next_attempt_at <= (now or _now()),
        )
        .order_by(OutboxRow.id)
        .limit(limit)
    )
    return list(session.scalars(stmt))


def mark_done(
    session: Session, row: OutboxRow, server_id: str | None, server_version: str | None
) -> None:
    row.status = OutboxStatus.DONE
    row.server_id = server_id
    row.server_version = server_version
    row.attempts += 1
    row.last_error = None
    row.updated_at = _now()
    session.flush()


def mark_retry(session: Session, row: OutboxRow, error: str, delay: timedelta) -> None:
    """A temporary failure: try again after `delay`. `error` must carry no PHI."""
    row.attempts += 1
    row.last_error = error[:2000]
    row.next_attempt_at = _now() + delay
    row.updated_at = _now()
    session.flush()


def mark_failed(session: Session, row: OutboxRow, error: str) -> None:
    """A fatal failure: kept (never dropped) for an operator to fix config and requeue."""
    row.status = OutboxStatus.FAILED
    row.attempts += 1
    row.last_error = error[:2000]
    row.updated_at = _now()
    session.flush()


def requeue_failed(session: Session, connection: str) -> int:
    """Put every failed row back to pending (after an operator fixed the cause)."""
    rows = list(
        session.scalars(
            select(OutboxRow).where(
                OutboxRow.connection == connection, OutboxRow.status == OutboxStatus.FAILED
            )
        )
    )
    for row in rows:
        row.status = OutboxStatus.PENDING
        row.next_attempt_at = _now()
    session.flush()
    return len(rows)


def counts(session: Session, connection: str | None = None) -> dict[str, int]:
    stmt = select(OutboxRow.status, func.count()).group_by(OutboxRow.status)
    if connection is not None:
        stmt = stmt.where(OutboxRow.connection == connection)
    return {str(status): int(n) for status, n in session.execute(stmt)}
