"""`homework-fhir worker`: the pipeline as procrastinate jobs in PostgreSQL, several workers
at once, against a real EHR (sekmet) and the shipped model on a real Triton."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
from fastapi.testclient import TestClient
from sqlalchemy import select

from fhir_adapter.service import build_service, dev_token
from fhir_adapter.settings import load_settings
from fhir_adapter.store import open_store, outbox
from fhir_adapter.store.models import EncounterRow, LeaseRow, OutboxRow
from inference_server.triton_server import free_port
from mapping.fhir.codes import SID_CAREPLAN, SID_NOTE, SID_TASK
from tests.databases import postgres_database
from tests.fhir_adapter.pipeline.checks import ehr_side, note_provenance_counts, store_side
from tests.fhir_adapter.pipeline.seed import clinic_resources, seed_clinic, transaction
from tests.fhir_adapter.pipeline.support import (
    TritonHandle,
    config_toml,
    connection,
    settings_for,
)
from tests.fhir_adapter.sekmet_server import SekmetServer

postgres = contextmanager(postgres_database)
QUEUE = '\n[queue]\nbackend = "procrastinate"\nconcurrency = 2\n'


def _workers(config: Path, count: int) -> list[tuple[int, str, str]]:
    command = [str(Path(sys.executable).parent / "homework-fhir"), "worker", "--once",
               "-c", str(config)]  # fmt: skip
    running = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(count)
    ]
    return [(p.wait(timeout=600), *p.communicate()) for p in running]


def _jobs(database_url: str) -> dict[tuple[str, str], int]:
    conninfo = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as conn:
        try:
            rows = conn.execute(
                "SELECT task_name, status::text, count(*) FROM procrastinate_jobs GROUP BY 1, 2"
            ).fetchall()
        except psycopg.errors.UndefinedTable:  # no worker has installed the queue yet
            return {}
    return {(name, status): n for name, status, n in rows}


def _patient_leases(database_url: str) -> int:
    conninfo = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as conn:
        try:
            row = conn.execute("SELECT count(*) FROM lease WHERE name LIKE 'patient:%'").fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
    return int(row[0]) if row else 0


def test_two_workers_process_every_session_once_and_write_everything_once(
    sekmet_server: SekmetServer, pipeline_triton: TritonHandle, tmp_path: Path
) -> None:
    clinic = seed_clinic(sekmet_server, in_progress=False)
    conn = connection(sekmet_server, clinic, care_plan_store="ehr")
    with postgres() as database_url:
        settings = settings_for(tmp_path, [conn], database_url=database_url,
                                triton=pipeline_triton)  # fmt: skip
        config = config_toml(tmp_path / "homework-fhir.toml", settings, conn)
        config.write_text(config.read_text() + QUEUE)

        # Two workers start together on an empty database: both install nothing twice.
        for code, out, err in _workers(config, 2):
            assert code == 0, f"exit {code}\n{out}\n{err}"
            assert "Traceback" not in err

        jobs = _jobs(database_url)
        assert {status for _, status in jobs} == {"succeeded"}, jobs
        # At least one per patient; a worker starting while another processes a patient may
        # queue it again (the queueing lock covers waiting jobs, not running ones): that job
        # finds nothing left to do.
        assert jobs[("pipeline:process_patient", "succeeded")] >= 2
        store = open_store(database_url)
        try:
            with store.session() as session:
                steps = [row.step for row in session.scalars(select(EncounterRow))]
                rows = list(session.scalars(select(OutboxRow)))
            assert steps == ["done"] * 4
            assert rows and {r.status for r in rows} == {outbox.OutboxStatus.DONE}
            ours, ehr = store_side(store), ehr_side(sekmet_server, clinic, store)
            assert ours.duplicates() == {} and ehr.duplicates() == {}
            for system in (SID_CAREPLAN, SID_TASK, SID_NOTE):
                assert ehr.by_system[system] == ours.by_system[system]
            notes = note_provenance_counts(sekmet_server, clinic)
            assert notes == dict.fromkeys(ours.by_system[SID_NOTE], 1)

            # Nothing new: another round of workers writes nothing.
            for code, out, err in _workers(config, 2):
                assert code == 0, f"exit {code}\n{out}\n{err}"
            assert store_side(store) == ours
            assert ehr_side(sekmet_server, clinic, store) == ehr
        finally:
            store.close()


def test_a_push_to_the_api_becomes_jobs_that_a_worker_runs(
    sekmet_server: SekmetServer, pipeline_triton: TritonHandle, tmp_path: Path
) -> None:
    """With the queue on, `POST /ingest` stages and defers; nothing runs in the API process.
    A worker then processes the push and its status URL answers 200."""
    clinic = seed_clinic(sekmet_server, in_progress=False)
    conn = connection(sekmet_server, clinic, care_plan_store="ehr", communication=False)
    with postgres() as database_url:
        settings = settings_for(tmp_path, [conn], database_url=database_url,
                                triton=pipeline_triton)  # fmt: skip
        config = config_toml(tmp_path / "homework-fhir.toml", settings, conn)
        config.write_text(config.read_text() + QUEUE)
        settings = load_settings(config)
        bundle = transaction(clinic_resources(sekmet_server, clinic))
        auth = {"Authorization": f"Bearer {dev_token(settings, 'system/Bundle.c')}"}
        service = build_service(settings)
        with TestClient(service.app) as client:
            # The model runs in the workers: the API's readiness does not wait on it.
            assert client.get("/readyz").json()["checks"] == {"database": "ok"}
            pushed = client.post("/ingest", json=bundle, headers=auth)
            assert pushed.status_code == 202, pushed.text
            status_url = pushed.headers["Content-Location"]
            assert client.get(status_url, headers=auth).status_code == 202
            jobs = _jobs(database_url)
            assert jobs[("pipeline:process_patient", "todo")] == 2
            with service.store.session() as session:
                assert {r.step for r in session.scalars(select(EncounterRow))} == {"detect"}

            for code, out, err in _workers(config, 1):
                assert code == 0, f"exit {code}\n{out}\n{err}"
            done = client.get(status_url, headers=auth)
            assert done.status_code == 200, done.text


def test_a_worker_killed_mid_job_is_taken_over_and_nothing_is_written_twice(
    sekmet_server: SekmetServer, pipeline_triton: TritonHandle, tmp_path: Path
) -> None:
    """SIGKILL a worker while it processes a patient: its job stays `doing` and the patient's
    lease held. Once its heartbeat is 30 s old, the next worker puts the job back, the lease
    has run out, and the sessions are done with every write landed once."""
    clinic = seed_clinic(sekmet_server, in_progress=False)
    conn = connection(sekmet_server, clinic, care_plan_store="ehr")
    with postgres() as database_url:
        settings = settings_for(tmp_path, [conn], database_url=database_url,
                                triton=pipeline_triton)  # fmt: skip
        config = config_toml(tmp_path / "homework-fhir.toml", settings, conn)
        config.write_text(config.read_text() + QUEUE)
        port = free_port()
        command = [str(Path(sys.executable).parent / "homework-fhir"), "worker", "-c", str(config),
                   "--metrics-port", str(port)]  # fmt: skip
        victim = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            deadline = time.monotonic() + 120
            while not (
                _jobs(database_url).get(("pipeline:process_patient", "doing"))
                and _patient_leases(database_url)
            ):
                assert victim.poll() is None, victim.communicate()[1][-2000:]
                assert time.monotonic() < deadline, "no job started"
                time.sleep(0.05)
            # The worker serves its own metrics, behind a token like the API's.
            scrape = f"http://127.0.0.1:{port}/metrics"
            assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
            assert httpx.get(scrape).status_code == 401
            token = {"Authorization": f"Bearer {dev_token(settings)}"}
            page = httpx.get(scrape, headers=token)
            assert page.status_code == 200 and "homework_step_seconds" in page.text
            assert "homework_encounters{" in page.text  # the store's gauges too
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait(timeout=30)
        finally:
            if victim.poll() is None:
                victim.kill()
        store = open_store(database_url)
        try:
            with store.session() as session:
                held = list(session.scalars(select(LeaseRow)))
            assert any(row.name.startswith("patient:") for row in held)
            # What time does: the killed worker's heartbeat goes stale (30 s) and its patient
            # lease runs out (3 min; expired here rather than waited for).
            time.sleep(31)
            with store.session() as session:
                for row in session.scalars(select(LeaseRow)):
                    row.expires_at = row.expires_at.replace(year=2000)
            for code, out, err in _workers(config, 1):
                assert code == 0, f"exit {code}\n{out}\n{err}"
            with store.session() as session:
                steps = [row.step for row in session.scalars(select(EncounterRow))]
                rows = list(session.scalars(select(OutboxRow)))
            assert steps == ["done"] * 4
            assert {r.status for r in rows} == {outbox.OutboxStatus.DONE}
            ours, ehr = store_side(store), ehr_side(sekmet_server, clinic, store)
            assert ehr.duplicates() == {}
            for system in (SID_CAREPLAN, SID_TASK, SID_NOTE):
                assert ehr.by_system[system] == ours.by_system[system]
            assert note_provenance_counts(sekmet_server, clinic) == dict.fromkeys(
                ours.by_system[SID_NOTE], 1
            )
        finally:
            store.close()
