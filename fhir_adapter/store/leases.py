"""Named leases in the database: what keeps many processes on one store from doing one job twice.

A lease is a row (name, owner, expires_at). `acquire` takes it when it is free, expired or
already ours, by one conditional UPDATE (or an INSERT when the row does not exist yet), so
exactly one process wins a race on PostgreSQL and on SQLite alike. A process that dies leaves
its lease to expire; nothing waits on it forever.

Used for: one process at a time per patient (their sessions are processed in order and a later
session settles the earlier ones' Tasks), one poller at a time per connection, one stager at a
time per connection.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, or_, update
from sqlalchemy.exc import IntegrityError

from fhir_adapter.store.db import Store
from fhir_adapter.store.models import LeaseRow

DEFAULT_TTL = timedelta(minutes=10)


def process_owner() -> str:
    """A name for this process that no other process shares (host, pid, random)."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaseBusyError(RuntimeError):
    """Another process held the lease for longer than we were willing to wait."""


def acquire(
    store: Store, name: str, owner: str, ttl: timedelta = DEFAULT_TTL,
    now: datetime | None = None,
) -> bool:  # fmt: skip
    """Take or renew `name` for `owner` until now + ttl; False when another owner holds it."""
    now = now or datetime.now(UTC)
    with store.session() as session:
        result = session.execute(
            update(LeaseRow)
            .where(
                LeaseRow.name == name,
                or_(LeaseRow.owner == owner, LeaseRow.expires_at <= now),
            )
            .values(owner=owner, expires_at=now + ttl)
            .execution_options(synchronize_session=False)
        )
        if getattr(result, "rowcount", 0) == 1:
            return True
        if session.get(LeaseRow, name) is not None:
            return False
    try:
        with store.session() as session:
            session.add(LeaseRow(name=name, owner=owner, expires_at=now + ttl))
    except IntegrityError:  # another process inserted it first
        return False
    return True


def release(store: Store, name: str, owner: str) -> None:
    with store.session() as session:
        session.execute(delete(LeaseRow).where(LeaseRow.name == name, LeaseRow.owner == owner))


@asynccontextmanager
async def held(
    store: Store, name: str, owner: str, *, wait_s: float = 0.0,
    ttl: timedelta = DEFAULT_TTL,
) -> AsyncIterator[bool]:  # fmt: skip
    """Hold `name` for the block; yields False (and holds nothing) when another process has it.

    With `wait_s`, wait up to that long for it (polling), then raise LeaseBusyError.
    """
    # Off the event loop: a write can wait on the database's lock (SQLite's is one per file).
    deadline = asyncio.get_running_loop().time() + wait_s
    got = await asyncio.to_thread(acquire, store, name, owner, ttl)
    while not got and wait_s > 0:
        if asyncio.get_running_loop().time() >= deadline:
            raise LeaseBusyError(f"lease {name} is held by another process; try again later")
        await asyncio.sleep(0.2)
        got = await asyncio.to_thread(acquire, store, name, owner, ttl)
    try:
        yield got
    finally:
        if got:
            await asyncio.to_thread(release, store, name, owner)
