"""Prometheus metrics: what waits (from the database, so every replica reports the same
truth) and how long things take (histograms of this process).

`GET /metrics` on the API (bearer token required, like every route but health checks) serves
them in the Prometheus text format:

- ``homework_encounters{step}``: encounters per pipeline step (the queue depth of the
  pipeline: fetch, detect, draft waiting; failed = dead-lettered);
- ``homework_writes{status}``: outbox rows per status (pending, done, failed);
- ``homework_jobs{task,status}``: task-queue jobs, where the queue is on;
- ``homework_step_seconds{step}``: time per pipeline step in this process;
- ``homework_model_seconds``: time per model call (a session's micro-dialogues) in this process;
- ``homework_writes_total{outcome}``: writes attempted by this process, by outcome.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from fhir_adapter.store import Store
from fhir_adapter.store.models import EncounterRow, OutboxRow

# One registry for the process's own instruments; the store collector is added per app.
REGISTRY = CollectorRegistry(auto_describe=True)
STEP_SECONDS = Histogram(
    "homework_step_seconds", "Time per pipeline step in this process.", ["step"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300), registry=REGISTRY,
)  # fmt: skip
MODEL_SECONDS = Histogram(
    "homework_model_seconds", "Time per model call (one session's micro-dialogues).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30), registry=REGISTRY,
)  # fmt: skip
WRITES = Counter(
    "homework_writes", "Writes to FHIR servers attempted by this process, by outcome.",
    ["outcome"], registry=REGISTRY,
)  # fmt: skip


@contextmanager
def timed(histogram: Histogram, **labels: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        (histogram.labels(**labels) if labels else histogram).observe(
            time.perf_counter() - start
        )


class StoreCollector(Collector):
    """Gauges read from the database at scrape time."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Any]:
        encounters = GaugeMetricFamily(
            "homework_encounters", "Encounters per pipeline step.", labels=["step"]
        )
        writes = GaugeMetricFamily(
            "homework_writes_queued", "Outbox rows per status.", labels=["status"]
        )
        jobs = GaugeMetricFamily(
            "homework_jobs", "Task-queue jobs per task and status.", labels=["task", "status"]
        )
        try:
            with self.store.session() as session:
                for step, n in session.execute(
                    select(EncounterRow.step, func.count()).group_by(EncounterRow.step)
                ):
                    encounters.add_metric([str(step)], int(n))
                for status, n in session.execute(
                    select(OutboxRow.status, func.count()).group_by(OutboxRow.status)
                ):
                    writes.add_metric([str(status)], int(n))
                if self.store.engine.dialect.name == "postgresql":
                    found = session.execute(text("SELECT to_regclass('procrastinate_jobs')"))
                    if found.scalar() is not None:
                        for task, status, n in session.execute(text(
                            "SELECT task_name, status::text, count(*) "
                            "FROM procrastinate_jobs GROUP BY 1, 2"
                        )):  # fmt: skip
                            jobs.add_metric([str(task), str(status)], int(n))
        except SQLAlchemyError:
            return  # a scrape during a database outage shows no gauges; /readyz says why
        yield encounters
        yield writes
        yield jobs


def exposition(store: Store) -> bytes:
    """The metrics page: this process's instruments and the store's gauges."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    return generate_latest(REGISTRY) + generate_latest(registry)


def step_totals() -> dict[str, tuple[float, int]]:
    """Seconds and count per pipeline step (and "model") in this process, for summaries."""
    totals: dict[str, tuple[float, int]] = {}
    for histogram, label in ((STEP_SECONDS, None), (MODEL_SECONDS, "model")):
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for metric in histogram.collect():
            for sample in metric.samples:
                key = label or sample.labels.get("step", "")
                if sample.name.endswith("_sum"):
                    sums[key] = sample.value
                elif sample.name.endswith("_count"):
                    counts[key] = int(sample.value)
        for key, total in sums.items():
            totals[key] = (total, counts.get(key, 0))
    return totals
