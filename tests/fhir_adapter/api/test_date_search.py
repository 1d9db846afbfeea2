"""FHIR R4 date search: a value's precision is an interval (2026-03 is the whole month), stored
dates are intervals too (a day-precision authoredOn is that day, a CarePlan period runs to its
end or stays open), and the prefixes compare intervals as the specification says. SQLite and
PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import text

from fhir_adapter.store import Store, open_store, resources
from fhir_adapter.store.db import alembic_config
from tests.security.support import app_over, bearer, task

DATES = {
    "day": "2026-03-01",
    "morning": "2026-03-01T10:00:00Z",
    "late": "2026-03-01T23:30:00-05:00",  # 2026-03-02T04:30Z: the next day in UTC
    "next": "2026-03-02T09:00:00Z",
    "april": "2026-04-15",
}


def plan(rid: str, start: str, end: str | None) -> dict[str, Any]:
    period = {"start": start, **({"end": end} if end else {})}
    return {"resourceType": "CarePlan", "id": rid, "status": "draft", "intent": "proposal",
            "subject": {"reference": "Patient/p1"}, "period": period}  # fmt: skip


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    opened = open_store(database_url)
    with opened.session() as s:
        for rid, when in DATES.items():
            resources.put(s, task(rid, "Patient/p1", "awaiting-review", when))
        resources.put(s, plan("closed", "2026-03-01", "2026-03-31"))
        resources.put(s, plan("open", "2026-03-10", None))
    yield opened
    opened.close()


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    with TestClient(app_over(store)) as test_client:
        yield test_client


def found(client: TestClient, query: str, resource_type: str = "Task") -> set[str]:
    response = client.get(f"/fhir/{resource_type}?{query}", headers=bearer())
    assert response.status_code == 200, response.text
    return {e["resource"]["id"] for e in response.json().get("entry", [])}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("authored-on=2026-03-01", {"day", "morning"}),
        ("authored-on=eq2026-03", {"day", "morning", "late", "next"}),
        ("authored-on=2026", set(DATES)),
        ("authored-on=ne2026-03-01", {"late", "next", "april"}),
        ("authored-on=gt2026-03-01", {"late", "next", "april"}),
        ("authored-on=ge2026-03-01", set(DATES)),
        ("authored-on=lt2026-03-02", {"day", "morning"}),
        ("authored-on=le2026-03-01", {"day", "morning"}),
        ("authored-on=sa2026-03-01", {"late", "next", "april"}),
        ("authored-on=eb2026-03-02", {"day", "morning"}),
        ("authored-on=2026-03-01T10:00:00Z", {"morning"}),
        ("authored-on=2026-03-01T10:00Z", {"morning"}),
        ("authored-on=ge2026-03-01T12:00:00Z", {"day", "late", "next", "april"}),
        ("authored-on=ge2026-03-01&authored-on=lt2026-04", {"day", "morning", "late", "next"}),
    ],
)
def test_task_date_search(client: TestClient, query: str, expected: set[str]) -> None:
    assert found(client, query) == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("date=2026-03", {"closed"}),  # only the closed period lies inside March
        ("date=ge2026-04", {"open"}),  # an open period runs on
        ("date=lt2026-03-05", {"closed"}),
        ("date=sa2026-03-31", set()),
        ("date=eb2026-04-01", {"closed"}),
    ],
)
def test_careplan_periods(client: TestClient, query: str, expected: set[str]) -> None:
    assert found(client, query, "CarePlan") == expected


def test_last_updated_by_precision(client: TestClient) -> None:
    assert len(found(client, "_lastUpdated=ge2000")) == len(DATES)
    assert found(client, "_lastUpdated=lt2000") == set()


def test_the_migration_fills_the_ranges_of_stored_resources(
    store: Store, database_url: str
) -> None:
    config = alembic_config(database_url)
    command.downgrade(config, "0004")
    command.upgrade(config, "head")
    with store.engine.connect() as connection:
        ends = connection.execute(
            text("SELECT id, date_end FROM resource WHERE resource_type = 'Task'")
        ).all()
    assert len(ends) == len(DATES) and all(end is not None for _, end in ends)


def test_by_practitioner_and_summary_count(store: Store) -> None:
    with store.session() as s:
        for i, who in enumerate(["Practitioner/lee", "Practitioner/lee", "Practitioner/ana"]):
            body = task(f"t{i}", "Patient/p2", "reviewed", "2026-05-01")
            resources.put(s, {**body, "requester": {"reference": who}})
    with TestClient(app_over(store)) as client:
        assert found(client, "requester=Practitioner/lee") == {"t0", "t1"}
        assert found(client, "requester=ana") == {"t2"}
        counted = client.get("/fhir/Task?requester=lee&_summary=count", headers=bearer()).json()
        assert counted["total"] == 2 and not counted.get("entry")
        refused = client.get("/fhir/Task?_summary=true", headers=bearer())
        assert refused.status_code == 400
