"""The pipeline on procrastinate: PostgreSQL jobs that `homework-fhir worker` replicas take.

Jobs (the step functions are the pipeline's own; a job is one unit of them):

- ``pipeline:poll`` (periodic, per connection, `queue.poll_cron`): poll the EHR, then defer one
  ``process_patient`` per patient with waiting sessions and one ``flush``.
- ``pipeline:process_patient`` (connection, patient): the patient's waiting sessions, oldest
  first. Deferred with ``lock`` = the patient (procrastinate runs jobs sharing a lock one at a
  time, in order) and ``queueing_lock`` = the patient (at most one waiting job per patient);
  the store's patient lease is taken inside as well, so `run --once` beside workers is safe.
  Then defers a ``flush``.
- ``pipeline:flush`` (connection): drains the connection's outbox; rows are claimed one
  writer at a time (`outbox.claim`).

A job that raises (the model server or PostgreSQL down, an EHR that refuses the connection, a
patient another process holds) is retried with exponential backoff (`RETRY`) and, after the
last attempt, kept by procrastinate with status ``failed``: the dead letter of the queue. A job
left ``doing`` by a worker that died (no heartbeat for 30 s) is put back by
``pipeline:retry_stalled``, every minute and whenever a worker starts. An encounter that fails on
its own data is handled by the pipeline itself (backoff, then step ``failed``; see
`pipeline.runner`), and its job succeeds.

The worker's `Runtime` (store, model, EHR clients) is opened once per process and reaches the
jobs through procrastinate's job context.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg
from procrastinate import App, Blueprint, JobContext, PsycopgConnector, RetryStrategy
from procrastinate.exceptions import AlreadyEnqueued, ConnectorException, UniqueViolation
from procrastinate.jobs import Job, Status
from sqlalchemy.engine import make_url

from fhir_adapter.pipeline import fetch
from fhir_adapter.pipeline.jobs import stage_lease
from fhir_adapter.pipeline.runner import (
    ModelUnavailableError,
    RunSummary,
    patient_lease,
    process_patient,
    waiting_patients,
    write_back,
)
from fhir_adapter.runtime import Runtime
from fhir_adapter.settings import Settings, SettingsError
from fhir_adapter.store import leases

log = logging.getLogger(__name__)

NAMESPACE = "pipeline"
# Up to 5 retries after the first run, waiting 5, 25, 125, 625, 3125 s (procrastinate:
# exponential_wait ** (attempts + 1), attempts from 0); a job whose 6th run fails is `failed`.
RETRY = RetryStrategy(max_attempts=5, exponential_wait=5)
# Advisory lock key for installing procrastinate's schema (one process at a time).
SCHEMA_LOCK_KEY = 0x686F6D65776F726C

def conninfo(database_url: str) -> str:
    """The libpq connection string of a SQLAlchemy PostgreSQL URL."""
    url = make_url(database_url)
    if not url.drivername.startswith("postgresql"):
        raise SettingsError(
            "the task queue needs PostgreSQL: set database_url to a postgresql+psycopg:// URL"
        )
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _runtime(context: JobContext) -> Runtime:
    runtime = context.additional_context.get("runtime")
    if not isinstance(runtime, Runtime):
        raise RuntimeError("job run outside `homework-fhir worker`: no runtime in its context")
    return runtime


def _app(context: JobContext) -> App:
    app = context.app
    assert app is not None
    return app


async def defer_patient(app: App, connection: str, patient: str) -> bool:
    """Queue the patient's processing; False when a job for them is already waiting."""
    key = patient_lease(connection, patient)
    try:
        await app.configure_task(
            f"{NAMESPACE}:process_patient", lock=key, queueing_lock=key
        ).defer_async(connection=connection, patient=patient)
    except AlreadyEnqueued:
        return False
    return True


async def defer_flush(app: App, connection: str) -> None:
    # Already waiting: that flush will send this work's writes too.
    with contextlib.suppress(AlreadyEnqueued):
        await app.configure_task(
            f"{NAMESPACE}:flush", queueing_lock=f"flush:{connection}"
        ).defer_async(connection=connection)


async def defer_poll(app: App, connection: str) -> None:
    """Queue a poll of `connection` now (the periodic one also runs on schedule)."""
    with contextlib.suppress(AlreadyEnqueued):
        await app.configure_task(
            f"{NAMESPACE}:poll", queueing_lock=f"poll:{connection}"
        ).defer_async(timestamp=0, connection=connection)


async def defer_waiting(app: App, runtime: Runtime, connection: str) -> int:
    """Queue every patient of `connection` with waiting sessions; returns how many were new."""
    queued = 0
    for patient in waiting_patients(runtime, connection):
        queued += await defer_patient(app, connection, patient)
    await defer_flush(app, connection)
    return queued


async def poll(context: JobContext, timestamp: int, connection: str) -> None:
    runtime = _runtime(context)
    conn = runtime.connection(connection)
    if conn is None:
        log.warning("poll of %s: no such connection in this worker's settings", connection)
        return
    clients = await runtime.clients(conn)
    async with leases.held(runtime.store, stage_lease(connection), runtime.owner) as polling:
        if polling:
            await fetch.poll(clients.ehr, runtime.store, conn)
    await defer_waiting(_app(context), runtime, connection)


class PatientBusyError(RuntimeError):
    """Another process holds the patient's lease (a `run --once` beside the workers, or a
    process that died and whose lease has not run out yet): the job is retried later."""


async def process_patient_job(context: JobContext, connection: str, patient: str) -> None:
    runtime = _runtime(context)
    summary = RunSummary()
    try:
        if not await process_patient(runtime, connection, patient, summary):
            raise PatientBusyError(f"{patient} of {connection} is being processed elsewhere")
    except ModelUnavailableError:
        raise  # retried with backoff; the patient's sessions wait where they are
    finally:
        await defer_flush(_app(context), connection)
    if summary.errors:
        log.warning("%s: %d encounter failures (see `homework-fhir work list`)",
                    connection, len(summary.errors))  # fmt: skip


async def flush(context: JobContext, connection: str) -> None:
    summary = RunSummary()
    await write_back(_runtime(context), connection, summary)
    if summary.writes_failed:
        log.error("%s: %d writes failed (see `homework-fhir outbox list`)",
                  connection, summary.writes_failed)  # fmt: skip


async def retry_stalled_jobs(app: App) -> int:
    """Jobs left `doing` by a worker that stopped sending heartbeats (killed, its node lost):
    back to `todo`, so their patient's lock is free again. Returns how many this call put
    back (others may have been put back by another process at the same moment)."""
    stalled = list(await app.job_manager.get_stalled_jobs())
    requeued = 0
    for job in stalled:
        requeued += await requeue_stalled(app, job)
    if requeued:
        log.warning("requeued %d jobs of workers that stopped", requeued)
    return requeued


async def requeue_stalled(app: App, job: Job) -> bool:
    """Put one stalled job back; False when another process got there first. Workers starting
    together (a rollout) and the periodic task all look for stalled jobs: each sees the same
    ones, and only the first may act on each."""
    assert job.id is not None
    try:
        try:
            await app.job_manager.retry_job(job)
        except UniqueViolation:
            # A newer job with the same queueing lock already waits (its patient was queued
            # again meanwhile) and will do this job's work: close this one, so that its lock
            # no longer blocks that one.
            await app.job_manager.finish_job_by_id_async(job.id, Status.ABORTED, False)
            log.warning("job %s of a stopped worker is superseded by a newer one", job.id)
    except ConnectorException as exc:
        if not _no_longer_doing(exc):
            raise
        return False
    return True


def _no_longer_doing(exc: ConnectorException) -> bool:
    """procrastinate's "Job was not found or not in 'doing' status": another process has
    requeued or closed the job since we read it."""
    return isinstance(exc.__cause__, psycopg.errors.RaiseException)


async def retry_stalled(context: JobContext, timestamp: int) -> None:
    await retry_stalled_jobs(_app(context))


def _blueprint() -> Blueprint:
    """Our tasks, on a blueprint of their own: procrastinate renames a blueprint's tasks when an
    app takes them, so each app (a process may open its runtime more than once) gets a new one."""
    tasks = Blueprint()
    tasks.task(name="poll", pass_context=True, retry=RETRY)(poll)
    tasks.task(name="process_patient", pass_context=True, retry=RETRY)(process_patient_job)
    tasks.task(name="flush", pass_context=True, retry=RETRY)(flush)
    tasks.task(name="retry_stalled", pass_context=True)(retry_stalled)
    return tasks


def make_app(settings: Settings) -> App:
    """The procrastinate app for `settings`: our tasks, and a periodic poll per connection."""
    app = App(connector=PsycopgConnector(conninfo=conninfo(settings.database_url)))
    app.add_tasks_from(_blueprint(), namespace=NAMESPACE)
    app.periodic(cron="* * * * *", periodic_id="stalled", queueing_lock="retry_stalled")(
        app.tasks[f"{NAMESPACE}:retry_stalled"]
    )
    task = app.tasks[f"{NAMESPACE}:poll"]
    for name in settings.ehr:
        app.periodic(
            cron=settings.queue.poll_cron,
            periodic_id=name,
            task_kwargs={"connection": name},
            queueing_lock=f"poll:{name}",
        )(task)
    return app


async def ensure_schema(app: App, database_url: str) -> None:
    """Install procrastinate's tables once (replicas starting together wait on a lock)."""
    async with await psycopg.AsyncConnection.connect(
        conninfo(database_url), autocommit=True
    ) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK_KEY,))
        try:
            cursor = await conn.execute("SELECT to_regclass('procrastinate_jobs')")
            found = await cursor.fetchone()
            if found is None or found[0] is None:
                await app.schema_manager.apply_schema_async()
                log.info("installed the task queue's tables")
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK_KEY,))


async def job_counts(app: App) -> dict[str, int]:
    """Jobs per (task, status), for operators and tests."""
    rows = await app.connector.execute_query_all_async(
        "SELECT task_name, status::text AS status, count(*) AS n "
        "FROM procrastinate_jobs GROUP BY 1, 2 ORDER BY 1, 2"
    )
    return {f"{r['task_name']} {r['status']}": int(r["n"]) for r in rows}


async def runnable_jobs(app: App) -> int:
    """Jobs waiting that could start now (not those scheduled later for a retry)."""
    row = await app.connector.execute_query_one_async(
        "SELECT count(*) AS n FROM procrastinate_jobs "
        "WHERE status = 'todo' AND (scheduled_at IS NULL OR scheduled_at <= now())"
    )
    return int(row["n"])


async def work_until_caught_up(app: App, runtime: Runtime, concurrency: int) -> None:
    """Run jobs until none is left to start, including those the jobs themselves defer
    (procrastinate's own `wait=False` stops at the first empty fetch, before a poll's
    follow-up jobs exist). Jobs another worker holds the lock of are waited for."""
    while True:
        await retry_stalled_jobs(app)
        await app.run_worker_async(
            concurrency=concurrency,
            wait=False,
            name=runtime.owner,
            additional_context={"runtime": runtime},
            install_signal_handlers=False,
        )
        if not await runnable_jobs(app):
            return
        await asyncio.sleep(0.5)  # the rest are locked by jobs running in other workers
