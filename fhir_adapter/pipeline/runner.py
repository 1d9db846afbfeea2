"""Run the steps for every waiting encounter of a connection, in session order.

Encounters are processed oldest session first, and a patient's later session waits while an
earlier one has not finished (it failed this run): a later session settles the review status
of the earlier sessions' homework, so it must see their Tasks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from fhir_adapter.connections import ConnectionClients
from fhir_adapter.ehr.errors import FhirError
from fhir_adapter.pipeline import fetch
from fhir_adapter.pipeline.detect import detect
from fhir_adapter.pipeline.draft import draft
from fhir_adapter.pipeline.steps import Step
from fhir_adapter.pipeline.writeback import flush
from fhir_adapter.settings import EhrConnection
from fhir_adapter.store import Store, outbox, work
from inference_server.client import Backend
from inference_server.errors import InferenceError
from mapping.errors import MappingError
from mapping.fhir.context import ModelInfo

log = logging.getLogger(__name__)

WAITING = (Step.FETCH, Step.DETECT, Step.DRAFT)


@dataclass
class RunSummary:
    """What one run did; printed by the CLI and returned by `POST /ingest`."""

    connections_failed: int = 0
    encounters_new: int = 0
    encounters_processed: int = 0
    encounters_skipped: int = 0
    encounters_failed: int = 0
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


Progress = Callable[[Iterable[str], int], Iterable[str]]


def _no_progress(items: Iterable[str], total: int) -> Iterable[str]:
    return items


class ModelUnavailableError(RuntimeError):
    """The model server stopped answering; the run stops, the rerun picks up where it was."""


async def process_waiting(
    store: Store,
    connection: str,
    conn: EhrConnection | None,
    clients: ConnectionClients | None,
    backend: Backend,
    model: ModelInfo,
    summary: RunSummary,
    progress: Progress = _no_progress,
) -> None:
    """Take every waiting encounter of `connection` as far as it goes."""
    with store.session() as session:
        rows = work.encounters_at(session, connection, WAITING, limit=100_000)
        patients = {row.encounter: row.patient for row in rows}
    blocked: set[str] = set()
    for encounter in progress(list(patients), len(patients)):
        patient = patients[encounter]
        if patient in blocked:
            continue
        try:
            await _advance(store, connection, conn, clients, backend, model, encounter, summary)
        except InferenceError as exc:
            _failed(store, connection, encounter, f"model: {exc}", summary)
            raise ModelUnavailableError(str(exc)) from exc
        except (FhirError, MappingError) as exc:
            _failed(store, connection, encounter, f"{type(exc).__name__}: {exc}", summary)
            blocked.add(patient)
        except Exception as exc:
            # A bug, not bad data: keep going with other patients, keep the type (no PHI).
            log.exception("%s failed", encounter)
            _failed(store, connection, encounter, f"unexpected {type(exc).__name__}", summary)
            blocked.add(patient)


def _failed(store: Store, connection: str, encounter: str, error: str, summary: RunSummary) -> None:
    summary.encounters_failed += 1
    summary.errors.append(f"{encounter}: {error}")
    with store.session() as session:
        row = work.get_encounter(session, connection, encounter)
        if row is not None:
            work.record_failure(session, row, error)


async def _advance(
    store: Store,
    connection: str,
    conn: EhrConnection | None,
    clients: ConnectionClients | None,
    backend: Backend,
    model: ModelInfo,
    encounter: str,
    summary: RunSummary,
) -> None:
    with store.session() as session:
        row = work.get_encounter(session, connection, encounter)
        if row is None:
            return
        step = Step(row.step)
    if step is Step.FETCH:
        if conn is None or clients is None:
            raise MappingError(f"{encounter} needs fetching but no EHR connection is configured")
        with store.session() as session:
            row = work.get_encounter(session, connection, encounter)
        assert row is not None
        await fetch.fetch_inputs(clients.ehr, store, conn, row)
    await detect(store, connection, encounter, backend)
    result = draft(store, connection, conn, encounter, model)
    with store.session() as session:
        row = work.get_encounter(session, connection, encounter)
        final = Step(row.step) if row is not None else Step.SKIPPED
    if final is Step.SKIPPED:
        summary.encounters_skipped += 1
    elif result is not None:
        summary.encounters_processed += 1
        summary.homework_found += result.tasks
        summary.tasks_reviewed += result.reviewed
        summary.tasks_not_reviewed += result.not_reviewed
        summary.observations += result.observations


async def write_back(
    store: Store, connection: str, clients: ConnectionClients, summary: RunSummary
) -> None:
    result = await flush(store, connection, clients.targets())
    summary.writes_done += result.done
    summary.writes_retrying += result.retrying
    summary.writes_failed += result.failed


def outbox_counts(store: Store, connection: str) -> dict[str, int]:
    with store.session() as session:
        return outbox.counts(session, connection)
