"""A backfill of past sessions carries the sessions' dates, not the day it ran: Tasks are
authored when their session started, CarePlans created then, notes and messages dated at its
end; only Provenance.recorded and meta.lastUpdated are the processing time. A fidelity query by
session date finds them."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from fhir_adapter.pipeline.jobs import ingest_resources
from fhir_adapter.runtime import open_runtime
from fhir_adapter.samples.build import build_resources
from fhir_adapter.store import resources
from fhir_adapter.store.resources import DateBound, Query
from fhir_adapter.store.search_index import parse_datetime, parse_range
from tests.fhir_adapter.pipeline.support import settings_for

pytestmark = pytest.mark.integration


async def test_a_backfill_carries_the_sessions_dates(tmp_path: Path) -> None:
    by_type = build_resources()
    periods = {f"Encounter/{e['id']}": e["period"] for e in by_type["Encounter"]}
    settings = settings_for(tmp_path, [])
    # Instants are written to the second: the run's start, to the second.
    started = datetime.now(UTC).replace(microsecond=0)
    async with open_runtime(settings) as runtime:
        await ingest_resources(runtime, [r for kind in by_type.values() for r in kind])
        with runtime.store.session() as s:
            tasks, _ = resources.search(s, Query("Task", count=1000))
            plans, _ = resources.search(s, Query("CarePlan", count=1000))
            notes, _ = resources.search(s, Query("DocumentReference", count=1000))
            provenance, _ = resources.search(s, Query("Provenance", count=1000))
            day = periods[tasks[0]["encounter"]["reference"]]["start"][:10]
            on_that_day, _ = resources.search(
                s, Query("Task", date=[DateBound("eq", *parse_range(day))], count=1000)
            )
    assert tasks and plans and notes and provenance
    for task in tasks:
        set_in = periods[task["encounter"]["reference"]]
        if task["businessStatus"]["coding"][0]["code"] == "awaiting-review":
            assert parse_datetime(task["authoredOn"]) == parse_datetime(set_in["start"])
        assert parse_datetime(task["authoredOn"]) < started
    for plan in plans:
        assert parse_datetime(plan["created"]) == parse_datetime(
            periods[plan["encounter"]["reference"]]["start"]
        )
    notes = [n for n in notes if n.get("context")]  # not the model card
    assert notes
    for note in notes:
        encounter = note["context"]["encounter"][0]["reference"]
        assert parse_datetime(note["date"]) == parse_datetime(periods[encounter]["end"])
    assert all(parse_datetime(p["recorded"]) >= started for p in provenance)
    assert {t["id"] for t in on_that_day} >= {
        t["id"] for t in tasks if t["authoredOn"][:10] == day
    }
    assert on_that_day
