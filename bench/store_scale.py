"""The built-in FHIR store as it fills: write time per resource and fidelity searches, at
1 k, 10 k and 100 k stored Tasks, on SQLite and PostgreSQL.

For each database: a fresh store; Tasks are written (`resources.put`, 500 a transaction) for
patients of 5 therapists, 4 a patient a month over a year, a third of them reviewed; at each
size the last batch's milliseconds per put are recorded, then each search runs 40 times
(p50, p95):

- `Task?patient=P` (one patient's homework)
- `Task?requester=R&authored-on=ge..&authored-on=lt..&business-status=reviewed&_summary=count`
  (a therapist's reviewed Tasks in a quarter: the fidelity question)
- `Task?authored-on=2026-03&_count=50` (a month, one page)

    .venv/bin/python bench/store_scale.py [--sizes 1000,10000,100000] [--json out.json]
        [--databases sqlite,postgresql]

PostgreSQL is the local one the tests use (127.0.0.1, or HOMEWORK_FHIR_TEST_PG_ADMIN_URL), in a
fresh database dropped afterwards. Run from the repository root.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _paths import check_output_file
from sqlalchemy import insert

from fhir_adapter.api.search import parse_query
from fhir_adapter.store import Store, open_store, resources
from fhir_adapter.store.models import IdentifierRow, ResourceRow, ResourceVersionRow
from fhir_adapter.store.search_index import extract
from tests.databases import postgres_database

THERAPISTS = 5
BATCH = 500
RUNS = 40
START = datetime(2026, 1, 1, tzinfo=UTC)


def task(n: int) -> dict[str, Any]:
    patient, visit = divmod(n, 48)
    authored = START + timedelta(days=visit * 7.5 % 365, hours=n % 9)
    return {
        "resourceType": "Task",
        "identifier": [{"system": "urn:bench", "value": f"t{n}"}],
        "status": "draft",
        "intent": "proposal",
        "for": {"reference": f"Patient/p{patient}"},
        "requester": {"reference": f"Practitioner/r{patient % THERAPISTS}"},
        "encounter": {"reference": f"Encounter/e{patient}-{visit}"},
        "code": {"coding": [{"system": "urn:hw", "code": ("practice", "journal")[n % 2]}]},
        "businessStatus": {"coding": [{"code": ("reviewed", "awaiting-review", "x")[n % 3]}]},
        "authoredOn": authored.isoformat().replace("+00:00", "Z"),
    }


SEARCHES: dict[str, list[tuple[str, str]]] = {
    "one patient": [("patient", "Patient/p7")],
    "therapist quarter reviewed, count": [
        ("requester", "Practitioner/r2"),
        ("authored-on", "ge2026-04-01"),
        ("authored-on", "lt2026-07-01"),
        ("business-status", "reviewed"),
        ("_summary", "count"),
    ],
    "a month, one page": [("authored-on", "2026-03"), ("_count", "50")],
}


def timed(fn: Callable[[], Any], runs: int) -> dict[str, float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    ordered = sorted(samples)
    return {"p50_ms": statistics.median(ordered), "p95_ms": ordered[int(0.95 * (runs - 1))]}


def bulk_fill(store: Store, start: int, stop: int) -> None:
    """Rows as `resources.put` leaves them (the same `extract`ed search columns, one version,
    the identifiers), inserted in large batches: filling 1 M resources through `put` takes
    hours here, and `put` itself is measured up to the sizes below `--bulk-above`."""
    now = datetime.now(UTC)
    for first in range(start, stop, 5000):
        resource_rows, version_rows, identifier_rows = [], [], []
        for n in range(first, min(stop, first + 5000)):
            body = {**task(n), "id": f"b{n}"}
            stored = {**body, "meta": {"versionId": "1", "lastUpdated": now.isoformat()}}
            c = extract(body)
            resource_rows.append({
                "resource_type": "Task", "id": body["id"], "version_id": 1, "last_updated": now,
                "body": stored, "patient": c.patient, "encounter": c.encounter,
                "status": c.status, "code_system": c.code_system, "code": c.code,
                "business_status": c.business_status, "date": c.date, "date_end": c.date_end,
                "practitioner": c.practitioner,
            })  # fmt: skip
            version_rows.append({"resource_type": "Task", "id": body["id"], "version_id": 1,
                                 "last_updated": now, "body": stored})  # fmt: skip
            identifier_rows += [{"resource_type": "Task", "system": system, "value": value,
                                 "id": body["id"]} for system, value in c.identifiers]  # fmt: skip
        with store.engine.begin() as connection:
            connection.execute(insert(ResourceRow), resource_rows)
            connection.execute(insert(ResourceVersionRow), version_rows)
            connection.execute(insert(IdentifierRow), identifier_rows)
        print(f"  bulk {min(stop, first + 5000)}", file=sys.stderr, end="\r")


def measure(store: Store, sizes: list[int], bulk_above: int) -> list[dict[str, Any]]:
    rows = []
    written = 0
    for size in sizes:
        put_ms: float | None = None if size > bulk_above else 0.0
        if size > bulk_above:
            bulk_fill(store, written, size)
            written = size
        while written < size:
            batch = range(written, min(size, written + BATCH))
            start = time.perf_counter()
            with store.session() as session:
                for n in batch:
                    resources.put(session, task(n))
            put_ms = (time.perf_counter() - start) * 1000 / len(batch)
            written = batch.stop
        # Statistics as the service keeps them: SQLite after each pass (refresh_statistics),
        # PostgreSQL by autovacuum, which a bench cannot wait for.
        store.refresh_statistics()
        if store.engine.dialect.name == "postgresql":
            with store.engine.begin() as connection:
                connection.exec_driver_sql("ANALYZE")
        row: dict[str, Any] = {"tasks": size, "put_ms_last_batch": put_ms}
        for name, params in SEARCHES.items():
            query = parse_query("Task", params)

            def run(query: Any = query) -> None:
                with store.session() as session:
                    resources.search(session, query)

            row[name] = timed(run, RUNS)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--bulk-above", type=int, default=100_000,
        help="sizes above this are filled by bulk insert (searches only; put is not timed)",
    )  # fmt: skip
    parser.add_argument(
        "--databases", default="sqlite,postgresql", help="which of sqlite,postgresql to run"
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    databases = args.databases.split(",")
    if unknown := set(databases) - {"sqlite", "postgresql"}:
        parser.error(f"unknown databases {sorted(unknown)}; choose sqlite, postgresql")
    check_output_file(parser, args.json, "--json")
    results: dict[str, Any] = {}
    if "sqlite" in databases:
        with tempfile.TemporaryDirectory() as root:
            store = open_store(f"sqlite:///{root}/bench.db")
            results["sqlite"] = measure(store, sizes, args.bulk_above)
            store.close()
    if "postgresql" in databases:
        database = postgres_database()
        try:
            store = open_store(next(database))
            results["postgresql"] = measure(store, sizes, args.bulk_above)
            store.close()
        finally:
            database.close()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
