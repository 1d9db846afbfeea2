"""Fidelity at scale: `$evaluate-measure`, outcome linkage and the SQL views over a store of
N stored resources, on SQLite and PostgreSQL.

The store is filled with copies of what the real pipeline wrote for the bundled samples (run
`homework-fhir demo --no-serve --data-dir DIR` first and pass `--demo DIR`): each copy moves the
9 sessions to new patients, encounters, therapists (20), clinics (3) and weeks (over two
years), so notes, Tasks, CarePlans, Provenances and scores keep their real shape. Then, 5 runs
each (median, max):

- `evaluate_measure` review rate and assignment rate for one quarter (what
  `GET /fhir/Measure/{id}/$evaluate-measure` runs), and outcome linkage for the quarter;
- `materialise`: a full build, then a refresh after 100 Tasks changed (without the overlap);
- the published `review_rate_by_therapist` SQL for the quarter over the views.

    .venv/bin/python bench/quality_scale.py --demo var/demo [--resources 100000]
        [--databases sqlite,postgresql] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _paths import check_folder, check_output_file

from fhir_adapter.quality import MeasureRequest, course_outcomes, evaluate_measure
from fhir_adapter.quality.views import materialise, run_query
from fhir_adapter.store import Store, open_store, resources
from tests.databases import postgres_database

TYPES = ("Task", "DocumentReference", "Observation", "CarePlan", "Provenance", "Communication")
BATCH = 500
RUNS = 5
QUARTER = (date(2026, 4, 1), date(2026, 6, 30))


def sample(demo: Path) -> list[dict[str, Any]]:
    store = open_store(f"sqlite:///{demo / 'demo.sqlite3'}")
    try:
        with store.session() as session:
            out: list[dict[str, Any]] = []
            for rtype in TYPES:
                found, _ = resources.search(session, resources.Query(rtype, count=10_000))
                out.extend(found)
        return out
    finally:
        store.close()


def _shift(value: str, days: int) -> str:
    if "T" not in value:
        return value
    when = datetime.fromisoformat(value.replace("Z", "+00:00")) + timedelta(days=days)
    return when.isoformat().replace("+00:00", "Z")


def copies(base: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Endless renamed copies of the sample resources."""
    text = [json.dumps({k: v for k, v in r.items() if k != "meta"}) for r in base]
    for n in range(10**9):
        days = 7 * (n % 100)  # ~two years of weeks, starting in 2025
        therapist, clinic = n % 20, n % 3
        for body in text:
            s = (
                body.replace("Patient/pat-", f"Patient/c{n}-")
                .replace("Encounter/enc-", f"Encounter/c{n}-")
                .replace("Practitioner/prac-1", f"Practitioner/t{therapist}")
                .replace("Practitioner/prac-2", f"Practitioner/t{(therapist + 7) % 20}")
                .replace("Organization/clinic-1", f"Organization/k{clinic}")
            )
            r = json.loads(s)
            r["id"] = f"c{n}-{r['id']}"[:64]
            for ident in r.get("identifier") or ():
                ident["value"] = f"c{n}-{ident['value']}"
            yield _dates(r, days)


def _dates(r: dict[str, Any], days: int) -> dict[str, Any]:
    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (_shift(v, days) if isinstance(v, str) and k in _DATE_KEYS else walk(v))
                    for k, v in node.items()}  # fmt: skip
        if isinstance(node, list):
            return [walk(x) for x in node]
        return node

    out: dict[str, Any] = walk(r)
    return out


_DATE_KEYS = {"authoredOn", "lastModified", "date", "start", "end", "effectiveDateTime", "sent",
              "created", "creation", "issued"}  # fmt: skip


def fill(store: Store, base: list[dict[str, Any]], n: int) -> float:
    t0 = time.perf_counter()
    source = copies(base)
    done = 0
    while done < n:
        with store.session() as session:
            for _ in range(min(BATCH, n - done)):
                resources.put(session, next(source))
                done += 1
        print(f"  filled {done}", file=sys.stderr, end="\r")
    store.refresh_statistics()
    return time.perf_counter() - t0


def timed(fn: Callable[[], Any], runs: int = RUNS) -> dict[str, float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return {"median_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1)}


def measure(store: Store, base: list[dict[str, Any]], n: int) -> dict[str, Any]:
    out: dict[str, Any] = {"resources": n, "fill_s": round(fill(store, base, n), 1)}
    quarter = MeasureRequest(*QUARTER)
    out["review_rate_quarter"] = timed(
        lambda: evaluate_measure(store, "homework-review-rate", quarter)
    )
    out["assignment_rate_quarter"] = timed(
        lambda: evaluate_measure(store, "homework-assignment-rate", quarter)
    )
    out["outcomes_quarter"] = timed(lambda: course_outcomes(store, quarter))
    out["views_full"] = timed(lambda: materialise(store, full=True), runs=1)
    with store.session() as session:
        found, _ = resources.search(session, resources.Query("Task", count=100))
        for t in found:
            resources.put(session, {**t, "description": t.get("description", "") + " (edited)"})
    # No overlap: everything here was written minutes ago, so the default 10-minute overlap
    # would re-read it all; in production the overlap re-reads only the last 10 minutes.
    out["views_after_100_changes"] = timed(lambda: materialise(store, overlap=timedelta(0)), runs=1)
    out["sql_review_rate_by_therapist_quarter"] = timed(
        lambda: run_query(store, "review_rate_by_therapist", *QUARTER)
    )
    report = evaluate_measure(store, "homework-review-rate", quarter)
    out["quarter_tasks"] = report["group"][0]["population"][0]["count"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", type=Path, required=True, help="a `homework-fhir demo` data dir")
    parser.add_argument("--resources", type=int, default=100_000)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    # sample() opens demo.sqlite3 with SQLite, which would make an empty one where it is absent.
    hint = "run `homework-fhir demo --no-serve --data-dir DIR` and pass that DIR"
    check_folder(parser, args.demo, "--demo", ["demo.sqlite3"], hint)
    check_output_file(parser, args.json, "--json")
    base = sample(args.demo)
    results = {}
    for db in args.databases.split(","):
        if db == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                store = open_store(f"sqlite:///{tmp}/bench.sqlite3")
                results[db] = measure(store, base, args.resources)
                store.close()
        else:
            database = postgres_database()
            try:
                store = open_store(next(database))
                results[db] = measure(store, base, args.resources)
                store.close()
            finally:
                database.close()
        print(json.dumps({db: results[db]}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
