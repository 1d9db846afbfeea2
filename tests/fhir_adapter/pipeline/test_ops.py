"""Operators' commands against a real EHR (sekmet) and a real store: `check`, `outbox`, `work`,
and the dead-lettering they look at."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fhir_adapter.cli import app
from fhir_adapter.pipeline import note_versions
from fhir_adapter.pipeline.runner import MAX_ATTEMPTS
from fhir_adapter.pipeline.steps import Step
from fhir_adapter.store import Store, open_store, outbox, work
from fhir_adapter.store.models import EncounterRow
from inference_server.client import TritonBackend
from mapping.fhir.codes import SID_NOTE, SID_NOTE_VERSION
from tests.fhir_adapter.pipeline import fault_proxy as faults
from tests.fhir_adapter.pipeline.fault_proxy import FaultProxy
from tests.fhir_adapter.pipeline.seed import seed_clinic
from tests.fhir_adapter.pipeline.support import (
    CONNECTION,
    TritonHandle,
    config_toml,
    connection,
    deadlocked_once,
    run_pass,
    settings_for,
    stored,
)
from tests.fhir_adapter.sekmet_server import SekmetServer

runner = CliRunner()
DEV_AUTH = '[api.auth]\nmode = "dev-embedded"\n'


@pytest.fixture
def proxy(sekmet_server: SekmetServer) -> Iterator[FaultProxy]:
    with faults.fault_proxy(sekmet_server.root_url, sekmet_server.base_url) as running:
        yield running


def test_check_reports_each_step_and_fails_on_missing_scopes_or_a_dead_server(
    sekmet_server: SekmetServer, pipeline_triton: TritonHandle, tmp_path: Path
) -> None:
    clinic = seed_clinic(sekmet_server, sessions=1, in_progress=False)
    good = connection(sekmet_server, clinic, care_plan_store="ehr")
    settings = settings_for(tmp_path, [good], triton=pipeline_triton)
    config = config_toml(tmp_path / "good.toml", settings, good)

    ok = runner.invoke(app, ["check", "-c", str(config)])
    assert ok.exit_code == 0, ok.output
    steps = [line.split()[1] for line in ok.stdout.splitlines()]
    assert steps == ["capability", "token", "scopes", "write", "search"]
    assert all(" ok " in line for line in ok.stdout.splitlines())

    # Registered for system/*.rs only: the token endpoint grants less than the config asks.
    narrow = connection(sekmet_server, clinic, client="readonly", care_plan_store="ehr",
                        scopes="system/*.rs system/DocumentReference.c")  # fmt: skip
    config = config_toml(tmp_path / "narrow.toml", settings, narrow)
    refused = runner.invoke(app, ["check", "-c", str(config)])
    assert refused.exit_code == 1, refused.output
    assert "FAIL" in refused.stdout and "Traceback" not in refused.output

    dead = connection(sekmet_server, clinic, care_plan_store="ehr",
                      base_url="http://127.0.0.1:9/fhir")  # fmt: skip
    config = config_toml(tmp_path / "dead.toml", settings, dead)
    down = runner.invoke(app, ["check", "-c", str(config)])
    assert down.exit_code == 1
    assert down.stdout.splitlines()[0].split()[1:3] == ["capability", "FAIL"]

    missing = runner.invoke(app, ["check", "-c", str(config), "--connection", "nope"])
    assert missing.exit_code == 2 and "no EHR connection 'nope'" in missing.stderr


def test_check_names_each_read_and_write_the_granted_scopes_do_not_cover(
    sekmet_server: SekmetServer, tmp_path: Path
) -> None:
    """The token endpoint grants all that is asked, but what is asked lacks Binary.r (a
    transcript given as a url) and Provenance.s (the note's Provenance is searched for before
    its create): each is a FAIL line naming the scope to add, and no search is tried."""
    clinic = seed_clinic(sekmet_server, sessions=1, in_progress=False)
    conn = connection(
        sekmet_server, clinic, care_plan_store="builtin", communication=False,
        scopes="system/Encounter.s system/Patient.r system/DocumentReference.cs "
        "system/QuestionnaireResponse.s system/Observation.s system/Provenance.c",
    )  # fmt: skip
    config = config_toml(tmp_path / "short.toml", settings_for(tmp_path, [conn]), conn)

    result = runner.invoke(app, ["check", "-c", str(config)])
    assert result.exit_code == 1, result.output
    # `check`'s columns: connection (16), step (14), ok/FAIL (4), detail.
    lines = [(ln[17:31].strip(), ln[32:36].strip(), ln[37:]) for ln in result.stdout.splitlines()]
    assert [(step, mark) for step, mark, _ in lines] == [
        ("capability", "ok"), ("token", "ok"), ("scopes", "FAIL"), ("write targets", "FAIL"),
    ]  # fmt: skip
    assert lines[2][2] == (
        f"ehr.{CONNECTION}: fetching a session's inputs needs Binary read, which none of the "
        f"scopes in ehr.{CONNECTION}.auth.scopes grants; add system/Binary.r (SMART v2) or "
        "system/Binary.read (v1)"
    )
    assert lines[3][2] == (
        f"ehr.{CONNECTION}.write.chart.provenance needs Provenance search-type, "
        f"which none of the scopes in ehr.{CONNECTION}.auth.scopes grants; add "
        "system/Provenance.s (SMART v2) or system/Provenance.read (v1), or set "
        f"ehr.{CONNECTION}.write.chart.provenance = false"
    )


async def test_an_encounter_that_keeps_failing_is_dead_lettered_then_retried_by_an_operator(
    sekmet_server: SekmetServer,
    pipeline_triton: TritonHandle,
    triton_backend: TritonBackend,
    proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    """Sam's first session cannot be fetched, run after run: it backs off, then is set aside
    after MAX_ATTEMPTS, and his later session goes on without it. `work retry` puts it back
    and, with the EHR fixed, it is processed."""
    clinic = seed_clinic(sekmet_server, in_progress=False)
    outcome = (b'{"resourceType": "OperationOutcome", "issue": [{"severity": "error", '
               b'"code": "processing", "diagnostics": "search refused"}]}')  # fmt: skip
    conn = connection(sekmet_server, clinic, care_plan_store="ehr", base_url=proxy.base_url)
    settings = settings_for(tmp_path, [conn], triton=pipeline_triton)
    store = open_store(settings.database_url)
    sam = clinic.patients["sam"].encounters
    try:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            # Sam's first session is the earliest waiting one: each run's first transcript
            # search is its fetch.
            proxy.add("GET", "/DocumentReference", faults.status(400, outcome),
                      query="encounter=")  # fmt: skip
            summary = await run_pass(settings, store, triton_backend)
            row = _row(store, sam[0])
            if attempt < MAX_ATTEMPTS:
                assert (row.step, row.attempts) == (Step.FETCH, attempt)
                assert (attempt == 1) == (row.retry_at is None)  # backoff from the second
                assert _row(store, sam[1]).step == Step.FETCH  # held back meanwhile
                _time_passes(store, sam[0])
        assert summary.encounters_dead >= 1
        assert (row.step, row.state["failed_at"]) == (Step.FAILED, Step.FETCH)
        assert "FatalFhirError" in str(row.last_error)

        config = _config(tmp_path, settings.database_url)
        listed = runner.invoke(app, ["work", "list", "--step", "failed", "-c", config])
        assert listed.exit_code == 0 and sam[0] in listed.stdout and "(at fetch)" in listed.stdout

        # Sam's later session was processed around the failed one; Jordan's too.
        assert _row(store, sam[1]).step == Step.DONE
        retried = runner.invoke(app, ["work", "retry", sam[0], "-c", config])
        assert retried.exit_code == 0 and "requeued 1 encounters" in retried.stdout
        assert (_row(store, sam[0]).step, _row(store, sam[0]).attempts) == (Step.FETCH, 0)
        again = await run_pass(settings, store, triton_backend)
        assert again.errors == [] and _row(store, sam[0]).step == Step.DONE
        assert stored(store, "Task", encounter=sam[0])
    finally:
        store.close()


def test_outbox_list_and_retry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = open_store(url)
    try:
        with store.session() as session:
            ok = outbox.enqueue(session, "clinic", outbox.CHART, ("urn:x", "1"),
                                {"resourceType": "DocumentReference"})  # fmt: skip
            bad = outbox.enqueue(session, "clinic", outbox.CHART, ("urn:x", "2"),
                                 {"resourceType": "Communication"})  # fmt: skip
            outbox.mark_done(session, ok, "n1", "1")
            outbox.mark_failed(session, bad, "Communication refused: 403 forbidden")
            bad_id = bad.id
    finally:
        store.close()
    config = tmp_path / "c.toml"
    config.write_text(f'environment = "development"\ndatabase_url = "{url}"\n{DEV_AUTH}')

    listed = runner.invoke(app, ["outbox", "list", "--status", "failed", "-c", str(config)])
    assert listed.exit_code == 0, listed.output
    assert listed.stdout.splitlines()[0] == "done 1  failed 1"
    assert len(listed.stdout.splitlines()) == 2 and "403 forbidden" in listed.stdout
    wrong = runner.invoke(app, ["outbox", "list", "--status", "lost", "-c", str(config)])
    assert wrong.exit_code == 2 and "use one of pending, done, failed" in wrong.stderr

    # Aborted once by the database (a re-draft held rows it waited on): run again, once.
    calls = deadlocked_once(monkeypatch, outbox, "superseded")
    retried = runner.invoke(app, ["outbox", "retry", str(bad_id), "-c", str(config)])
    assert retried.exit_code == 0 and retried.stdout.strip() == "requeued 1 writes"
    assert len(calls) == 2
    store = open_store(url)
    try:
        with store.session() as session:
            assert outbox.counts(session) == {"done": 1, "pending": 1}
    finally:
        store.close()


def test_outbox_retry_leaves_a_superseded_note_version_failed_and_says_so(
    tmp_path: Path,
) -> None:
    """Version 1 of a note refused, version 2 failed waiting on it; the note's next change
    takes version 2's row, replacing the note in the chart. Version 1 (stale text) and its
    Provenance stay failed through any retry, and the operator is told why."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = open_store(url)

    def note(text: str, version: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"resourceType": "DocumentReference",
                                "identifier": [{"system": SID_NOTE, "value": "n1"}],
                                "content": [{"attachment": {"data": text}}]}  # fmt: skip
        if version is not None:
            body["masterIdentifier"] = {"system": SID_NOTE_VERSION, "value": version}
        return body

    try:
        with store.session() as s:
            first = outbox.enqueue(s, "clinic", outbox.CHART, (SID_NOTE, "n1"), note("draft"))
            outbox.mark_done(s, first, "doc-1", "1")
            v1 = outbox.enqueue(s, "clinic", outbox.CHART, (SID_NOTE_VERSION, "v1"),
                                note("one", "v1"))  # fmt: skip
            outbox.mark_failed(s, v1, "HTTP 422 unprocessable")
            v2 = outbox.enqueue(s, "clinic", outbox.CHART, (SID_NOTE_VERSION, "v2"),
                                note("two", "v2"))  # fmt: skip
            outbox.mark_failed(s, v2, outbox.waits_on(v1.id))
            provenance = outbox.enqueue(s, "clinic", outbox.CHART,
                                        (outbox.NOTE_PROVENANCE, f"{SID_NOTE_VERSION}|v1"),
                                        {"resourceType": "Provenance", "id": "p1"})  # fmt: skip
            outbox.mark_failed(s, provenance, outbox.waits_on(v1.id))
            other = outbox.enqueue(s, "clinic", outbox.CHART, ("urn:x", "2"),
                                   {"resourceType": "Communication"})  # fmt: skip
            outbox.mark_failed(s, other, "Communication refused: 403 forbidden")
            # The note changes again: version 2's row takes it, replacing the note in the chart.
            found = note_versions.next_version(s, "clinic", "n1", first, "v3")
            assert found == ("v2", {"reference": "DocumentReference/doc-1"})
            outbox.enqueue(s, "clinic", outbox.CHART, (SID_NOTE_VERSION, "v2"),
                           note_versions.versioned(note("three"), *found))  # fmt: skip
            v1_id, v2_id = v1.id, v2.id
    finally:
        store.close()
    config = tmp_path / "c.toml"
    config.write_text(f'environment = "development"\ndatabase_url = "{url}"\n{DEV_AUTH}')

    retried = runner.invoke(app, ["outbox", "retry", "-c", str(config)])
    assert retried.exit_code == 0, retried.output
    assert retried.stdout.strip() == (
        "requeued 1 writes; left 2 writes of superseded note versions alone (a later version "
        "carries the note; see `outbox list --status failed`)")  # fmt: skip
    named = runner.invoke(app, ["outbox", "retry", str(v1_id), "-c", str(config)])
    assert named.exit_code == 0 and named.stdout.startswith("requeued 0 writes; left 1 ")
    listed = runner.invoke(app, ["outbox", "list", "--status", "failed", "-c", str(config)])
    assert listed.exit_code == 0, listed.output
    [counts, *lines] = listed.stdout.splitlines()
    assert counts == "done 1  failed 2  pending 2"
    [stale] = [line for line in lines if line.split()[0] == str(v1_id)]
    assert f"superseded by outbox row {v2_id}, a later version of this note" in stale


def test_outbox_retry_pending_leaves_writes_in_flight_alone(tmp_path: Path) -> None:
    """`--pending` pulls a retry's backoff forward, never a writer's claim (pulled forward,
    another flush would claim it too and could create the same note twice)."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = open_store(url)

    def comm(n: str, text: str = "x") -> dict[str, str]:
        return {"resourceType": "Communication", "id": n, "status": text}

    try:
        with store.session() as s:
            backoff = outbox.enqueue(s, "clinic", outbox.CHART, ("urn:x", "1"), comm("1"))
            outbox.mark_retry(s, backoff, "HTTP 503", timedelta(minutes=30))
            claimed = outbox.enqueue(s, "clinic", outbox.CHART, ("urn:x", "2"), comm("2"))
            # Claimed after an earlier failure: the claim keeps that `last_error`.
            reclaimed = outbox.enqueue(s, "clinic", outbox.CHART, ("urn:x", "3"), comm("3"))
            outbox.mark_retry(s, reclaimed, "HTTP 503", timedelta(0))
            # Claimed, then changed by another process while in flight.
            changed = outbox.enqueue(s, "clinic", outbox.CHART, ("urn:x", "4"), comm("4"))
            later = datetime.now(UTC) + timedelta(seconds=1)
            for row in (claimed, reclaimed, changed):
                assert outbox.claim(s, row.id, now=later) is not None
            outbox.enqueue(s, "clinic", outbox.CHART, ("urn:x", "4"), comm("4", "changed"))
            leases = {row.id: row.next_attempt_at for row in (claimed, reclaimed, changed)}
            backoff_id = backoff.id
    finally:
        store.close()
    config = tmp_path / "c.toml"
    config.write_text(f'environment = "development"\ndatabase_url = "{url}"\n{DEV_AUTH}')

    retried = runner.invoke(app, ["outbox", "retry", "--pending", "-c", str(config)])
    assert retried.exit_code == 0, retried.output
    assert retried.stdout.strip() == "requeued 1 writes; left 3 in flight alone"
    store = open_store(url)
    try:
        with store.session() as s:
            rows = {row.id: row for row in outbox.listing(s, "clinic")}
            assert rows[backoff_id].next_attempt_at <= datetime.now(UTC)
            assert {i: rows[i].next_attempt_at for i in leases} == leases
    finally:
        store.close()


def test_feedback_export_checks_its_file_before_opening_the_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    config = _config(tmp_path, url)
    out = tmp_path / "no" / "f.jsonl"
    no_folder = runner.invoke(app, ["feedback", "export", str(out), "-c", config])
    assert no_folder.exit_code == 2
    assert no_folder.stderr == f"error: no folder {out.parent} for OUT; create it first\n"
    folder = runner.invoke(app, ["feedback", "export", str(tmp_path), "-c", config])
    assert folder.exit_code == 2
    assert folder.stderr.startswith(f"error: OUT {tmp_path} already exists as a folder; pass a")
    assert not (tmp_path / "store.db").exists()  # refused before the store was opened


def test_a_data_dir_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    config = tmp_path / "c.toml"
    config.write_text(f'environment = "development"\ndata_dir = "{afile}"\n{DEV_AUTH}')
    listed = runner.invoke(app, ["outbox", "list", "-c", str(config)])
    assert listed.exit_code == 2
    assert listed.stderr.startswith(f"error: cannot open the store at {afile}: ")
    assert "data_dir must be a folder" in listed.stderr
    assert len(listed.stderr.splitlines()) == 1 and "Traceback" not in listed.output


def _row(store: Store, encounter: str) -> EncounterRow:
    with store.session() as session:
        row = work.get_encounter(session, CONNECTION, encounter)
    assert row is not None
    return row


def _time_passes(store: Store, encounter: str) -> None:
    """As if the encounter's backoff had run out."""
    with store.session() as session:
        row = work.get_encounter(session, CONNECTION, encounter)
        assert row is not None
        row.retry_at = None


def _config(tmp_path: Path, url: str) -> str:
    """A config naming only the store (these commands need no EHR and no model)."""
    path = tmp_path / "store-only.toml"
    path.write_text(f'environment = "development"\ndatabase_url = "{url}"\n{DEV_AUTH}')
    return str(path)
