"""Faults: a misbehaving EHR, a model server that goes away, a process killed mid-run.

The EHR faults come from a real HTTP proxy in front of sekmet (`fault_proxy.py`), so the
pipeline's own client code path (httpx, retries, auth) meets them. After every fault the
rerun completes, and the resources are counted by identifier on both sides: nothing lost,
nothing written twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from fhir_adapter.pipeline import fetch
from fhir_adapter.pipeline.detect import detect
from fhir_adapter.pipeline.draft import draft
from fhir_adapter.pipeline.runner import ModelUnavailableError
from fhir_adapter.pipeline.steps import Step, WorkItem
from fhir_adapter.runtime import Runtime
from fhir_adapter.settings import EhrConnection, load_settings
from fhir_adapter.store import Store, open_store, outbox, work
from fhir_adapter.store.models import OutboxRow
from fhir_adapter.store.outbox import NOTE_PROVENANCE
from inference_server.client import TritonBackend
from mapping.fhir.codes import SID_COMMUNICATION, SID_NOTE
from tests.fhir_adapter.pipeline import fault_proxy as faults
from tests.fhir_adapter.pipeline.checks import (
    Side,
    ehr_side,
    note_provenance_counts,
    store_side,
)
from tests.fhir_adapter.pipeline.fault_proxy import FaultProxy
from tests.fhir_adapter.pipeline.seed import Clinic, seed_clinic
from tests.fhir_adapter.pipeline.support import (
    CONNECTION,
    TritonHandle,
    config_toml,
    connection,
    run_pass,
    settings_for,
    stored,
)
from tests.fhir_adapter.sekmet_server import SekmetServer

pytestmark = pytest.mark.integration

# The kinds of resource written to the EHR by a care_plan_store = "ehr" connection.
WRITTEN_KINDS = ("careplan", "task", "device", "model-card", "note", "communication")


@pytest.fixture
def proxy(sekmet_server: SekmetServer) -> Iterator[FaultProxy]:
    with faults.fault_proxy(sekmet_server.root_url, sekmet_server.base_url) as running:
        yield running


def _outbox(store: Store) -> list[OutboxRow]:
    with store.session() as session:
        return list(session.scalars(select(OutboxRow).order_by(OutboxRow.id)))


def _time_passes(store: Store) -> None:
    """Make every pending write due now, as if its retry delay (30 s and up) had passed."""
    with store.session() as session:
        for row in session.scalars(select(OutboxRow)):
            row.next_attempt_at = datetime.now(UTC)


def _assert_complete(server: SekmetServer, clinic: Clinic, store: Store) -> tuple[Side, Side]:
    """Every write landed exactly once: both sides agree, no duplicates, nothing pending."""
    ours, ehr = store_side(store), ehr_side(server, clinic, store)
    assert ours.duplicates() == {} and ehr.duplicates() == {}
    for system, values in ours.by_system.items():
        if system.rsplit("/", 1)[-1] in WRITTEN_KINDS:
            assert ehr.by_system[system] == values, system
    assert ehr.provenance == ours.provenance
    assert note_provenance_counts(server, clinic) == dict.fromkeys(ours.by_system[SID_NOTE], 1)
    statuses = {row.status for row in _outbox(store)}
    assert statuses == {outbox.OutboxStatus.DONE}, [
        (r.resource_type, r.status, r.last_error) for r in _outbox(store)
    ]
    return ours, ehr


def _proxied(
    server: SekmetServer, clinic: Clinic, proxy: FaultProxy, **fields: Any
) -> EhrConnection:
    """A care_plan_store = "ehr" connection that reaches sekmet through the proxy."""
    return connection(server, clinic, care_plan_store="ehr", base_url=proxy.base_url, **fields)


async def test_throttling_and_server_errors_are_retried_and_no_write_is_lost(
    sekmet_server: SekmetServer,
    pipeline_triton: TritonHandle,
    triton_backend: TritonBackend,
    proxy: FaultProxy,
    store: Store,
    tmp_path: Path,
) -> None:
    clinic = seed_clinic(sekmet_server, sessions=1, in_progress=False)
    sam = clinic.patients["sam"]
    proxy.add("GET", "/Encounter", faults.status(429, retry_after=1))
    proxy.add("GET", f"/{sam.patient}", faults.status(503, retry_after=1))
    proxy.add("PUT", "/CarePlan/", faults.status(500))
    proxy.add("POST", "/Communication", faults.status(429, retry_after=1))
    # A 500 to a create may hide a create that happened: not resent, kept for the next flush.
    proxy.add("POST", "/DocumentReference", faults.status(500, b'{"resourceType": "Oper'))
    settings = settings_for(tmp_path, [_proxied(sekmet_server, clinic, proxy)],
                            triton=pipeline_triton)  # fmt: skip

    first = await run_pass(settings, store, triton_backend)

    assert proxy.remaining() == 0
    assert first.errors == [] and first.encounters_processed == 2
    assert (first.writes_retrying, first.writes_failed) == (1, 0)
    # Retried where safe, after the delay the server asked for.
    throttled, retried = proxy.history("GET", "/Encounter")[:2]
    assert (throttled.status, retried.status) == (429, 200)
    assert retried.at - throttled.at >= 0.95
    # Writes go out several at once: the retry is the next PUT to the same CarePlan.
    puts = proxy.history("PUT", "/CarePlan/")
    failed_put = next(p for p in puts if p.fault is not None)
    put_again = next(p for p in puts[puts.index(failed_put) + 1 :] if p.path == failed_put.path)
    assert (failed_put.status, put_again.status) == (500, 201)
    assert [s.status for s in proxy.history("POST", "/Communication")][:2] == [429, 201]
    # The create that got a 500 was not resent; the next POST is the other session's note.
    assert [s.status for s in proxy.history("POST", "/DocumentReference")] == [500, 201]
    [waiting] = [r for r in _outbox(store) if r.status == outbox.OutboxStatus.PENDING
                 and r.resource_type == "DocumentReference"]  # fmt: skip
    assert waiting.identifier_system == SID_NOTE and waiting.attempts == 1
    assert waiting.last_error is not None and "answered 500" in waiting.last_error
    assert "not an OperationOutcome" in waiting.last_error
    assert waiting.next_attempt_at > datetime.now(UTC)  # backed off, not hammering

    again = await run_pass(settings, store, triton_backend)
    assert again.writes_done == 0  # nothing due yet
    _time_passes(store)
    last = await run_pass(settings, store, triton_backend)
    assert last.writes_done == 2  # the note, then its Provenance
    assert (last.writes_retrying, last.writes_failed) == (0, 0)
    _assert_complete(sekmet_server, clinic, store)


async def test_timeouts_and_dropped_connections(
    sekmet_server: SekmetServer,
    pipeline_triton: TritonHandle,
    triton_backend: TritonBackend,
    proxy: FaultProxy,
    store: Store,
    tmp_path: Path,
) -> None:
    clinic = seed_clinic(sekmet_server, sessions=1, in_progress=False)
    # A session's transcript search (not the poll's); the read timeout is 1 s.
    proxy.add("GET", "/DocumentReference", faults.delay(2.5), query="encounter=")
    proxy.add("PUT", "/Task/", faults.drop())
    # Created in the EHR, but the answer never arrives: must not be created again.
    proxy.add("POST", "/Communication", faults.forward_then_drop())
    proxy.add("POST", "/DocumentReference", faults.drop())
    # The other note's Provenance lands, unconfirmed: found by its target next time.
    proxy.add("POST", "/Provenance", faults.forward_then_drop())
    conn = _proxied(sekmet_server, clinic, proxy, read_timeout_s=1.0)
    settings = settings_for(tmp_path, [conn], triton=pipeline_triton)

    first = await run_pass(settings, store, triton_backend)

    assert proxy.remaining() == 0
    assert first.errors == [] and first.encounters_processed == 2
    assert (first.writes_retrying, first.writes_failed) == (3, 0)
    # Reads and PUTs were resent at once; the creates were not (they may have landed).
    slow, read_again = proxy.history("GET", "/DocumentReference", "encounter=")[:2]
    assert (slow.fault, read_again.fault, read_again.status) == ("delay", None, 200)
    # Writes go out several at once: the retry is the next PUT to the dropped Task.
    puts = proxy.history("PUT", "/Task/")
    dropped = next(p for p in puts if p.fault == "drop")
    put_again = next(p for p in puts[puts.index(dropped) + 1 :] if p.path == dropped.path)
    assert (dropped.status, put_again.status) == (None, 201)
    assert len(proxy.history("POST", "/Communication")) == 2  # one per session, none resent
    pending = {r.identifier_system for r in _outbox(store) if r.status == "pending"}
    # The note's Provenance waits for its note.
    assert pending == {SID_NOTE, SID_COMMUNICATION, NOTE_PROVENANCE}
    ehr = ehr_side(sekmet_server, clinic, store)
    assert ehr.count(SID_COMMUNICATION) == 2  # one of them unconfirmed
    assert ehr.count(SID_NOTE) == 1
    assert list(note_provenance_counts(sekmet_server, clinic).values()) == [1]  # unconfirmed

    _time_passes(store)
    await run_pass(settings, store, triton_backend)
    _, ehr = _assert_complete(sekmet_server, clinic, store)
    assert ehr.count(SID_COMMUNICATION) == 2 and ehr.count(SID_NOTE) == 2


async def test_invalid_bodies_fail_the_write_and_keep_it_for_a_requeue(
    sekmet_server: SekmetServer,
    pipeline_triton: TritonHandle,
    triton_backend: TritonBackend,
    proxy: FaultProxy,
    store: Store,
    tmp_path: Path,
) -> None:
    clinic = seed_clinic(sekmet_server, sessions=1, in_progress=False)
    malformed = b'{"resourceType": "OperationOutcome", "issue": "not a list"}'
    proxy.add("POST", "/DocumentReference", faults.status(422, malformed))
    # Created, then answered with a proxy's error page as if it were the resource.
    proxy.add("POST", "/Communication", faults.forward_then_body(201, b"<html>oops</html>"))
    proxy.add("PUT", "/Provenance/", faults.status(503, b"<html>busy</html>", None, "text/html"))
    settings = settings_for(tmp_path, [_proxied(sekmet_server, clinic, proxy)],
                            triton=pipeline_triton)  # fmt: skip

    first = await run_pass(settings, store, triton_backend)

    assert proxy.remaining() == 0
    assert first.encounters_processed == 2 and first.writes_failed == 3
    failed = {r.resource_type: r for r in _outbox(store) if r.status == "failed"}
    assert set(failed) == {"DocumentReference", "Communication", "Provenance"}
    # The note's Provenance cannot land without its note: failed too, naming the note's row.
    assert failed["Provenance"].last_error == (
        f"waits on outbox row {failed['DocumentReference'].id}, which failed")  # fmt: skip
    assert "answered 422 with a body that is not an OperationOutcome" in str(
        failed["DocumentReference"].last_error
    )
    assert "not JSON" in str(failed["Communication"].last_error)
    # Failed writes stay failed (a retry would not fix them) until an operator requeues.
    assert (await run_pass(settings, store, triton_backend)).writes_done == 0
    with store.session() as session:
        assert outbox.requeue(session, CONNECTION) == 3
    await run_pass(settings, store, triton_backend)
    _, ehr = _assert_complete(sekmet_server, clinic, store)
    assert ehr.count(SID_COMMUNICATION) == 2  # the one created despite the error page: once


async def test_a_failed_earlier_session_holds_back_the_later_one(
    sekmet_server: SekmetServer,
    pipeline_triton: TritonHandle,
    triton_backend: TritonBackend,
    proxy: FaultProxy,
    store: Store,
    tmp_path: Path,
) -> None:
    """Sam's first session cannot be fetched (the EHR refuses the transcript search): his
    second session must wait, since it settles the first one's homework; Jordan goes on.
    The next run does Sam's two sessions in order, and the review lands."""
    clinic = seed_clinic(sekmet_server, in_progress=False)
    outcome = (b'{"resourceType": "OperationOutcome", "issue": [{"severity": "error", '
               b'"code": "processing", "diagnostics": "search refused"}]}')  # fmt: skip
    # Sam's first session is the earliest: the first session's transcript search is his.
    proxy.add("GET", "/DocumentReference", faults.status(400, outcome), query="encounter=")
    settings = settings_for(tmp_path, [_proxied(sekmet_server, clinic, proxy)],
                            triton=pipeline_triton)  # fmt: skip
    sam, jordan = clinic.patients["sam"], clinic.patients["jordan"]

    first = await run_pass(settings, store, triton_backend)

    assert (first.encounters_failed, first.encounters_processed) == (1, 2)
    assert len(first.errors) == 1 and first.errors[0].startswith(sam.encounters[0])
    assert "FatalFhirError" in first.errors[0] and "error/processing" in first.errors[0]
    with store.session() as session:
        held = [work.get_encounter(session, CONNECTION, e) for e in sam.encounters]
        assert [(r.step, r.attempts) for r in held if r] == [(Step.FETCH, 1), (Step.FETCH, 0)]
        done = work.encounters_at(session, CONNECTION, [Step.DONE])
        assert {r.encounter for r in done} == set(jordan.encounters)

    second = await run_pass(settings, store, triton_backend)
    assert second.errors == [] and second.encounters_processed == 2
    assert second.tasks_reviewed == len(stored(store, "Task", encounter=sam.encounters[0])) > 0
    _assert_complete(sekmet_server, clinic, store)


async def test_model_server_down_mid_run_then_back(
    sekmet_server: SekmetServer,
    pipeline_triton: TritonHandle,
    triton_backend: TritonBackend,
    store: Store,
    tmp_path: Path,
) -> None:
    """Triton crashes (SIGKILL) after the first encounter: the run stops with
    ModelUnavailableError, the first encounter's writes still go out, and the rerun with
    Triton back (same address) finishes the rest."""
    clinic = seed_clinic(sekmet_server, sessions=1, in_progress=False)
    conn = connection(sekmet_server, clinic, care_plan_store="ehr")
    settings = settings_for(tmp_path, [conn], triton=pipeline_triton)

    def stop_triton_after_first(items: Iterable[str], total: int) -> Iterator[str]:
        for number, item in enumerate(items):
            if number == 1:
                pipeline_triton.kill()
            yield item

    try:
        with pytest.raises(ModelUnavailableError, match="unavailable after 4 attempt"):
            await run_pass(settings, store, triton_backend, stop_triton_after_first)
    finally:
        if not pipeline_triton.running():
            pipeline_triton.start()
    sam, jordan = (clinic.patients[k].encounters[0] for k in ("sam", "jordan"))  # session order
    with store.session() as session:
        first, second = (work.get_encounter(session, CONNECTION, e) for e in (sam, jordan))
        assert first is not None and first.step == Step.DONE
        # Recorded, but not counted towards dead-lettering: the model was down, not the data.
        assert second is not None and (second.step, second.attempts) == (Step.DETECT, 0)
        assert str(second.last_error).startswith("model: model server at http://")
    ehr = ehr_side(sekmet_server, clinic, store)
    assert ehr.count(SID_NOTE) == 1  # the first encounter was written back all the same

    rerun = await run_pass(settings, store, triton_backend)
    assert (rerun.encounters_new, rerun.encounters_processed) == (0, 1)
    assert rerun.errors == []
    _, ehr = _assert_complete(sekmet_server, clinic, store)
    assert ehr.count(SID_NOTE) == 2


async def test_a_crash_between_steps_resumes_without_duplicates(
    sekmet_server: SekmetServer,
    pipeline_triton: TritonHandle,
    triton_backend: TritonBackend,
    store: Store,
    tmp_path: Path,
) -> None:
    """Run the steps by hand and stop as a crash would: Sam's session after detect, Jordan's
    after draft but before the flush. The next run finishes both."""
    clinic = seed_clinic(sekmet_server, sessions=1, in_progress=False)
    conn = connection(sekmet_server, clinic, care_plan_store="ehr")
    settings = settings_for(tmp_path, [conn], triton=pipeline_triton)
    sam, jordan = (clinic.patients[k].encounters[0] for k in ("sam", "jordan"))
    async with Runtime(settings, store, triton_backend) as runtime:
        await fetch.poll((await runtime.clients(conn)).ehr, store, conn)
        for encounter in (sam, jordan):
            with store.session() as session:
                row = work.get_encounter(session, CONNECTION, encounter)
            assert row is not None and row.step == Step.FETCH
            await fetch.fetch_inputs(runtime, WorkItem(CONNECTION, encounter))
            assert await detect(runtime, WorkItem(CONNECTION, encounter)) > 0
        assert draft(runtime, WorkItem(CONNECTION, jordan)) is not None
    with store.session() as session:
        steps = {e: work.get_encounter(session, CONNECTION, e).step for e in (sam, jordan)}  # type: ignore[union-attr]
    assert steps == {sam: Step.DRAFT, jordan: Step.DONE}
    assert {r.status for r in _outbox(store)} == {"pending"}
    assert ehr_side(sekmet_server, clinic, store).count(SID_NOTE) == 0

    resumed = await run_pass(settings, store, triton_backend)
    assert (resumed.encounters_new, resumed.encounters_processed) == (0, 1)
    assert resumed.errors == [] and resumed.writes_failed == 0
    ours, _ = _assert_complete(sekmet_server, clinic, store)
    assert ours.count(SID_NOTE) == 2
    # A further run, and a repeated step, change nothing.
    async with Runtime(settings, store, triton_backend) as runtime:
        assert draft(runtime, WorkItem(CONNECTION, jordan)) is None
    assert (await run_pass(settings, store, triton_backend)).writes_done == 0
    assert store_side(store) == ours


async def test_killed_while_the_ehr_answers_a_create_then_rerun(
    sekmet_server: SekmetServer,
    pipeline_triton: TritonHandle,
    triton_backend: TritonBackend,
    proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    """`homework-fhir run --once` is SIGKILLed while it waits for the EHR's answer to the first
    note create (which the EHR has already stored). The rerun finds that note by its
    identifier instead of charting it twice, and writes everything else once."""
    clinic = seed_clinic(sekmet_server, sessions=1, in_progress=False)
    conn = _proxied(sekmet_server, clinic, proxy)
    settings = settings_for(tmp_path, [conn], triton=pipeline_triton)
    config = config_toml(tmp_path / "homework-fhir.toml", settings, conn)
    reached = threading.Event()
    proxy.add("POST", "/DocumentReference", faults.forward_then_hang(reached))
    log_path = tmp_path / "run.log"
    command = [
        str(Path(sys.executable).parent / "homework-fhir"),
        "run",
        "--once",
        "-c",
        str(config),
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while not reached.wait(0.2):
            assert process.poll() is None, f"run exited early:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"no note create:\n{log_path.read_text()}"
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        proxy.release()
    reloaded = load_settings(config)
    store = open_store(reloaded.database_url)
    try:
        rows = _outbox(store)
        # Killed while the note's create hung: that write was never marked (others of its
        # wave, sent beside it, may have been).
        now = datetime.now(UTC)
        held = [r for r in rows if r.status == "pending" and r.next_attempt_at > now]
        # Among the claimed writes: the note whose create hung (others may have been in flight).
        assert any(r.identifier_system == SID_NOTE and r.attempts == 0 for r in held)
        assert ehr_side(sekmet_server, clinic, store).count(SID_NOTE) == 1  # it did land
        with store.session() as session:
            done = work.encounters_at(session, CONNECTION, [Step.DONE])
        assert len(done) == 2
        # The killed writer's claims hold its rows for the claim lease (another process might
        # still be writing them); a rerun before it expires leaves them alone.
        claimed = [r.id for r in held]
        early = await run_pass(reloaded, store, triton_backend)
        assert early.errors == [] and early.writes_done > 0  # the other writes went out
        with store.session() as session:
            for row_id in claimed:  # left to the writer that claimed them
                row = session.get(OutboxRow, row_id)
                assert row is not None and (row.status, row.attempts) == ("pending", 0)
        assert ehr_side(sekmet_server, clinic, store).duplicates() == {}
        with store.session() as session:  # as if the lease had run out
            for row in session.scalars(select(OutboxRow)):
                row.next_attempt_at = datetime.now(UTC)

        rerun = await run_pass(reloaded, store, triton_backend)
        assert rerun.errors == [] and rerun.encounters_new == 0
        assert (rerun.writes_failed, rerun.writes_retrying) == (0, 0)
        _, ehr = _assert_complete(sekmet_server, clinic, store)
        assert ehr.count(SID_NOTE) == 2
    finally:
        store.close()
