"""Replicas: several `homework-fhir run --once` processes at once on one PostgreSQL store.

They start together on an empty database (so they race on the migration too), poll the same
EHR (sekmet) and share the model server. Between them every encounter is processed once and
every write lands once: the EHR holds exactly what one process would have written.
"""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select

from fhir_adapter.store import open_store, outbox
from fhir_adapter.store.models import EncounterRow, OutboxRow
from mapping.fhir.codes import SID_CAREPLAN, SID_NOTE, SID_TASK
from tests.databases import postgres_database
from tests.fhir_adapter.pipeline.checks import ehr_side, note_provenance_counts, store_side
from tests.fhir_adapter.pipeline.seed import seed_clinic
from tests.fhir_adapter.pipeline.support import (
    TritonHandle,
    config_toml,
    connection,
    settings_for,
)
from tests.fhir_adapter.sekmet_server import SekmetServer

postgres = contextmanager(postgres_database)


def _summary(output: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in output.splitlines():
        key, _, value = line.rpartition("  ")
        if value.strip().isdigit():
            counts[key.strip().replace(" ", "_")] = int(value)
    return counts


@pytest.mark.parametrize("processes", [2, 4])
def test_overlapping_runs_on_postgresql_write_everything_exactly_once(
    sekmet_server: SekmetServer, pipeline_triton: TritonHandle, tmp_path: Path, processes: int
) -> None:
    clinic = seed_clinic(sekmet_server, in_progress=False)
    conn = connection(sekmet_server, clinic, care_plan_store="ehr")
    with postgres() as database_url:
        settings = settings_for(tmp_path, [conn], database_url=database_url,
                                triton=pipeline_triton)  # fmt: skip
        config = config_toml(tmp_path / "homework-fhir.toml", settings, conn)
        command = [str(Path(sys.executable).parent / "homework-fhir"), "run", "--once",
                   "-c", str(config)]  # fmt: skip
        running = [
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(processes)
        ]
        results = [(p.wait(timeout=600), *p.communicate()) for p in running]
        for code, out, err in results:
            assert code == 0, f"exit {code}\n{out}\n{err}"
            assert "Traceback" not in err
        summaries = [_summary(out) for _, out, _ in results]

        store = open_store(settings.database_url)
        try:
            with store.session() as session:
                steps = [row.step for row in session.scalars(select(EncounterRow))]
                rows = list(session.scalars(select(OutboxRow)))
            assert steps == ["done"] * 4
            # Each encounter processed by one process. Each row written at least once; more
            # when a process had already sent the first session's Task before another one's
            # draft of the second session updated its review status (an update by id, which
            # the EHR-side counts below show is not a duplicate).
            assert sum(s["encounters_processed"] for s in summaries) == 4
            assert sum(s["encounters_new"] for s in summaries) == 4
            assert {r.status for r in rows} == {outbox.OutboxStatus.DONE}
            assert sum(s["writes_done"] for s in summaries) >= len(rows)

            ours, ehr = store_side(store), ehr_side(sekmet_server, clinic, store)
            assert ours.duplicates() == {} and ehr.duplicates() == {}
            for system in (SID_CAREPLAN, SID_TASK, SID_NOTE):
                assert ehr.by_system[system] == ours.by_system[system]
            assert ehr.provenance == ours.provenance
            notes = note_provenance_counts(sekmet_server, clinic)
            assert notes == dict.fromkeys(ours.by_system[SID_NOTE], 1)  # one Provenance each
        finally:
            store.close()
