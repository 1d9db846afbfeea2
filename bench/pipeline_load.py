"""Sessions per minute through the whole pipeline, with 1, 2 and 4 workers.

For each worker count: a fresh loopback FHIR server (sekmet-fhir, the test suite's), seeded
with `--clinics` practices of two patients and two sessions each (transcripts, PHQ-9s); a fresh
PostgreSQL database; then N `homework-fhir worker --once` processes started together (the job
queue: poll, process per patient, flush). Wall time runs from the start of the workers until the
last one exits, every session done and every write landed. Each worker prints the seconds it
spent per step; the table sums them over workers.

    .venv/bin/python bench/pipeline_load.py                         # in-process model
    .venv/bin/python bench/pipeline_load.py --model triton          # one Triton, shared
    .venv/bin/python bench/pipeline_load.py --workers 1,2 --clinics 5 --json out.json

Needs PostgreSQL on 127.0.0.1 (as the tests do). Run from the repository root.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _paths import check_output_file
from sqlalchemy import func, select

from fhir_adapter.store import open_store
from fhir_adapter.store.models import EncounterRow, OutboxRow
from inference_server.triton_server import TritonServer, build_repository, free_port
from tests.databases import postgres_database
from tests.fhir_adapter.pipeline.seed import seed_clinic
from tests.fhir_adapter.pipeline.support import config_toml, connection, settings_for
from tests.fhir_adapter.sekmet_server import start_sekmet

QUEUE = '\n[queue]\nbackend = "procrastinate"\nconcurrency = 1\n'


def _step_seconds(output: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in output.splitlines():
        if line.startswith("seconds "):
            name, _, rest = line[len("seconds ") :].partition("  ")
            out[name] = float(rest.split()[0])
    return out


def one_run(
    workers: int, clinics: int, model: str, triton_url: str | None, root: Path
) -> dict[str, Any]:
    with ExitStack() as stack:
        server = stack.enter_context(start_sekmet(root / f"sekmet-{workers}"))
        seeded = [seed_clinic(server, in_progress=False) for _ in range(clinics)]
        sessions = sum(len(c.encounters) for c in seeded)
        database_url = stack.enter_context(contextmanager(postgres_database)())
        # One connection polling the whole (fresh) server: every clinic's sessions.
        conn = connection(server, seeded[0], care_plan_store="ehr")
        conn = conn.model_copy(
            update={"encounter_poll": conn.encounter_poll.model_copy(update={"extra_params": {}})}
        )
        handle = type("T", (), {"url": triton_url})() if triton_url else None
        # One data_dir for every run: the int8 conversion is cached after the first.
        settings = settings_for(root, [conn], database_url=database_url,
                                triton=handle)  # type: ignore[arg-type]  # fmt: skip
        config = config_toml(root / f"run-{workers}.toml", settings, conn)
        text = config.read_text().replace('[ehr.clinic.encounter_poll.extra_params]\n', "")
        text = "\n".join(line for line in text.splitlines() if not line.startswith('"service-'))
        if model == "in-process":
            text = text.replace('backend = "triton"', 'backend = "in-process"')
        config.write_text(text + QUEUE)
        command = [str(Path(sys.executable).parent / "homework-fhir"), "worker", "--once",
                   "-c", str(config)]  # fmt: skip
        # Timed from the workers' start: includes each one loading the model (in parallel).
        start = time.perf_counter()
        procs = [
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # noqa: S603 - our own CLI
            for _ in range(workers)
        ]
        outputs = [p.communicate(timeout=3600) for p in procs]
        wall = time.perf_counter() - start
        for proc, (out, err) in zip(procs, outputs, strict=True):
            if proc.returncode != 0:
                raise SystemExit(f"worker exited {proc.returncode}:\n{out}\n{err[-3000:]}")
        store = open_store(database_url)
        try:
            with store.session() as session:
                done = session.scalar(
                    select(func.count()).where(EncounterRow.step == "done")
                )
                pending = session.scalar(
                    select(func.count()).where(OutboxRow.status != "done")
                )
        finally:
            store.close()
        steps: dict[str, float] = {}
        for out, _ in outputs:
            for name, seconds in _step_seconds(out).items():
                steps[name] = steps.get(name, 0.0) + seconds
        return {
            "workers": workers,
            "sessions": sessions,
            "done": done,
            "writes_not_done": pending,
            "wall_s": round(wall, 1),
            "sessions_per_min": round(60 * (done or 0) / wall, 1),
            "step_seconds": {k: round(v, 1) for k, v in sorted(steps.items())},
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--clinics", type=int, default=8, help="4 sessions each")
    parser.add_argument("--model", choices=["in-process", "triton"], default="in-process")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    check_output_file(parser, args.json, "--json")
    results = []
    with tempfile.TemporaryDirectory(prefix="pipeline-load-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        triton_url = None
        if args.model == "triton":
            repo = build_repository(root / "repository", precision="int8")
            http = free_port()
            server = TritonServer(
                repo, http_port=http, grpc_port=free_port(), metrics_port=free_port(),
                log_file=root / "triton.log",
            )  # fmt: skip
            stack.enter_context(server)
            triton_url = f"127.0.0.1:{http}"
        for workers in [int(w) for w in args.workers.split(",")]:
            result = one_run(workers, args.clinics, args.model, triton_url, root)
            results.append(result)
            print(json.dumps(result), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
