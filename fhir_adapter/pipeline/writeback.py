"""Drain the outbox: each queued write reaches its FHIR server exactly once in effect.

- care-plan store: PUT Type/id. The id derives from the business identifier, so a repeated
  PUT is an update of the same resource, never a duplicate.
- chart (the EHR): no conditional create, so search by identifier first. Found and never
  confirmed by us: an earlier attempt landed before a crash, so it is recorded, not re-sent.
  Found and ours (a later change, e.g. an updated note): updated with If-Match. Found but
  an earlier version of the note (another `masterIdentifier`, or other attachments: the
  payload changed after an earlier one landed unconfirmed): updated too, with If-Match; where
  the vendor refuses the update, a reviewed version is created as a new note replacing it, a
  drafted one fails (as its update would). Not found: created. A changed note (reviewed, or
  drafted again) for a vendor that refuses DocumentReference update is queued under its
  version's key (`masterIdentifier`, which the `identifier` search also matches;
  `note_versions`), so it is created beside the note it replaces (`relatesTo`), never
  recorded as that note; a version queued before the one it replaces had its EHR id names
  that one by identifier and waits for it, as a note's Provenance waits.
A temporary failure (429/5xx/network, still failing after the client's bounded retries)
leaves the row pending with a growing delay; a fatal one (400/403/422, a vendor rule) marks it
failed: kept, with the error, for an operator to fix and requeue. Nothing is dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from sqlalchemy.orm import Session

from fhir_adapter.ehr.client import FhirClient
from fhir_adapter.ehr.errors import (
    AmbiguousMatchError,
    AuthError,
    CapabilityError,
    FatalFhirError,
    FhirError,
    TemporaryFhirError,
    VendorRuleError,
    VersionConflictError,
)
from fhir_adapter.metrics import WRITES
from fhir_adapter.store import Store, outbox
from fhir_adapter.store.models import OutboxRow
from fhir_adapter.store.outbox import CARE_PLAN_STORE, CHART, ID_SYSTEM, NOTE_PROVENANCE

log = logging.getLogger(__name__)

# Delay before retrying a temporarily failed write: 30 s doubling per attempt, at most 1 h, so
# an EHR outage of a day costs a few dozen attempts per write, not thousands.
FIRST_RETRY_S = 30.0
MAX_RETRY_S = 3600.0


@dataclass
class FlushSummary:
    done: int = 0
    retrying: int = 0
    failed: int = 0


def retry_delay(attempts: int, retry_after: float | None = None) -> timedelta:
    delay = min(MAX_RETRY_S, FIRST_RETRY_S * 2 ** max(0, attempts))
    return timedelta(seconds=max(delay, retry_after or 0.0))


def _version(resource: Mapping[str, Any]) -> str | None:
    version = (resource.get("meta") or {}).get("versionId")
    return str(version) if version is not None else None


@dataclass(frozen=True)
class _Outcome:
    kind: Literal["done", "retry", "failed"]
    error: str = ""
    delay: timedelta = timedelta(0)
    stored: Mapping[str, Any] = field(default_factory=dict)


class NotYet(Exception):
    """The write depends on another one that has not landed yet; try again next flush."""


class WaitsOnFailed(Exception):
    """The write depends on another one that failed: it cannot land until that one is retried."""

    def __init__(self, row_id: int) -> None:
        super().__init__(outbox.waits_on(row_id))
        self.row_id = row_id


def _written_note(session: Session, connection: str, system: str, value: str) -> str:
    """The EHR reference of the chart note queued under `system|value`, once written."""
    note = outbox._by_key(session, connection, CHART, "DocumentReference", system, value)
    if note is not None and note.status == outbox.OutboxStatus.FAILED:
        raise WaitsOnFailed(note.id)
    if note is None or note.status != outbox.OutboxStatus.DONE or not note.server_id:
        raise NotYet
    return f"DocumentReference/{note.server_id}"


def _note_reference(session: Session, row: OutboxRow) -> str | None:
    """The note `row` points at, as the EHR knows it: a note's Provenance (its target), or a
    note's next version queued before the version it replaces was written (its `relatesTo`
    names that one by identifier). None when `row` points at no note or already has its id."""
    if row.identifier_system == NOTE_PROVENANCE:
        system, _, value = row.identifier_value.partition("|")
        return _written_note(session, row.connection, system, value)
    if row.target == CHART and row.resource_type == "DocumentReference" and not row.server_id:
        for relation in row.payload.get("relatesTo") or ():
            target = relation.get("target") or {}
            ident = target.get("identifier")
            if ident and not target.get("reference"):
                return _written_note(session, row.connection, ident["system"], ident["value"])
    return None


def _replacing(payload: Mapping[str, Any], note_ref: str) -> dict[str, Any]:
    """`payload` with the note it replaces, named by identifier when queued, now by id."""
    relations = [
        {**r, "target": {"reference": note_ref}}
        if (r.get("target") or {}).get("identifier") and not r["target"].get("reference")
        else r
        for r in payload.get("relatesTo") or ()
    ]
    return {**payload, "relatesTo": relations}


async def _write_note_provenance(
    client: FhirClient, row: OutboxRow, note_ref: str
) -> dict[str, Any] | None:
    """The note's Provenance: searched by target first, since Provenance has no identifier
    (hence Provenance search-type in `ehr.capabilities.CHART_NEEDS`)."""
    async for found in client.search("Provenance", [("target", note_ref)], max_pages=1):
        return found
    return await client.create({**row.payload, "target": [{"reference": note_ref}]})


async def _write(
    client: FhirClient, row: OutboxRow, replaces: str | None = None
) -> dict[str, Any] | None:
    # meta stays: it carries the AI security label and profiles; servers own versionId.
    payload = dict(row.payload) if replaces is None else _replacing(row.payload, replaces)
    if row.target == CARE_PLAN_STORE:
        return await client.update(payload)
    if row.server_id is not None:
        current = await client.read(row.resource_type, row.server_id)
        return await client.update({**payload, "id": row.server_id}, if_match=_version(current))
    if row.identifier_system != ID_SYSTEM:
        refusal = client.vendor.refusal(row.resource_type, "update")
        found = await _landed(client, row, payload, refusal is None)
        if found is not None:
            if not _earlier_version(payload, found):
                return found  # this payload landed, unconfirmed
            if refusal is None:
                # The payload changed after an earlier one landed unconfirmed: update that one.
                return await client.update({**payload, "id": found["id"]},
                                           if_match=_version(found))  # fmt: skip
            if not payload.get("masterIdentifier"):
                # A drafted note changed after it landed: refused, as its update would be.
                raise VendorRuleError(
                    f"{client.name}: {row.resource_type} update: {refusal} "
                    "(an earlier version of this note is in the chart)"
                )
            # A reviewed version: a new note replacing the one found (a retry finds it by its
            # `masterIdentifier`: `_landed`).
            ref = f"{row.resource_type}/{found['id']}"
            return await client.create(
                {**payload, "relatesTo": [{"code": "replaces", "target": {"reference": ref}}]}
            )
    return await client.create(payload)


async def _landed(
    client: FhirClient, row: OutboxRow, payload: Mapping[str, Any], updatable: bool
) -> dict[str, Any] | None:
    """What an earlier attempt left on the server, found by the row's key. A reviewed version
    created beside the note it replaces (vendor refuses update) shares that key with it: a
    retry finds both, so it looks for its own `masterIdentifier` then (one request more only
    then: a write stays within two requests, inside its claim)."""
    try:
        return await client.search_by_identifier(
            row.resource_type, row.identifier_system, row.identifier_value
        )
    except AmbiguousMatchError as exc:
        version = payload.get("masterIdentifier") or {}
        system, value = version.get("system"), version.get("value")
        if updatable or not (system and value) or (system, value) == (
            row.identifier_system, row.identifier_value,
        ):  # fmt: skip
            raise
        found = await client.search_by_identifier(row.resource_type, system, value)
        if found is None:
            raise exc
        return found


def _attachments(resource: Mapping[str, Any]) -> list[str]:
    return sorted(
        "".join(str(c["attachment"]["data"]).split())
        for c in resource.get("content") or ()
        if isinstance(c, Mapping) and (c.get("attachment") or {}).get("data")
    )


def _earlier_version(payload: Mapping[str, Any], found: Mapping[str, Any]) -> bool:
    """Whether `found` (under the row's key) is an earlier version of the note `payload` is:
    another `masterIdentifier`, or, for a drafted note (none), attachment data the payload does
    not have. Recording it would lose `payload`. A server may return only some attachments
    inline (others as a Binary url) or fewer of them: what it returns can only say "earlier"
    where it differs, and one that returns no data cannot tell: kept."""
    if found.get("id") is None:
        return False
    wanted = payload.get("masterIdentifier")
    if wanted is not None:
        have = found.get("masterIdentifier") or {}
        return (have.get("system"), have.get("value")) != (wanted.get("system"),
                                                           wanted.get("value"))  # fmt: skip
    return not set(_attachments(found)) <= set(_attachments(payload))


async def _attempt(client: FhirClient, row: OutboxRow, note_ref: str | None) -> _Outcome:
    """One write; the outcome to record. Runs outside any database transaction."""
    try:
        if row.identifier_system == NOTE_PROVENANCE:
            # A note's Provenance targets its note: `_send` resolved it or sent nothing.
            assert note_ref is not None
            stored = await _write_note_provenance(client, row, note_ref)
        else:
            stored = await _write(client, row, note_ref)
    except TemporaryFhirError as exc:
        return _Outcome("retry", str(exc), retry_delay(row.attempts, exc.retry_after))
    except (AuthError, VersionConflictError) as exc:
        # Auth: token endpoint trouble or a revoked key; a conflict: re-read next time.
        return _Outcome("retry", str(exc), retry_delay(row.attempts))
    except (FatalFhirError, CapabilityError) as exc:
        log.error("write of %s %s to %s failed: %s",
                  row.resource_type, row.identifier_value, row.target, exc)  # fmt: skip
        return _Outcome("failed", str(exc))
    except FhirError as exc:
        return _Outcome("retry", str(exc), retry_delay(row.attempts))
    return _Outcome("done", stored=stored or {})


# Writes in flight at once per flush. The EHR client pools at most `max_connections` (10 by
# default) and retries 429s itself; a handful keeps a busy EHR's queue short while most of a
# write's time is spent waiting on the network (measured: bench/README.md, pipeline load).
WRITE_CONCURRENCY = 4
# Passes of one flush over what is due: a write a pass leaves due is sent by the next.
MAX_PASSES = 4
# Writes go out in waves, each wave's writes concurrently: what others point at first
# (the model's Device and card, the CarePlan, the note), then the Tasks (they point at the
# CarePlan), then every Provenance (it points at all of them, and the note's at the note's
# server id).
WAVES: tuple[frozenset[str], ...] = (frozenset({"Task"}), frozenset({"Provenance"}))


def _wave(resource_type: str) -> int:
    for number, types in enumerate(WAVES, start=1):
        if resource_type in types:
            return number
    return 0


async def flush(
    store: Store,
    connection: str,
    clients: Mapping[str, FhirClient],
    concurrency: int = WRITE_CONCURRENCY,
) -> FlushSummary:
    """Send every due write of `connection` that no other process has claimed.

    Each write is claimed in one short transaction (`outbox.claim`: the row is leased to this
    process), sent with no transaction open (retries can take minutes), and its outcome
    recorded in another. Rows another process holds are left to it. Up to `concurrency` writes
    are in flight at once, wave by wave (`WAVES`).
    """
    summary = FlushSummary()
    slots = asyncio.Semaphore(concurrency)
    again: list[int] = []

    async def one(row_id: int) -> None:
        async with slots:
            if not await _send(store, row_id, clients, summary):
                again.append(row_id)

    # A write this pass left due (its payload changed while it was in flight, or it waited on
    # another write) is sent by this process, now: no other process may flush after it.
    for attempt in range(MAX_PASSES):
        if attempt:
            await asyncio.sleep(0.2 * attempt)  # let a write another process holds land
        with store.session() as session:
            due = [(r.id, r.resource_type) for r in outbox.due(session, connection, limit=10_000)]
        again.clear()
        for wave in range(len(WAVES) + 1):
            await asyncio.gather(*(one(i) for i, rtype in due if _wave(rtype) == wave))
        if not again:
            break
    return summary


async def _send(
    store: Store, row_id: int, clients: Mapping[str, FhirClient], summary: FlushSummary
) -> bool:
    """Claim, send and record one write; False when it is left due now (to send again)."""
    with store.session() as session:
        row = outbox.claim(session, row_id)
        if row is None:
            return True  # another process has it, or it is no longer due
        client = clients.get(row.target)
        if client is None:
            outbox.mark_failed(session, row, f"no client configured for target {row.target}")
            summary.failed += 1
            return True
        try:
            note_ref = _note_reference(session, row)
        except NotYet:
            outbox.release(session, row)
            return False
        except WaitsOnFailed as exc:
            # Failed too, so operators see it; `outbox.requeue` of the note brings it back.
            log.warning("outbox row %s %s", row.id, exc)
            outbox.mark_failed(session, row, str(exc))
            summary.failed += 1
            return True
    # `row` stays readable detached (the store's sessions do not expire on commit).
    outcome = await _attempt(client, row, note_ref)
    WRITES.labels(outcome=outcome.kind).inc()
    with store.session() as session:
        # Locked: an enqueue of a newer payload either committed first (seen here, so the row
        # stays pending) or waits for this commit and then sets the row back to pending.
        current = session.get(OutboxRow, row_id, with_for_update=True, populate_existing=True)
        if current is None:
            return True
        if outcome.kind == "done":
            stored = outcome.stored
            server_id = str(stored["id"]) if stored.get("id") else None
            if not outbox.mark_sent(session, current, row.payload, server_id, _version(stored)):
                return False  # changed in flight: the newer payload goes out next pass
            summary.done += 1
        elif outcome.kind == "retry":
            outbox.mark_retry(session, current, outcome.error, outcome.delay)
            summary.retrying += 1
        elif current.payload != row.payload:
            # The refused payload was replaced while in flight: the newer one is tried before
            # anything is marked failed.
            log.warning("outbox row %s: an older payload was refused; sending the newer one",
                        row_id)  # fmt: skip
            outbox.release(session, current)
            return False
        else:
            outbox.mark_failed(session, current, outcome.error)
            summary.failed += 1
    return True
