"""`homework-fhir run` and `homework-fhir backfill` as an operator runs them: a TOML config,
a real EHR (sekmet), the shipped model on a real Triton, our store on SQLite."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from fhir_adapter.cli import app
from fhir_adapter.pipeline.steps import Step
from fhir_adapter.samples import sample_export_dir
from fhir_adapter.store import open_store, work
from mapping.fhir.codes import SID_CAREPLAN, SID_NOTE, SID_TASK
from tests.fhir_adapter.pipeline.checks import ehr_side, note_provenance_counts, store_side
from tests.fhir_adapter.pipeline.seed import (
    clinic_resources,
    seed_clinic,
    seed_session,
    write_export,
)
from tests.fhir_adapter.pipeline.support import (
    CONNECTION,
    TritonHandle,
    config_toml,
    connection,
    settings_for,
)
from tests.fhir_adapter.sekmet_server import SekmetServer

pytestmark = pytest.mark.integration

runner = CliRunner()


def summary_of(result: Result) -> dict[str, str]:
    """The counts `run`/`backfill` print, one "name  value" per line."""
    out = {}
    for line in result.stdout.splitlines():
        name, _, value = line.rpartition("  ")
        if name.strip() and value.strip().isdigit():
            out[name.strip().replace(" ", "_")] = value.strip()
    return out


def test_run_once_from_a_toml_config_then_again_then_a_backfill_of_the_same(
    sekmet_server: SekmetServer, pipeline_triton: TritonHandle, tmp_path: Path
) -> None:
    clinic = seed_clinic(sekmet_server)
    conn = connection(sekmet_server, clinic, client="rs384", care_plan_store="ehr")
    settings = settings_for(tmp_path, [conn], triton=pipeline_triton)
    config = config_toml(tmp_path / "homework-fhir.toml", settings, conn)

    first = runner.invoke(app, ["run", "--once", "--config", str(config)])
    assert first.exit_code == 0, first.output
    counts = summary_of(first)
    assert counts["encounters_new"] == counts["encounters_processed"] == "4", first.stdout
    assert counts["writes_failed"] == counts["writes_retrying"] == "0"
    assert int(counts["writes_done"]) > 12
    store = open_store(settings.database_url)
    try:
        ours, ehr = store_side(store), ehr_side(sekmet_server, clinic, store)
        assert ours.duplicates() == {} and ehr.duplicates() == {}
        for system in (SID_CAREPLAN, SID_TASK, SID_NOTE):
            assert ehr.by_system[system] == ours.by_system[system] and ours.count(system) >= 3
        chart_provenance = note_provenance_counts(sekmet_server, clinic)

        second = runner.invoke(app, ["run", "--once", "--config", str(config)])
        assert second.exit_code == 0, second.output
        assert summary_of(second)["encounters_new"] == "0"
        assert summary_of(second)["writes_done"] == "0"

        # The same encounters again, from a Bulk Data export: known, nothing new anywhere.
        export = write_export(clinic_resources(sekmet_server, clinic), tmp_path / "export")
        args = ["backfill", str(export), "--config", str(config), "--connection", CONNECTION]
        backfill = runner.invoke(app, args)
        assert backfill.exit_code == 0, backfill.output
        assert summary_of(backfill)["encounters_new"] == "0"
        assert summary_of(backfill)["writes_done"] == "0"
        assert store_side(store) == ours
        assert ehr_side(sekmet_server, clinic, store) == ehr
        assert note_provenance_counts(sekmet_server, clinic) == chart_provenance
    finally:
        store.close()


def test_backfill_of_an_export_with_binary_transcripts(
    sekmet_server: SekmetServer, pipeline_triton: TritonHandle, tmp_path: Path
) -> None:
    """A Bulk Data export carries url-only transcripts with their Binary resources; every
    session is read, none skipped."""
    clinic = seed_clinic(sekmet_server, in_progress=False)
    export = write_export(clinic_resources(sekmet_server, clinic), tmp_path / "export")
    assert (export / "Binary.ndjson").is_file()
    conn = connection(sekmet_server, clinic, care_plan_store="builtin", communication=False)
    settings = settings_for(tmp_path, [conn], triton=pipeline_triton)
    config = config_toml(tmp_path / "homework-fhir.toml", settings, conn)

    result = runner.invoke(app, ["backfill", str(export), "--config", str(config)])

    assert result.exit_code == 0, result.output
    counts = summary_of(result)
    assert (counts["encounters_new"], counts["encounters_processed"]) == ("4", "4"), result.output
    assert counts["encounters_skipped"] == "0"
    store = open_store(settings.database_url)
    try:
        with store.session() as session:
            done = work.encounters_at(session, CONNECTION, [Step.DONE])
        assert {row.encounter for row in done} == set(clinic.encounters)
        ours = store_side(store)
        assert ours.count(SID_NOTE) == 4 and ours.count(SID_CAREPLAN) == 3
        assert note_provenance_counts(sekmet_server, clinic) == dict.fromkeys(
            ours.by_system[SID_NOTE], 1
        )
    finally:
        store.close()


def test_run_reports_a_model_server_that_does_not_answer(
    sekmet_server: SekmetServer, pipeline_triton: TritonHandle, tmp_path: Path
) -> None:
    clinic = seed_clinic(sekmet_server, sessions=1, in_progress=False)
    conn = connection(sekmet_server, clinic, care_plan_store="builtin")
    settings = settings_for(tmp_path, [conn], triton=pipeline_triton)
    config = config_toml(tmp_path / "homework-fhir.toml", settings, conn)
    dead = f"127.0.0.1:{pipeline_triton.metrics_port + 0}"  # metrics port: no inference API
    config.write_text(config.read_text().replace(str(settings.model.triton_url), dead))

    result = runner.invoke(app, ["run", "--once", "--config", str(config)])

    assert result.exit_code == 1
    assert "error: model server unavailable, run stopped" in result.stderr
    assert "Traceback" not in result.output
    store = open_store(settings.database_url)
    try:
        with store.session() as session:
            waiting = work.encounters_at(session, CONNECTION, [Step.DETECT])
        assert len(waiting) == 1  # stopped at the first one, the error kept, not counted
        assert waiting[0].attempts == 0 and str(waiting[0].last_error).startswith("model: ")
    finally:
        store.close()


def test_run_stops_at_start_up_on_a_target_the_vendor_refuses(
    sekmet_server: SekmetServer, pipeline_triton: TritonHandle, tmp_path: Path
) -> None:
    clinic = seed_clinic(sekmet_server, sessions=1, in_progress=False)
    conn = connection(sekmet_server, clinic, vendor="epic", care_plan_store="ehr")
    settings = settings_for(tmp_path, [conn], triton=pipeline_triton)
    config = config_toml(tmp_path / "homework-fhir.toml", settings, conn)

    result = runner.invoke(app, ["run", "--once", "--config", str(config)])

    assert result.exit_code == 1
    assert "error: EHR connection 'clinic': 2 configured target(s) cannot work" in result.stderr
    assert "CarePlan create, refused by vendor epic" in result.stderr
    assert "Traceback" not in result.output


def test_run_polls_pass_after_pass_until_interrupted(
    sekmet_server: SekmetServer, pipeline_triton: TritonHandle, tmp_path: Path
) -> None:
    """Without --once, `run` polls every --interval seconds in one process: sessions charted
    after the first pass are processed by a later one (through the same model client), and
    Ctrl-C stops it cleanly."""
    clinic = seed_clinic(sekmet_server, sessions=1, in_progress=False)
    conn = connection(sekmet_server, clinic, care_plan_store="builtin", communication=False)
    settings = settings_for(tmp_path, [conn], triton=pipeline_triton)
    config = config_toml(tmp_path / "homework-fhir.toml", settings, conn)
    executable = Path(sys.executable).parent / "homework-fhir"
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(executable), "run", "--interval", "1", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_done(settings.database_url, 2, process, log_path)
        seed_session(sekmet_server, clinic, 2)
        _wait_for_done(settings.database_url, 4, process, log_path)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0, log_path.read_text()
        # SIGTERM (what Kubernetes sends) stops it the same way, once it runs its passes.
        passes = log_path.read_text().count("encounters new")
        process = subprocess.Popen(
            [str(executable), "run", "--interval", "1", "--config", str(config)],
            stdout=log_path.open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while log_path.read_text().count("encounters new") == passes:
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = log_path.read_text()
    assert "stopped" in output and "Traceback" not in output, output
    assert "encounters failed     0" in output and "encounters failed     1" not in output


def _wait_for_done(
    database_url: str, count: int, process: subprocess.Popen[bytes], log_path: Path
) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, f"run exited:\n{log_path.read_text()}"
        store = open_store(database_url)
        try:
            with store.session() as session:
                rows = work.encounters_at(session, CONNECTION, list(Step))
            failed = [r.last_error for r in rows if r.last_error]
            assert not failed, f"{failed}\n{log_path.read_text()}"
            if sum(1 for r in rows if r.step == Step.DONE) >= count:
                return
        finally:
            store.close()
        time.sleep(0.5)
    raise AssertionError(f"{count} encounters not done in time:\n{log_path.read_text()}")


@pytest.mark.parametrize("command", ["run", "backfill"])
def test_no_trained_model_is_one_line_and_exit_2(tmp_path: Path, command: str) -> None:
    empty = tmp_path / "no-model"
    empty.mkdir()
    config = tmp_path / "homework-fhir.toml"
    config.write_text(
        'environment = "development"\n'
        f'data_dir = "{tmp_path / "data"}"\n'
        f'[model]\nmodel_dir = "{empty}"\n'
        '[api.auth]\nmode = "dev-embedded"\n'
        '[ehr.clinic]\nbase_url = "http://127.0.0.1:9/fhir"\n'
    )
    args = [command, "--config", str(config)]
    if command == "backfill":
        args.insert(1, str(sample_export_dir()))
    else:
        args.append("--once")

    result = runner.invoke(app, args)

    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        f"error: no model card at {empty / 'model_card.json'}; run `homework-fhir train`"
    ]
    assert not (tmp_path / "data").exists()  # stopped before opening the store


@pytest.mark.parametrize("command", ["backfill", "demo"])
def test_a_data_dir_that_is_a_file_is_one_line_and_exit_2(tmp_path: Path, command: str) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    if command == "demo":
        args = ["demo", "--data-dir", str(afile), "--no-serve"]
    else:
        # A model server nobody answers on: no model is loaded, the store is opened next.
        config = tmp_path / "homework-fhir.toml"
        config.write_text(
            f'environment = "development"\ndata_dir = "{afile}"\n'
            '[model]\nbackend = "triton"\ntriton_url = "127.0.0.1:9"\n'
            '[api.auth]\nmode = "dev-embedded"\n'
        )
        args = ["backfill", str(sample_export_dir()), "--config", str(config)]

    result = runner.invoke(app, args)

    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    error = result.stderr.strip().splitlines()[-1]  # backfill logs the dead model server first
    says = "pass a folder" if command == "demo" else "data_dir must be a folder"
    assert error.startswith("error: cannot ") and str(afile) in error and says in error
