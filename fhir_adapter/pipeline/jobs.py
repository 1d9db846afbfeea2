"""The three ways work comes in — poll, push, backfill — each followed by the same steps.

Safe beside other processes on the same store: staging into a connection is serialised by a
lease (a poll skips while another process stages and goes on processing; a push or backfill
waits for it, so its resources are never dropped), patients leased one process at a
time (`runner`), outbox rows claimed one writer at a time (`writeback`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fhir_adapter.ehr.errors import CapabilityError, FhirError
from fhir_adapter.pipeline import fetch
from fhir_adapter.pipeline.runner import Progress, RunSummary, process_waiting, write_back
from fhir_adapter.pipeline.staging import StageSummary, stage
from fhir_adapter.pipeline.steps import Step
from fhir_adapter.quality.views import ViewsBusyError, materialise
from fhir_adapter.runtime import Runtime
from fhir_adapter.settings import SettingsError
from fhir_adapter.store import leases, outbox, work

log = logging.getLogger(__name__)

# The connection name work is filed under when no EHR is configured (local backfill, demo).
LOCAL = "local"
# How long staging waits for another process staging into the same connection.
STAGE_WAIT_S = 120.0


def stage_lease(connection: str) -> str:
    """Held while resources are staged into `connection` (by a poll, a push or a backfill)."""
    return f"stage:{connection}"


async def run_once(
    runtime: Runtime, progress: Progress | None = None, poll: bool = True
) -> RunSummary:
    """Poll every configured EHR, process what waits, write back; one pass.

    A configured target the EHR refuses (CapabilityError) stops the run: that is a start-up
    error to fix in the settings. An EHR that is down or refuses our credentials stops only its
    own connection; the others carry on and the error is in the summary.
    """
    summary = RunSummary()
    for conn in runtime.settings.ehr.values():
        try:
            clients = await runtime.clients(conn)
            if poll:
                lease = stage_lease(conn.name)
                async with leases.held(runtime.store, lease, runtime.owner) as polling:
                    if polling:
                        staged = await fetch.poll(clients.ehr, runtime.store, conn)
                        summary.encounters_new += staged.encounters_new
            await _process(runtime, conn.name, summary, progress)
        except CapabilityError:
            raise
        except FhirError as exc:
            log.error("connection %s: %s", conn.name, exc)
            summary.connections_failed += 1
            summary.errors.append(f"connection {conn.name}: {type(exc).__name__}: {exc}")
    await asyncio.to_thread(runtime.store.refresh_statistics)
    await refresh_views(runtime, summary)
    return summary


async def refresh_views(runtime: Runtime, summary: RunSummary) -> None:
    """The quality views, brought up to date after a pass that changed something. Another
    process refreshing them is fine (its refresh reads the same changes); a failure is logged
    and left to the next pass: the views are a copy, and the pass's work is done."""
    changed = summary.encounters_processed or summary.writes_done or summary.observations
    if not runtime.settings.quality.refresh_views or not changed:
        return
    try:
        await asyncio.to_thread(materialise, runtime.store)
    except ViewsBusyError:
        log.info("quality views: another process is refreshing them")
    except Exception:
        log.exception("quality views: refresh failed; `homework-fhir quality views` retries it")


async def _process(
    runtime: Runtime, name: str, summary: RunSummary, progress: Progress | None
) -> None:
    try:
        kwargs = {"progress": progress} if progress else {}
        await process_waiting(runtime, name, summary, **kwargs)
    finally:
        # Whatever was drafted before a failure is still written back; when the process is
        # being stopped (Ctrl-C, SIGTERM: the task is cancelled) the outbox keeps it for the
        # next run instead, so that stopping never waits on the EHR.
        task = asyncio.current_task()
        if task is None or not task.cancelling():
            await write_back(runtime, name, summary)


async def stage_resources(
    runtime: Runtime, resources: Iterable[dict[str, Any]], connection: str | None = None
) -> tuple[str, StageSummary]:
    """Stage pushed or exported resources under their connection; returns (name, summary).

    `connection` names the EHR they came from (for write-back); None with no EHR configured
    files them under "local" and keeps the results in our store.
    """
    settings = runtime.settings
    conn = settings.connection(connection) if connection else None
    if conn is None and len(settings.ehr) == 1:
        conn = next(iter(settings.ehr.values()))
    elif conn is None and settings.ehr:
        raise SettingsError(
            f"{len(settings.ehr)} EHR connections are configured; name the one these resources "
            f"came from ({', '.join(sorted(settings.ehr))})"
        )
    name = conn.name if conn else LOCAL
    if conn is not None:
        await runtime.clients(conn)  # a connection that cannot work fails before staging
    store = runtime.store
    def staged_in_session() -> StageSummary:
        with store.session() as session:
            return stage(session, name, resources, Step.DETECT)

    async with leases.held(store, stage_lease(name), runtime.owner, wait_s=STAGE_WAIT_S):
        # A large push is many rows to write: off the event loop, which serves the API.
        staged = await asyncio.to_thread(staged_in_session)
    return name, staged


async def ingest_resources(
    runtime: Runtime,
    resources: Iterable[dict[str, Any]],
    connection: str | None = None,
    progress: Progress | None = None,
) -> RunSummary:
    """Stage pushed or exported resources, then process and write back (a backfill)."""
    name, staged = await stage_resources(runtime, resources, connection)
    summary = RunSummary(encounters_new=staged.encounters_new)
    await _process(runtime, name, summary, progress)
    await asyncio.to_thread(runtime.store.refresh_statistics)
    await refresh_views(runtime, summary)
    return summary


@dataclass(frozen=True)
class IngestAccepted:
    job_id: str
    staged: StageSummary


async def accept_ingest(
    runtime: Runtime, resources: Iterable[dict[str, Any]], connection: str | None = None
) -> IngestAccepted:
    """Stage a push and start processing it in the background; returns at once with the id
    of its status (`ingest_status`). Processing is the same as a run's, for the connection."""
    name, staged = await stage_resources(runtime, resources, connection)

    def created() -> str:
        with runtime.store.session() as session:
            return work.create_ingest_job(session, name, staged.encounters, staged.as_dict())

    job_id = await asyncio.to_thread(created)

    async def process() -> None:
        summary = RunSummary()
        await _process(runtime, name, summary, None)
        log.info("ingest processing of %s: %s", name,
                 {k: v for k, v in summary.as_dict().items() if k != "errors"})  # fmt: skip

    if runtime.scheduler is not None:
        await runtime.scheduler(name)  # jobs for the workers
    else:
        runtime.kick(f"process:{name}", process)
    return IngestAccepted(job_id, staged)


# Where an encounter's processing has ended, for the status of a push.
FINAL_STEPS = frozenset({Step.DONE, Step.SKIPPED, Step.FAILED})


def ingest_status(runtime: Runtime, job_id: str) -> dict[str, Any] | None:
    """What became of a push's encounters: counts per step and whether all are final; None
    for an unknown id."""
    with runtime.store.session() as session:
        job = work.ingest_job(session, job_id)
        if job is None:
            return None
        steps = work.steps_of(session, job.connection, job.encounters)
        writes = outbox.counts(session, job.connection)
    by_step: dict[str, int] = {}
    for step in steps.values():
        by_step[step] = by_step.get(step, 0) + 1
    pending = writes.get(outbox.OutboxStatus.PENDING, 0)
    return {
        "encounters": len(job.encounters),
        "by_step": dict(sorted(by_step.items())),
        # The connection's writes: a push is complete once its encounters are final and
        # nothing waits to be written (a failing EHR keeps it incomplete, as it should).
        "writes_pending": pending,
        "writes_failed": writes.get(outbox.OutboxStatus.FAILED, 0),
        "complete": all(step in FINAL_STEPS for step in steps.values()) and pending == 0,
        "staged": job.staged,
    }
