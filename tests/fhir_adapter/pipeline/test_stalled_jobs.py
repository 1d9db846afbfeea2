"""Stalled jobs (their worker died) are put back once, whoever looks for them.

Every worker looks for stalled jobs when it starts and between rounds of `--once`, and the
periodic task does too: two processes read the same stalled job, and only the first may act on
it. The second used to get procrastinate's "not in doing status" error and exit 1 (seen in the
fault matrix: a surviving worker exiting 1 after a peer was killed).
"""

from __future__ import annotations

import asyncio
from contextlib import contextmanager

import psycopg
import pytest

from fhir_adapter.queue import (
    conninfo,
    defer_patient,
    ensure_schema,
    job_counts,
    make_app,
    requeue_stalled,
    retry_stalled_jobs,
)
from fhir_adapter.settings import load_settings
from tests.databases import postgres_database

TASK = "pipeline:process_patient"


def _worker_died_holding(database_url: str, patient: str) -> None:
    """The job of `patient` taken by a worker whose last heartbeat is an hour old."""
    with psycopg.connect(conninfo(database_url), autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO procrastinate_workers (last_heartbeat) "
            "VALUES (now() - interval '1 hour') RETURNING id"
        ).fetchone()
        assert row is not None
        conn.execute(
            "UPDATE procrastinate_jobs SET status = 'doing', worker_id = %s "
            "WHERE args->>'patient' = %s AND status = 'todo'", (row[0], patient)
        )  # fmt: skip


async def _scenario(database_url: str) -> None:
    settings = load_settings(database_url=database_url, environment="development")
    # Another process: an app of its own (also: a process may make more than one app, as an
    # API whose lifespan opens its runtime again does).
    app, other = make_app(settings), make_app(settings)
    ours = {"pipeline:poll", TASK, "pipeline:flush", "pipeline:retry_stalled"}
    assert ours <= set(app.tasks) and ours <= set(other.tasks)
    async with app.open_async(), other.open_async():
        await ensure_schema(app, database_url)

        # One stalled job, read by two processes; the first requeues it.
        assert await defer_patient(app, "clinic", "Patient/p1")
        _worker_died_holding(database_url, "Patient/p1")
        read_by_other = list(await other.job_manager.get_stalled_jobs())
        assert len(read_by_other) == 1
        assert await retry_stalled_jobs(app) == 1
        # The second acts on what it read: no error, nothing done twice.
        assert [await requeue_stalled(other, job) for job in read_by_other] == [False]
        assert await job_counts(app) == {f"{TASK} todo": 1}

        # A stalled job superseded by a newer one of its patient: the first closes it, the
        # second finds it closed.
        assert await defer_patient(app, "clinic", "Patient/p2")
        _worker_died_holding(database_url, "Patient/p2")
        assert await defer_patient(app, "clinic", "Patient/p2")  # the patient queued again
        read_by_other = list(await other.job_manager.get_stalled_jobs())
        assert len(read_by_other) == 1
        assert await retry_stalled_jobs(app) == 1
        assert [await requeue_stalled(other, job) for job in read_by_other] == [False]
        assert await job_counts(app) == {f"{TASK} aborted": 1, f"{TASK} todo": 2}
        assert await retry_stalled_jobs(other) == 0  # nothing stalled is left


@pytest.mark.filterwarnings("ignore:settings. api.auth")  # no API in this test
def test_a_stalled_job_is_put_back_once_when_two_workers_see_it() -> None:
    with contextmanager(postgres_database)() as database_url:
        asyncio.run(_scenario(database_url))
