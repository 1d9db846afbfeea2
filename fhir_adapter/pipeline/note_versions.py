"""Versions of the chart note where the EHR refuses DocumentReference update (Epic, Oracle
Health): a changed note that may already be in the chart goes out as a new note, `relatesTo`
replaces the version before it, queued under its own key (`SID_NOTE_VERSION`, its
`masterIdentifier`). The draft step (a session drafted again after its transcript was amended)
and the clinician's review (`smart.actions`) both queue their changed note so.

The drafted note's own row is keyed by `SID_NOTE`; each version's row carries that identifier
too, which is how `versions` finds them. The writer resolves a `relatesTo` that names a version
by key once that version has its EHR id (`writeback._note_reference`).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fhir_adapter.store import outbox
from fhir_adapter.store.models import OutboxRow
from fhir_adapter.store.outbox import CHART
from mapping.fhir.codes import SID_NOTE, SID_NOTE_VERSION
from mapping.fhir.identifiers import identifier, repeated_note_version_value

__all__ = ["in_chart_already", "next_version", "not_in_chart", "versioned", "versions"]

log = logging.getLogger(__name__)


def next_version(
    session: Session, connection: str, value: str, original: OutboxRow | None, fresh: str
) -> tuple[str, dict[str, Any]] | None:
    """For a vendor that refuses note update: the key (`masterIdentifier`) under which the
    changed note `value` is queued as a new note, and the note it replaces (`relatesTo`
    target); None while nothing of the note can be in the chart (it goes out as it is now,
    under `SID_NOTE`). `original` is the drafted note's row, read locked; `fresh` the key
    derived from the changed note's text.

    The latest version, if never sent (or refused), takes this one's place under its key, so
    the chart gets one new note, not one per change. One that may have been sent (in flight,
    or landed unconfirmed) is never reused: its key would find that note and this version
    would be recorded as it. Each version replaces the one before; one without its EHR id yet
    is named by its key, and the writer waits for the id (`writeback._note_reference`).
    """
    if original is None:
        return None
    # Locked, oldest first (as `outbox.requeue` locks): a writer claiming one now waits for
    # this change, then sends what it queued; those superseded here are failed under the lock.
    found = versions(session, connection, value, lock=True)
    if not found and not_in_chart(original):
        return None
    latest = found[-1] if found else None
    if latest is not None and not_in_chart(latest):
        # It replaces the newest earlier one that may be in the chart: one refused (or never
        # sent) never will be, and a version naming it would fail waiting on it.
        key = latest.identifier_value
        earlier = [original, *found[:-1]]
        before = next((r for r in reversed(earlier) if not not_in_chart(r)), None)
        if before is None:
            # Nothing of the note is in the chart: it goes out as it is now, under the drafted
            # note's key; every version queued since is stale, the latest too.
            _supersede(session, found, original)
            return None
        # Those between it and `before` are skipped: stale, never to be sent again.
        _supersede(session, earlier[earlier.index(before) + 1 :], latest)
    else:
        key, before = _unused(fresh, found), latest or original
    if before.server_id:
        return key, {"reference": f"DocumentReference/{before.server_id}"}
    return key, {"identifier": {"system": before.identifier_system,
                                "value": before.identifier_value}}  # fmt: skip


def in_chart_already(session: Session, rows: list[OutboxRow], note: dict[str, Any]) -> bool:
    """Whether the chart has `note`'s text: the newest of the note's rows (the drafted note's,
    then its versions oldest first, read locked) that may be in the chart carries it. The
    versions queued after that one (a change undone before it went out) are stale: sent, each
    would be a new note with a text the chart no longer has, so they are superseded."""
    current = next((row for row in reversed(rows) if not not_in_chart(row)), None)
    if current is None or current.payload.get("content") != note["content"]:
        return False
    _supersede(session, rows[rows.index(current) + 1 :], current,
               "the version in the chart, whose text the note has again")  # fmt: skip
    return True


def _supersede(
    session: Session, stale: list[OutboxRow], by: OutboxRow,
    why: str = outbox.LATER_VERSION,
) -> None:  # fmt: skip
    """Fail for good versions `by` now carries the note for (all not in the chart): an
    operator's retry, or a writer once the note they name lands, would send their older text
    as another current note (`outbox.supersede`)."""
    for row in stale:
        # One already stale stays as it was marked (by the change that made it so).
        if not_in_chart(row) and not outbox.is_superseded(row):
            log.info("outbox row %s superseded by row %s", row.id, by.id)
            outbox.supersede(session, row, by, why)


def _unused(fresh: str, found: list[OutboxRow]) -> str:
    """`fresh`, or one derived from it where an earlier version holds it (the same text again,
    e.g. an amendment undone): that key would find the earlier note and record this one as it,
    or update it, which the vendor refuses."""
    taken = {row.identifier_value for row in found}
    key, n = fresh, len(found)
    while key in taken:
        key, n = repeated_note_version_value(fresh, n), n + 1
    return key


def not_in_chart(row: OutboxRow) -> bool:
    """Whether this row's payload cannot be in the EHR: never sent, or refused. (An earlier
    payload of the drafted note's row may be: the writer finds it, `writeback._write`.)"""
    return not row.server_id and (
        outbox.never_sent(row) or row.status == outbox.OutboxStatus.FAILED
    )


def versions(
    session: Session, connection: str, value: str, *, lock: bool = False
) -> list[OutboxRow]:
    """The versions of the note `value` queued as new notes, oldest first; with `lock`, read
    locked (FOR UPDATE, in that order) and refreshed."""
    # A version's row is keyed by its own version; the note's identifier is only in its
    # payload. Only that part is read for every version of the connection (a note's payload
    # carries its text twice, base64), then the note's versions whole.
    keys = session.execute(
        select(OutboxRow.id, OutboxRow.payload["identifier"]).where(
            OutboxRow.connection == connection,
            OutboxRow.target == CHART,
            OutboxRow.resource_type == "DocumentReference",
            OutboxRow.identifier_system == SID_NOTE_VERSION,
        )
    )
    ids = [row_id for row_id, idents in keys
           if any(i.get("system") == SID_NOTE and i.get("value") == value
                  for i in idents or ())]  # fmt: skip
    if not ids:
        return []
    stmt = select(OutboxRow).where(OutboxRow.id.in_(ids)).order_by(OutboxRow.id)
    if lock:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    return list(session.scalars(stmt))


def versioned(note: dict[str, Any], key: str, replaces: dict[str, Any]) -> dict[str, Any]:
    """`note` as the new note queued under `key`, replacing the `relatesTo` target `replaces`."""
    return {
        **note,
        "masterIdentifier": identifier(SID_NOTE_VERSION, key),
        "relatesTo": [{"code": "replaces", "target": replaces}],
    }
