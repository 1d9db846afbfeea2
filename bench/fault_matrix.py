"""Fault matrix: workers x faults x rounds, and what the EHR holds afterwards.

Each cell seeds a clinic (two patients, two sessions each) on a fresh loopback FHIR server
(sekmet-fhir) behind a fault proxy, gives it an empty PostgreSQL database, runs N
`homework-fhir worker --once` processes at once while the fault happens, then lets the fault
end and runs one clean `worker --once` (what the next scheduled run would do), with the time
it would come after simulated: the faulted processes' leases and outbox claims run out and
their heartbeats go stale. Where that run leaves sessions whose jobs wait for a retry (a job
that found its patient held by a worker that died, or the database gone, backs off 5 s, 25 s,
125 s, ...), the jobs are made due and one more clean run goes (`left_after_first_clean_run`
counts those sessions). It counts:

- lost: sessions not `done` after the clean run(s);
- duplicated: business identifiers present more than once in the EHR (notes, Tasks, CarePlans,
  Communications) or Provenance ids written twice;
- provenance: chart notes without exactly one Provenance.

Faults: ``ehr-errors`` (429 with Retry-After and 500s on writes and searches), ``ehr-network``
(timeouts, dropped connections, answers cut mid-body), ``model-down`` (Triton killed mid-run,
restarted for the clean run), ``kill-worker`` (SIGKILL of the worker in one step of a session,
the step chosen by the round: ``fetch`` with its transcript search in flight, ``detect`` and
``draft`` when the session's row shows that step and the worker holds its patient, ``write``
with the chart note's create forwarded to the EHR and its answer held back),
``overlap`` (two `run --once` beside the workers), ``pg-restart`` (PostgreSQL restarted, fast
shutdown, while a patient's job runs: every connection of every worker is cut), ``none`` (the
baseline). Workers a fault ends are not restarted during the cell: the clean run is what a
supervisor (Kubernetes, systemd) starting them again would do.

``pg-restart`` runs on a PostgreSQL cluster of the script's own (initdb in a temporary folder,
run as the `postgres` user on a free port), so the machine's shared server is never restarted;
the other faults use the shared server, as the tests do.

    .venv/bin/python bench/fault_matrix.py --rounds 20 --lanes 3 --json matrix.jsonl  # all
    .venv/bin/python bench/fault_matrix.py --workers 2 --faults kill-worker --rounds 3

Needs PostgreSQL on 127.0.0.1, as the tests do. Run from the repository root.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import psycopg
from _paths import check_output_file
from sqlalchemy import func, select, text
from tqdm import tqdm

from fhir_adapter.queue import conninfo
from fhir_adapter.store import Store, open_store
from fhir_adapter.store.models import EncounterRow
from inference_server.triton_server import build_repository
from mapping.fhir.codes import SID_NOTE
from tests.databases import postgres_database
from tests.fhir_adapter.pipeline import fault_proxy as faults
from tests.fhir_adapter.pipeline.checks import ehr_side, note_provenance_counts
from tests.fhir_adapter.pipeline.seed import seed_clinic
from tests.fhir_adapter.pipeline.support import (
    TritonHandle,
    config_toml,
    connection,
    settings_for,
)
from tests.fhir_adapter.sekmet_server import start_sekmet

FAULTS = ("none", "ehr-errors", "ehr-network", "model-down", "kill-worker", "overlap",
          "pg-restart")  # fmt: skip
PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), default=Path("/usr/lib/postgresql/bin"))
QUEUE = '\n[queue]\nbackend = "procrastinate"\nconcurrency = 1\n'
OUTCOME = (b'{"resourceType": "OperationOutcome", "issue": [{"severity": "error", '
           b'"code": "transient", "diagnostics": "busy"}]}')  # fmt: skip


def _plan(proxy: faults.FaultProxy, fault: str, rng: random.Random) -> None:
    if fault == "ehr-errors":
        for method, path in (("POST", "/DocumentReference"), ("PUT", "/Task"),
                             ("GET", "/Encounter"), ("POST", "/Provenance")):  # fmt: skip
            proxy.add(method, path, faults.status(429, OUTCOME, retry_after=1),
                      faults.status(500, OUTCOME))  # fmt: skip
    elif fault == "ehr-network":
        proxy.add("POST", "/DocumentReference", faults.forward_then_drop())
        proxy.add("PUT", "/CarePlan", faults.drop())
        proxy.add("GET", "/DocumentReference", faults.delay(rng.uniform(1, 3)))


def _command(config: Path, *args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "homework-fhir"), *args, "-c", str(config)]


def _start(command: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # noqa: S603 - our own CLI


def _watch(
    database_url: str, running: list[subprocess.Popen[str]], query: str, params: tuple[Any, ...],
    every_s: float,
) -> Iterator[list[tuple[Any, ...]]]:
    """The rows of `query`, again every `every_s`, while a process of `running` runs (at most
    two minutes); no rows until the tables exist."""
    deadline = time.monotonic() + 120
    with psycopg.connect(conninfo(database_url), autocommit=True) as conn:
        while time.monotonic() < deadline and any(p.poll() is None for p in running):
            try:
                yield conn.execute(query, params).fetchall()
            except psycopg.errors.UndefinedTable:
                yield []
            time.sleep(every_s)


def _wait_for_a_running_job(database_url: str, running: list[subprocess.Popen[str]]) -> None:
    query = ("SELECT 1 FROM procrastinate_jobs WHERE status = 'doing' "
             "AND task_name = 'pipeline:process_patient'")  # fmt: skip
    for rows in _watch(database_url, running, query, (), every_s=0.02):
        if rows:
            return


KILL_STEPS = ("fetch", "detect", "draft", "write")
_MIGRATING = threading.Lock()


def _pid_of_peer(peer: tuple[str, int], candidates: list[int]) -> int | None:
    """Which of `candidates` owns the loopback TCP connection whose local end is `peer`."""
    port = f"{peer[1]:04X}"
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(f":{port}"):
                inodes.add(f"socket:[{fields[9]}]")
    for pid in candidates:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return pid
    return None


def _pid_in_step(
    database_url: str, step: str, running: list[subprocess.Popen[str]]
) -> int | None:
    """The worker holding the patient of a session whose row shows `step`, once one does (the
    lease is named as `runner.patient_lease` names it; its owner ends in ":<pid>:<nonce>")."""
    pids = {p.pid for p in running}
    query = ("SELECT l.owner FROM encounter_work e JOIN lease l "
             "ON l.name = 'patient:' || e.connection || ':' || e.patient "
             "WHERE e.step = %s AND l.expires_at > now()")  # fmt: skip
    for rows in _watch(database_url, running, query, (step,), every_s=0.005):
        for (owner,) in rows:
            if int(owner.split(":")[-2]) in pids:
                return int(owner.split(":")[-2])
    return None


class PrivatePostgres:
    """A PostgreSQL cluster of this script's own, which a fault may restart."""

    def __init__(self, root: Path) -> None:
        self.data = root / "pgdata"
        self.port = _free_port()

    def _as_postgres(self, *args: str) -> None:
        # No pipes: the server started by pg_ctl would hold them open.
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True,  # noqa: S603, S607
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=120)  # fmt: skip

    def start(self) -> None:
        if not self.data.exists():
            self.data.mkdir(parents=True)
            shutil.chown(self.data, "postgres", "postgres")
            self._as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust",
                              "-U", "postgres")  # fmt: skip
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1"
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-w",
                          "-l", str(self.data / "log"), "start")  # fmt: skip

    def restart(self) -> None:
        """Fast shutdown (every connection cut, in-flight transactions rolled back), then up."""
        # -t: a loaded machine can take more than pg_ctl's default minute to come back.
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                          "-t", "300", "-l", str(self.data / "log"), "restart")  # fmt: skip

    def stop(self) -> None:
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                          "stop")  # fmt: skip

    def database(self, name: str) -> str:
        admin = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _private_postgres(root: Path) -> Iterator[PrivatePostgres]:
    root.mkdir(parents=True, exist_ok=True)
    shutil.chown(root, "postgres", "postgres")
    pg = PrivatePostgres(root)
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()


@contextmanager
def _triton(root: Path) -> Iterator[TritonHandle]:
    repo = build_repository(root / "repository", precision="int8")
    handle = TritonHandle(repo, root)
    handle.start()
    try:
        yield handle
    finally:
        handle.stop()


def _let_time_pass(store: Store, retries: bool) -> None:
    """What waiting would do before the next scheduled run: claims and leases of the faulted
    processes run out, their heartbeats go stale (their jobs count as stalled after 30 s), and
    with `retries` the jobs waiting for a retry come due."""
    with store.session() as session:
        session.execute(text("UPDATE outbox SET next_attempt_at = now() WHERE status = 'pending'"))
        session.execute(text("DELETE FROM lease"))
        session.execute(text(
            "UPDATE procrastinate_workers SET last_heartbeat = now() - interval '1 hour'"
        ))
        session.execute(text("UPDATE encounter_work SET retry_at = NULL"))
        if retries:
            session.execute(text(
                "UPDATE procrastinate_jobs SET scheduled_at = now() "
                "WHERE status = 'todo' AND scheduled_at > now()"
            ))


def _left(store: Store) -> tuple[list[str], list[list[Any]]]:
    """Sessions not done (ids and steps only), and the queue's jobs by task and status."""
    with store.session() as session:
        pending = select(EncounterRow).where(EncounterRow.step != "done")
        left = [f"{r.encounter} {r.step} attempts={r.attempts}" for r in session.scalars(pending)]
        jobs = session.execute(text(
            "SELECT task_name, status, count(*) FROM procrastinate_jobs GROUP BY 1, 2 ORDER BY 1, 2"
        )).all()
    return left, [list(j) for j in jobs]


def one_cell(
    workers: int,
    fault: str,
    seed: int,
    root: Path,
    triton: TritonHandle,
    pg: PrivatePostgres | None = None,
) -> dict[str, Any]:
    rng = random.Random(seed)  # noqa: S311 - fault timing, not cryptography
    with ExitStack() as stack:
        cell = f"{workers}-{fault}-{seed}"
        server = stack.enter_context(start_sekmet(root / f"sekmet-{cell}"))
        proxy = stack.enter_context(faults.fault_proxy(server.root_url, server.base_url))
        clinic = seed_clinic(server, in_progress=False)
        if fault == "pg-restart":
            assert pg is not None
            database_url = pg.database(f"cell_{workers}_{seed}")
        else:
            database_url = stack.enter_context(contextmanager(postgres_database)())
        conn = connection(server, clinic, care_plan_store="ehr", base_url=proxy.base_url)
        settings = settings_for(root, [conn], database_url=database_url, triton=triton)
        config = config_toml(root / f"cell-{cell}.toml", settings, conn)
        config.write_text(config.read_text() + QUEUE)
        _plan(proxy, fault, rng)
        kill_step = KILL_STEPS[seed % len(KILL_STEPS)] if fault == "kill-worker" else None
        reached = threading.Event()
        hang = faults.forward_then_hang(reached)
        if kill_step == "fetch":  # the session's transcript search
            proxy.add("GET", "/DocumentReference", hang, query="encounter=")
        elif kill_step == "write":  # the chart note's create: it lands, its answer never comes
            proxy.add("POST", "/DocumentReference", hang)
        running = [_start(_command(config, "worker", "--once")) for _ in range(workers)]
        if fault == "overlap":
            running += [_start(_command(config, "run", "--once")) for _ in range(2)]
        hit = fault in ("none", "overlap", "ehr-errors", "ehr-network")
        if fault in ("model-down", "pg-restart"):
            # Strike while sessions are being processed: once a patient's job runs, after a
            # random part of a second more.
            _wait_for_a_running_job(database_url, running)
            time.sleep(rng.uniform(0.0, 1.0))
        victim: int | None = None
        if kill_step in ("fetch", "write"):
            deadline = time.monotonic() + 120
            while not reached.wait(0.05) and time.monotonic() < deadline:
                if all(p.poll() is not None for p in running):
                    break
            if reached.is_set() and hang.peer is not None:
                victim = _pid_of_peer(hang.peer, [p.pid for p in running])
        elif kill_step in ("detect", "draft"):
            victim = _pid_in_step(database_url, kill_step, running)
        if victim is not None:
            os.kill(victim, signal.SIGKILL)
            hit = True
        if kill_step is not None:
            proxy.release()
        if fault == "model-down":
            hit = any(p.poll() is None for p in running)
            triton.kill()
        if fault == "pg-restart":
            assert pg is not None
            hit = any(p.poll() is None for p in running)
            pg.restart()
        exits = []
        for proc in running:
            proc.communicate(timeout=1800)
            exits.append(proc.returncode)
        if not triton.running():
            triton.start()
        # The fault is over: the next scheduled run. Claims a killed worker held run out after
        # their lease; the clean run waits for nothing, so expire them as time would.
        with _MIGRATING:  # Alembic's migration context is global to the process: one lane at a time
            store = open_store(database_url)
        try:
            with store.session() as session:
                # How far the faulted run got: what the clean run had left to do.
                done_in_fault = session.scalar(
                    select(func.count()).where(EncounterRow.step == "done")
                )
            _let_time_pass(store, retries=False)
            clean = _start(_command(config, "worker", "--once"))
            clean_out, clean_err = clean.communicate(timeout=1800)
            left, jobs = _left(store)
            second: subprocess.Popen[str] | None = None
            if left:
                # A job that found the patient held (by a worker that died, until its lease ran
                # out) or the database gone waits for its retry (5 s, 25 s, 125 s, ...): the run
                # after that is what time would bring.
                _let_time_pass(store, retries=True)
                second = _start(_command(config, "worker", "--once"))
                second.communicate(timeout=1800)
            with store.session() as session:
                done = session.scalar(select(func.count()).where(EncounterRow.step == "done"))
            ehr = ehr_side(server, clinic, store)
            notes = note_provenance_counts(server, clinic)
        finally:
            store.close()
        sessions = len(clinic.encounters)
        return {
            "workers": workers,
            "fault": fault,
            "seed": seed,
            "fault_hit_a_running_worker": hit,
            **({"kill_step": kill_step} if kill_step else {}),
            "lost": sessions - int(done or 0),
            "duplicated": sum(len(v) for v in ehr.duplicates().values()),
            "notes": len(notes),
            "notes_without_one_provenance": sum(1 for n in notes.values() if n != 1),
            "notes_expected": ehr.count(SID_NOTE),
            "done_before_clean_run": int(done_in_fault or 0),
            "worker_exits": exits,
            "clean_exit": clean.returncode,
            **({"clean_stderr": clean_err[-1500:]} if clean.returncode else {}),
            # Sessions the first clean run left waiting on a retry, and what the queue held.
            "left_after_first_clean_run": len(left),
            **({"left": left, "jobs": jobs, "clean_stdout": clean_out[-800:]} if left else {}),
            **({"second_clean_exit": second.returncode} if second is not None else {}),
        }


class Lane:
    """What one lane of cells owns: a Triton and, for ``pg-restart``, a PostgreSQL cluster, so
    that a lane killing its Triton or restarting its database never touches another lane."""

    def __init__(self, root: Path, stack: ExitStack, with_pg: bool) -> None:
        self.root = root
        self.triton = stack.enter_context(_triton(root / "triton"))
        self.pg = stack.enter_context(_private_postgres(root / "pg")) if with_pg else None


def _summary(cells: list[dict[str, Any]]) -> str:
    table: dict[tuple[int, str], dict[str, int]] = {}
    for cell in cells:
        row = table.setdefault((cell["workers"], cell["fault"]), {
            "rounds": 0, "hit": 0, "lost": 0, "duplicated": 0, "bad_provenance": 0})  # fmt: skip
        row["rounds"] += 1
        row["hit"] += bool(cell["fault_hit_a_running_worker"])
        row["lost"] += cell["lost"]
        row["duplicated"] += cell["duplicated"]
        row["bad_provenance"] += cell["notes_without_one_provenance"]
    lines = ["| workers | fault | rounds | fault struck a running worker | lost sessions "
             "| duplicated writes | notes without one Provenance |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for (workers, fault), row in sorted(table.items()):
        lines.append(f"| {workers} | {fault} | {row['rounds']} | {row['hit']} | {row['lost']} "
                     f"| {row['duplicated']} | {row['bad_provenance']} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--lanes", type=int, default=1,
                        help="cells run side by side, each lane with its own Triton and "
                             "PostgreSQL cluster (the cells mostly wait: 3 suit 2 cores)")
    parser.add_argument("--json", type=Path,
                        help="one JSON line per cell, appended as cells finish; cells already "
                             "in the file are not run again (resume after an interruption)")
    args = parser.parse_args()
    # Stopped with SIGTERM (kill, a CI timeout): unwind, so the Tritons, FHIR servers and
    # PostgreSQL clusters started here are stopped too; finished cells stay in --json.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    chosen = args.faults.split(",")
    unknown = sorted(set(chosen) - set(FAULTS))
    if unknown:
        parser.error(f"unknown fault {', '.join(unknown)}; choose from {', '.join(FAULTS)}")
    check_output_file(parser, args.json, "--json")  # appended to: an existing file resumes
    done: list[dict[str, Any]] = []
    seen: set[tuple[int, str, int]] = set()
    if args.json and args.json.exists():
        try:
            done = [json.loads(line) for line in args.json.read_text().splitlines() if line.strip()]
            seen = {(c["workers"], c["fault"], c["seed"]) for c in done}
        except (ValueError, KeyError, TypeError):  # not JSON, not UTF-8, or other JSON
            parser.error(
                f"--json {args.json} does not hold this script's cells (one JSON object a "
                "line); pass a new file, or one an earlier run wrote, to resume"
            )
    # Round by round, so that a run cut short still covers every cell.
    todo: queue.SimpleQueue[tuple[int, str, int]] = queue.SimpleQueue()
    total = 0
    for seed in range(args.rounds):
        for workers in [int(w) for w in args.workers.split(",")]:
            for fault in chosen:
                if (workers, fault, seed) not in seen:
                    todo.put((workers, fault, seed))
                    total += 1
    cells = [c for c in done if c["fault"] in chosen]
    lock = threading.Lock()
    progress = tqdm(total=total, desc="cells", unit="cell", file=sys.stderr)

    def run_lane(lane: Lane) -> None:
        while True:
            try:
                workers, fault, seed = todo.get_nowait()
            except queue.Empty:
                return
            cell = one_cell(workers, fault, seed, lane.root, lane.triton, lane.pg)
            with lock:
                cells.append(cell)
                print(json.dumps(cell), flush=True)
                if args.json:
                    with args.json.open("a") as out:
                        out.write(json.dumps(cell) + "\n")
                progress.update()

    with tempfile.TemporaryDirectory(prefix="fault-matrix-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # the private PostgreSQL runs as `postgres` under it
        with ExitStack() as stack:
            lanes = []
            for n in range(max(1, args.lanes)):
                (root / f"lane-{n}").mkdir()
                (root / f"lane-{n}").chmod(0o755)
                lanes.append(Lane(root / f"lane-{n}", stack, "pg-restart" in chosen))
            with ThreadPoolExecutor(len(lanes)) as pool:
                for future in [pool.submit(run_lane, lane) for lane in lanes]:
                    future.result()
    progress.close()
    print(_summary(cells))


if __name__ == "__main__":
    main()
