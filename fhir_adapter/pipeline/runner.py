"""Run the steps for every waiting encounter of a connection, patient by patient, in session
order, safely beside other processes doing the same.

A patient's sessions are processed by one process at a time (a lease in the store, renewed at
every step and expiring `PATIENT_LEASE` after a process dies), oldest
first, and a later session waits while an earlier one has not finished: a later session
settles the review status of the earlier sessions' homework, so it must see their Tasks.
Different patients can be taken by different processes; a patient another process holds is
left to it (`encounters_busy`).

A failed encounter is retried on the next pass, then with a growing delay; after
`MAX_ATTEMPTS` failures it is dead-lettered (step `failed`, kept with its error for
`homework-fhir work retry`), and the patient's later sessions go on without it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fhir_adapter.ehr.errors import FhirError
from fhir_adapter.metrics import STEP_SECONDS, timed
from fhir_adapter.pipeline import fetch
from fhir_adapter.pipeline.detect import detect
from fhir_adapter.pipeline.draft import draft
from fhir_adapter.pipeline.steps import Step, WorkItem
from fhir_adapter.pipeline.writeback import flush
from fhir_adapter.runtime import Runtime
from fhir_adapter.store import leases, work
from inference_server.errors import InferenceError
from mapping.errors import MappingError

log = logging.getLogger(__name__)

WAITING = (Step.FETCH, Step.DETECT, Step.DRAFT)
# Failures before an encounter is dead-lettered. The first retry is on the next pass; later
# ones wait RETRY_BASE * 4**(n-2): 5 min, 20 min, 80 min.
MAX_ATTEMPTS = 5
RETRY_BASE = timedelta(minutes=5)
# How long a patient stays leased without a renewal: each step renews it, so only a process
# that died leaves it held, and then only this long.
PATIENT_LEASE = timedelta(minutes=3)


def retry_at(attempts: int, now: datetime) -> datetime | None:
    """When an encounter that has failed `attempts` times is due again (None: next pass)."""
    if attempts <= 1:
        return None
    return now + RETRY_BASE * (1 << (2 * (attempts - 2)))


@dataclass
class RunSummary:
    """What one run did; printed by the CLI and returned by `POST /ingest`."""

    connections_failed: int = 0
    encounters_new: int = 0
    encounters_processed: int = 0
    encounters_skipped: int = 0
    encounters_failed: int = 0
    encounters_dead: int = 0  # failed MAX_ATTEMPTS times: set aside for an operator
    encounters_busy: int = 0  # their patient is being processed by another process
    homework_found: int = 0
    tasks_reviewed: int = 0
    tasks_not_reviewed: int = 0
    observations: int = 0
    writes_done: int = 0
    writes_retrying: int = 0
    writes_failed: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def failed(self) -> bool:
        """Anything an operator must look at (the CLI's exit status 1)."""
        return bool(self.connections_failed or self.encounters_failed or self.writes_failed)


Progress = Callable[[Iterable[str], int], Iterable[str]]


def _no_progress(items: Iterable[str], total: int) -> Iterable[str]:
    return items


class ModelUnavailableError(RuntimeError):
    """The model server stopped answering; the run stops, the rerun picks up where it was."""


def patient_lease(connection: str, patient: str) -> str:
    return f"patient:{connection}:{patient}"


def waiting_patients(runtime: Runtime, connection: str) -> list[str]:
    """Patients with waiting encounters, in the order of their earliest waiting session."""
    with runtime.store.session() as session:
        rows = work.encounters_at(session, connection, WAITING, limit=100_000)
        return list(dict.fromkeys(row.patient for row in rows))


async def process_waiting(
    runtime: Runtime, connection: str, summary: RunSummary, progress: Progress = _no_progress
) -> None:
    """Take every waiting encounter of `connection` as far as it goes."""
    patients = await asyncio.to_thread(waiting_patients, runtime, connection)
    for patient in progress(patients, len(patients)):
        await process_patient(runtime, connection, patient, summary)


async def process_patient(
    runtime: Runtime, connection: str, patient: str, summary: RunSummary
) -> bool:
    """Take the patient's waiting encounters as far as they go, in session order, holding the
    patient's lease; False (and `encounters_busy` counted) when another process holds it."""
    store = runtime.store
    name = patient_lease(connection, patient)
    async with leases.held(store, name, runtime.owner, ttl=PATIENT_LEASE) as mine:
        if not mine:
            with store.session() as session:
                waiting = work.patient_encounters(session, connection, patient, WAITING)
            summary.encounters_busy += len(waiting)
            return False
        await _process_patient(runtime, connection, patient, summary, name)
    return True


async def _process_patient(
    runtime: Runtime, connection: str, patient: str, summary: RunSummary, lease: str
) -> None:
    store = runtime.store
    with store.session() as session:
        # Read again under the lease: another process may have finished some meanwhile.
        waiting = work.patient_encounters(session, connection, patient, WAITING)
        pending = [(row.encounter, row.retry_at) for row in waiting]
    now = datetime.now(UTC)
    for encounter, due in pending:
        if due is not None and due > now:
            return  # an earlier session is backing off; the later ones wait for it
        item = WorkItem(connection, encounter)
        try:
            await _advance(runtime, item, summary)
        except InferenceError as exc:
            # Not the encounter's fault: recorded, not counted towards dead-lettering.
            _failed(runtime, item, f"model: {exc}", summary, counts=False)
            raise ModelUnavailableError(str(exc)) from exc
        except (FhirError, MappingError) as exc:
            if not _failed(runtime, item, f"{type(exc).__name__}: {exc}", summary):
                return
        except Exception as exc:
            # A bug, not bad data: keep going with other patients, keep the type (no PHI).
            log.exception("%s failed", encounter)
            if not _failed(runtime, item, f"unexpected {type(exc).__name__}", summary):
                return


def _failed(
    runtime: Runtime, item: WorkItem, error: str, summary: RunSummary, counts: bool = True
) -> bool:
    """Record a failure; True when the encounter was dead-lettered (later sessions may go on)."""
    summary.encounters_failed += 1
    summary.errors.append(f"{item.encounter}: {error}")
    now = datetime.now(UTC)
    with runtime.store.session() as session:
        row = work.get_encounter(session, item.connection, item.encounter)
        if row is None:
            return False
        if not counts:
            work.record_failure(session, row, error, count=False)
            return False
        work.record_failure(session, row, error)
        if row.attempts >= MAX_ATTEMPTS:
            work.dead_letter(session, row, Step.FAILED)
            summary.encounters_dead += 1
            log.error("%s dead-lettered after %d attempts at step %s",
                      item.encounter, row.attempts, row.state.get("failed_at"))  # fmt: skip
            return True
        row.retry_at = retry_at(row.attempts, now)
        return False


def _renew(runtime: Runtime, item: WorkItem) -> None:
    """Keep the patient's lease for the next step (a step takes well under PATIENT_LEASE)."""
    with runtime.store.session() as session:
        row = work.get_encounter(session, item.connection, item.encounter)
    if row is not None:
        leases.acquire(
            runtime.store, patient_lease(item.connection, row.patient), runtime.owner,
            PATIENT_LEASE,
        )  # fmt: skip


def _step(runtime: Runtime, item: WorkItem) -> Step | None:
    with runtime.store.session() as session:
        row = work.get_encounter(session, item.connection, item.encounter)
        return None if row is None else Step(row.step)


async def _advance(runtime: Runtime, item: WorkItem, summary: RunSummary) -> None:
    # Database work off the event loop (in the API process it also answers health checks).
    await asyncio.to_thread(_renew, runtime, item)
    step = await asyncio.to_thread(_step, runtime, item)
    if step is None:
        return
    if step is Step.FETCH:
        with timed(STEP_SECONDS, step="fetch"):
            await fetch.fetch_inputs(runtime, item)
        await asyncio.to_thread(_renew, runtime, item)
    with timed(STEP_SECONDS, step="detect"):
        await detect(runtime, item)
    await asyncio.to_thread(_renew, runtime, item)
    with timed(STEP_SECONDS, step="draft"):
        # Building and validating the resources is CPU work: off the event loop (the API's).
        result = await asyncio.to_thread(draft, runtime, item)
    final = await asyncio.to_thread(_step, runtime, item) or Step.SKIPPED
    if final is Step.SKIPPED:
        summary.encounters_skipped += 1
    elif result is not None:
        summary.encounters_processed += 1
        summary.homework_found += result.tasks
        summary.tasks_reviewed += result.reviewed
        summary.tasks_not_reviewed += result.not_reviewed
        summary.observations += result.observations


async def write_back(runtime: Runtime, connection: str, summary: RunSummary) -> None:
    conn = runtime.connection(connection)
    if conn is None:
        return
    clients = await runtime.clients(conn)
    with timed(STEP_SECONDS, step="write"):
        result = await flush(runtime.store, connection, clients.targets())
    summary.writes_done += result.done
    summary.writes_retrying += result.retrying
    summary.writes_failed += result.failed
