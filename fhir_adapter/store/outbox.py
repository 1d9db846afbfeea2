"""The write-back outbox: every write to a FHIR server waits here until it has succeeded.

Rows are keyed by (connection, target, resource type, business identifier). Enqueuing the same
resource again is a no-op; enqueuing a changed one (a Task whose review status moved) puts the
row back to `pending` with the new payload, remembering the server id so it becomes an update.

Targets and keys live here, with the rows they name: the drafting step enqueues to them and the
runtime maps each target to the FHIR client that writes it.

Many processes may drain one outbox. A writer first *claims* a due row (`claim`): an atomic
compare-and-set that moves its `next_attempt_at` a lease ahead, so no other process takes it
while the write is in flight; a writer that dies leaves the lease to expire and the row is
taken again (the write is idempotent: search by identifier before create, PUT by id).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fhir_adapter.store.models import OutboxRow

# Targets: the EHR's chart (note, Communication, the note's Provenance) and the store that holds
# CarePlan/Task (the EHR itself where it accepts them, another FHIR store, or none).
CHART = "chart"
CARE_PLAN_STORE = "care-plan-store"
TARGETS = (CHART, CARE_PLAN_STORE)
# Key system of the chart note's Provenance; the value is the note's "system|value".
NOTE_PROVENANCE = "urn:homework-fhir:note-provenance"
# Resources without an identifier element (Provenance in R4) are keyed by their logical id.
ID_SYSTEM = "urn:homework-fhir:logical-id"
# How long a claimed write is held before another process may take it: longer than the FHIR
# client's bounded retries of one request, short enough that a crashed writer's rows resume soon.
CLAIM_LEASE = timedelta(minutes=10)


class OutboxStatus(StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"  # gave up: a fatal error (bad request, forbidden) that a retry won't fix


def _now() -> datetime:
    return datetime.now(UTC)


def outbox_key(resource: dict[str, Any]) -> tuple[str, str]:
    """The row key of a resource: its first identifier, else its logical id."""
    for ident in resource.get("identifier") or []:
        if ident.get("system") and ident.get("value"):
            return str(ident["system"]), str(ident["value"])
    return ID_SYSTEM, f"{resource['resourceType']}/{resource['id']}"


def _by_key(
    session: Session, connection: str, target: str, resource_type: str, system: str, value: str,
    *, lock: bool = False,
) -> OutboxRow | None:  # fmt: skip
    stmt = select(OutboxRow).where(
        OutboxRow.connection == connection,
        OutboxRow.target == target,
        OutboxRow.resource_type == resource_type,
        OutboxRow.identifier_system == system,
        OutboxRow.identifier_value == value,
    )
    if lock:
        # FOR UPDATE (a no-op on SQLite, which serialises writers): waits for a writer that is
        # recording an outcome, then reads what it committed. Refreshes a row this session
        # already holds, or the read would keep its stale attributes.
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    return session.scalar(stmt)


def enqueue(
    session: Session,
    connection: str,
    target: str,
    identifier: tuple[str, str],
    payload: dict[str, Any],
) -> OutboxRow:
    system, value = identifier
    resource_type = payload["resourceType"]
    key = (connection, target, resource_type, system, value)
    row = _by_key(session, *key)
    now = _now()
    if row is None:
        fresh = OutboxRow(
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
        try:
            # Processes drafting different patients both queue the model's Device and card:
            # one insert wins, the other finds its row and carries on as a re-enqueue.
            with session.begin_nested():
                session.add(fresh)
                session.flush()
            return fresh
        except IntegrityError:
            row = _by_key(session, *key, lock=True)
            if row is None:
                raise
    elif row.payload != payload or is_superseded(row):
        # Read again, locked: a writer recording its outcome (`mark_sent`, which compares the
        # payload it sent) must either finish first, so this sees its DONE and sets the row
        # back to pending, or wait for this commit and see the new payload. Unchanged payloads
        # take no lock, so drafts that all queue the model's Device do not queue behind it.
        row = _by_key(session, *key, lock=True)
        if row is None:  # deleted meanwhile; nothing deletes outbox rows today
            raise RuntimeError(f"outbox row {key} vanished while enqueuing")
    # A superseded note version queued again, even as it was (a change undone, then made
    # again): the note needs it now.
    if row.payload != payload or is_superseded(row):
        if row.status == OutboxStatus.FAILED:
            # A refused note's next payload (a decision, a re-draft): its Provenance, failed
            # waiting on it, comes back with it. A version failed waiting on it stays failed:
            # this payload is a later change of the note than that version.
            _back_to_pending(_failed_waiting(session, [row], versions=False), now)
        # A pending row keeps its time: it may be claimed and in flight in another process
        # (that writer sees the payload changed and leaves the row pending; see `mark_sent`).
        waiting = row.status == OutboxStatus.PENDING and row.next_attempt_at > now
        row.payload = payload
        row.status = OutboxStatus.PENDING
        row.attempts = 0
        row.last_error = None
        row.next_attempt_at = row.next_attempt_at if waiting else now
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


def claim(session: Session, row_id: int, now: datetime | None = None) -> OutboxRow | None:
    """Take a due row for this process, or None when it is not due or another process has it.

    One UPDATE with the due condition in its WHERE clause: on PostgreSQL the row lock makes a
    concurrent claimer wait and then see the moved `next_attempt_at` (no match); SQLite
    serialises writers. Either way exactly one claimer gets rowcount 1.
    """
    now = now or _now()
    # One `now` for both columns: `in_flight` recognises a claim by their exact distance.
    result = session.execute(
        update(OutboxRow)
        .where(
            OutboxRow.id == row_id,
            OutboxRow.status == OutboxStatus.PENDING,
            OutboxRow.next_attempt_at <= now,
        )
        .values(next_attempt_at=now + CLAIM_LEASE, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) != 1:
        return None
    row = session.get(OutboxRow, row_id, populate_existing=True)
    return row


def release(session: Session, row: OutboxRow) -> None:
    """Give a claimed row back untried: due again now (it waits on another write)."""
    row.next_attempt_at = _now()
    session.flush()


def mark_sent(
    session: Session,
    row: OutboxRow,
    sent: dict[str, Any],
    server_id: str | None,
    server_version: str | None,
) -> bool:
    """Record a write that succeeded with payload `sent`; True when the row is done.

    If the payload changed while the write was in flight (a later session updated the Task),
    the server id is kept and the row stays pending, due now, so the newer payload is sent as
    an update: no change is lost between a claim and its outcome.
    """
    if row.payload == sent:
        mark_done(session, row, server_id, server_version)
        return True
    row.server_id = server_id or row.server_id
    row.server_version = server_version
    row.next_attempt_at = _now()
    row.updated_at = _now()
    session.flush()
    return False


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


def never_sent(row: OutboxRow) -> bool:
    """Whether no attempt at this row's payload can have reached its server: pending, not tried
    since it was queued (or given back untried, `release`), and no writer holds it.

    Only its current payload: an enqueue of a changed payload starts the count again, so an
    earlier payload of the row may be on the server (the writer recognises that by search).
    """
    return (
        row.status == OutboxStatus.PENDING
        and row.attempts == 0
        and row.last_error is None
        and not _in_flight(row, _now())
        # A claim counts no attempt: its mark, even with the lease expired (the writer died,
        # maybe after its request landed), says the payload may have been sent.
        and row.next_attempt_at - row.updated_at != CLAIM_LEASE
    )


def waits_on(row_id: int) -> str:
    """The error of a write failed because row `row_id`, which it points at, failed."""
    return f"waits on outbox row {row_id}, which failed"


# The error of a chart note version that a later one replaced before it reached the chart.
_SUPERSEDED = "superseded by outbox row "
LATER_VERSION = "a later version of this note"


def supersede(session: Session, row: OutboxRow, by: OutboxRow, why: str = LATER_VERSION) -> None:
    """Fail for good a chart note never sent (or refused) that row `by` now carries (`why`: a
    later version of the note, `pipeline.note_versions`). Sent after all, its stale text would
    be another current note in the chart, so `requeue` leaves it and its Provenance failed. An
    enqueue of a new payload (the row reused for a later change of the note) clears this."""
    error = f"{_SUPERSEDED}{by.id}, {why}: stale, never sent again (nothing to retry)"
    row.status, row.last_error = OutboxStatus.FAILED, error
    # Its Provenance would fail waiting on it, a failure for operators to chase: stale with it.
    if row.target == CHART and row.resource_type == "DocumentReference":
        key = f"{row.identifier_system}|{row.identifier_value}"
        provenance = _by_key(session, row.connection, CHART, "Provenance", NOTE_PROVENANCE, key,
                             lock=True)  # fmt: skip
        if provenance is not None and provenance.status != OutboxStatus.DONE:
            provenance.status, provenance.last_error = OutboxStatus.FAILED, error
            provenance.updated_at = _now()
    row.updated_at = _now()
    session.flush()


def _in_flight(row: OutboxRow, now: datetime) -> bool:
    """Whether a pending row's lease is a live claim (a writer is sending it), not a backoff.

    A claim sets `next_attempt_at` exactly CLAIM_LEASE after `updated_at`; a later enqueue
    keeps the lease and clears `last_error`. A retry's backoff (`mark_retry`) always has a
    `last_error`. So a lease with no error, or at that exact distance, may be a claim: left
    alone (at worst a backoff waits its course), never pulled forward to be sent twice.
    """
    if row.status != OutboxStatus.PENDING or row.next_attempt_at <= now:
        return False
    return row.last_error is None or row.next_attempt_at - row.updated_at == CLAIM_LEASE


def _rows(
    session: Session, status: OutboxStatus, connection: str | None, ids: Sequence[int],
    *, lock: bool = False, superseded: bool = True,
) -> list[OutboxRow]:  # fmt: skip
    stmt = select(OutboxRow).where(OutboxRow.status == status).order_by(OutboxRow.id)
    if not superseded:
        # Not even locked: the draft step and a review lock a note's versions, superseded
        # ones too, in their own order; a requeue waiting on one could deadlock with them.
        stmt = stmt.where(
            or_(OutboxRow.last_error.is_(None), ~OutboxRow.last_error.startswith(_SUPERSEDED))
        )
    if connection is not None:
        stmt = stmt.where(OutboxRow.connection == connection)
    if ids:
        stmt = stmt.where(OutboxRow.id.in_(list(ids)))
    if lock:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    return list(session.scalars(stmt))


def _waiting_on(session: Session, note: OutboxRow, versions: bool) -> list[OutboxRow]:
    """The failed rows that point at chart note `note`: its Provenance, and with `versions`
    the note's next version (`relatesTo`) failed waiting on it."""
    if note.target != CHART or note.resource_type != "DocumentReference":
        return []
    provenance = and_(
        OutboxRow.resource_type == "Provenance",
        OutboxRow.identifier_system == NOTE_PROVENANCE,
        OutboxRow.identifier_value == f"{note.identifier_system}|{note.identifier_value}",
    )
    stmt = select(OutboxRow).where(
        OutboxRow.connection == note.connection,
        OutboxRow.target == CHART,
        OutboxRow.status == OutboxStatus.FAILED,
        or_(provenance, OutboxRow.last_error == waits_on(note.id)) if versions else provenance,
    )
    return list(session.scalars(stmt.order_by(OutboxRow.id).with_for_update()))


def _failed_waiting(
    session: Session, notes: Sequence[OutboxRow], *, versions: bool = True
) -> list[OutboxRow]:
    """What failed waiting on `notes`, transitively: a note's next version waits on it, and
    the version after on that one; each one's Provenance on it."""
    todo, seen, found = list(notes), {note.id for note in notes}, []
    while todo:
        for row in _waiting_on(session, todo.pop(), versions):
            if row.id not in seen:
                seen.add(row.id)
                found.append(row)
                todo.append(row)
    return found


def is_superseded(row: OutboxRow) -> bool:
    """Whether `row` is a stale note version (or its Provenance), failed for good (`supersede`)."""
    return row.status == OutboxStatus.FAILED and (row.last_error or "").startswith(_SUPERSEDED)


def _stale(session: Session, rows: Sequence[OutboxRow]) -> list[OutboxRow]:
    """The failed rows among `rows` that `requeue` leaves: superseded note versions (`supersede`)
    and the Provenance of one (it would only fail again, waiting on its note)."""
    out = []
    for row in rows:
        note: OutboxRow | None = row
        if row.identifier_system == NOTE_PROVENANCE and row.target == CHART:
            system, _, value = row.identifier_value.partition("|")
            note = _by_key(session, row.connection, CHART, "DocumentReference", system, value)
        if row.status == OutboxStatus.FAILED and note is not None and is_superseded(note):
            out.append(row)
    return out


def _back_to_pending(rows: Sequence[OutboxRow], now: datetime) -> None:
    for row in rows:
        if is_superseded(row):
            row.last_error = None  # its note's row reused for a later version: not stale now
        row.status = OutboxStatus.PENDING
        row.attempts = 0
        row.next_attempt_at = now
        row.updated_at = now


def requeue(
    session: Session, connection: str | None = None, ids: Sequence[int] = (),
    status: OutboxStatus = OutboxStatus.FAILED,
) -> int:  # fmt: skip
    """Put rows back to pending, due now (after an operator fixed the cause).

    Failed rows by default, with what failed waiting on each note among them (its Provenance,
    its next version), less superseded note versions and their Provenance (`superseded`);
    `status=PENDING` pulls waiting retries forward, leaving rows a writer has claimed
    (`in_flight`). `ids` limits it to those rows; `connection` to one connection.
    """
    now = _now()
    # Locked: a claim racing this waits, then finds the row not due; or it committed first
    # and this sees its lease.
    rows = {row.id: row for row in _rows(session, status, connection, ids, lock=True,
                                         superseded=False)
            if not _in_flight(row, now)}  # fmt: skip
    if status == OutboxStatus.FAILED:
        for row in _stale(session, list(rows.values())):
            del rows[row.id]
        # Only its Provenance points at a superseded version: the later version that named
        # it took a new `relatesTo` when it superseded it (`note_versions.next_version`).
        rows.update((row.id, row) for row in _failed_waiting(session, list(rows.values())))
    _back_to_pending(list(rows.values()), now)
    session.flush()
    return len(rows)


def superseded(session: Session, connection: str | None = None, ids: Sequence[int] = ()) -> int:
    """How many failed rows are superseded note versions or their Provenance (and `requeue`
    leaves alone)."""
    return len(_stale(session, _rows(session, OutboxStatus.FAILED, connection, ids)))


def in_flight(session: Session, connection: str | None = None, ids: Sequence[int] = ()) -> int:
    """How many pending rows a writer has claimed (and `requeue` leaves alone)."""
    now = _now()
    return sum(_in_flight(row, now) for row in _rows(session, OutboxStatus.PENDING,
                                                      connection, ids))  # fmt: skip


def listing(
    session: Session, connection: str | None = None, status: OutboxStatus | None = None,
    limit: int = 100,
) -> list[OutboxRow]:  # fmt: skip
    """Rows for operators, newest change first."""
    stmt = select(OutboxRow).order_by(OutboxRow.updated_at.desc(), OutboxRow.id.desc())
    if connection is not None:
        stmt = stmt.where(OutboxRow.connection == connection)
    if status is not None:
        stmt = stmt.where(OutboxRow.status == status)
    return list(session.scalars(stmt.limit(limit)))


def counts(session: Session, connection: str | None = None) -> dict[str, int]:
    stmt = select(OutboxRow.status, func.count()).group_by(OutboxRow.status)
    if connection is not None:
        stmt = stmt.where(OutboxRow.connection == connection)
    return {str(status): int(n) for status, n in session.execute(stmt)}
