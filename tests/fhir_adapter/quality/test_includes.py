"""`_include` / `_revinclude` for Task <-> CarePlan <-> Provenance over the processed samples,
each checked against the links the resources themselves carry."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fhir_adapter.store import Store
from tests.security.support import app_over, bearer


@pytest.fixture
def client(sample_store: Store) -> Iterator[TestClient]:
    with TestClient(app_over(sample_store)) as test_client:
        yield test_client


def page(client: TestClient, query: str, scopes: str = "system/*.rs") -> dict[str, list[Any]]:
    response = client.get(f"/fhir/{query}", headers=bearer(scopes))
    assert response.status_code == 200, response.text
    out: dict[str, list[Any]] = {"match": [], "include": []}
    for entry in response.json().get("entry", []):
        out[entry["search"]["mode"]].append(entry["resource"])
    return out


def refs(resources: list[dict[str, Any]]) -> set[str]:
    return {f"{r['resourceType']}/{r['id']}" for r in resources}


def test_task_includes_its_careplan(client: TestClient) -> None:
    found = page(client, "Task?patient=pat-1&_include=Task:based-on")
    plans = {t["basedOn"][0]["reference"] for t in found["match"]}
    assert plans and refs(found["include"]) == plans


def test_careplan_includes_its_tasks_both_ways(client: TestClient) -> None:
    found = page(client, "CarePlan?patient=pat-2&_include=CarePlan:activity-reference")
    listed = {a["reference"]["reference"] for p in found["match"] for a in p["activity"]}
    assert listed and refs(found["include"]) == listed
    rev = page(client, "CarePlan?patient=pat-2&_revinclude=Task:based-on")
    assert refs(rev["include"]) == listed


def test_provenance_includes_what_it_is_about(client: TestClient) -> None:
    found = page(client, "Provenance?recorded=ge2000&_include=Provenance:target")
    assert found["match"]
    targets = {t["reference"] for p in found["match"] for t in p["target"]}
    assert refs(found["include"]) == targets
    assert {r["resourceType"] for r in found["include"]} == {"CarePlan", "Task"}


def test_unsupported_and_unreadable_includes(client: TestClient) -> None:
    response = client.get("/fhir/Task?_include=Task:owner", headers=bearer())
    assert response.status_code == 400
    assert "Task:based-on" in response.json()["issue"][0]["diagnostics"]
    only_tasks = bearer("system/Task.rs")
    response = client.get("/fhir/Task?_include=Task:based-on", headers=only_tasks)
    assert response.status_code == 403  # CarePlans are not the token's to read
    restricted = "system/Provenance.rs system/CarePlan.rs system/Task.rs?patient=Patient/pat-1"
    found = page(client, "Provenance?recorded=ge2000&_include=Provenance:target", restricted)
    patients = {r.get("for", r.get("subject", {})).get("reference") for r in found["include"]
                if r["resourceType"] == "Task"}  # fmt: skip
    assert patients == {"Patient/pat-1"}  # other patients' Tasks are out of reach
    response = client.get("/fhir/Task?_revinclude=Provenance:target", headers=bearer())
    assert response.status_code == 400


def test_careplans_by_treating_practitioner(client: TestClient) -> None:
    """`CarePlan?author=`: the treating practitioner (an AI draft's contributor; its author
    is the model)."""
    found = page(client, "CarePlan?author=Practitioner/prac-2")["match"]
    assert found and {p["subject"]["reference"] for p in found} == {"Patient/pat-3"}
    for plan in found:
        assert plan["author"]["reference"].startswith("Device/")
        assert plan["contributor"][0]["reference"] == "Practitioner/prac-2"
    assert not page(client, "CarePlan?author=Practitioner/nobody")["match"]


def test_a_repeated_include_is_read_once() -> None:
    # Each include is one more store query per page: a thousand repeats must not be a thousand.
    from fhir_adapter.api.includes import Include, parse_includes

    params = [("_include", "Task:based-on")] * 1000 + [("patient", "pat-1")]
    assert parse_includes("Task", params) == [Include("_include", "Task:based-on")]
