"""SMART v2 scope restrictions are access rules: ANDed into every search, checked on every read
(a resource outside them reads as not found), never widened into no limit. v1 scopes behave as
before."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.security.support import bearer


def ids(client: TestClient, url: str, scopes: str) -> set[str]:
    response = client.get(url, headers=bearer(scopes))
    assert response.status_code == 200, response.text
    return {e["resource"]["id"] for e in response.json().get("entry", [])}


def test_a_patient_restricted_scope_sees_only_that_patient(client: TestClient) -> None:
    scope = "system/Task.rs?patient=Patient/p1"
    assert ids(client, "/fhir/Task", scope) == {"a0", "a1", "a2", "r0"}
    # ANDed with the caller's own search: asking for the other patient finds nothing.
    assert ids(client, "/fhir/Task?patient=Patient/p2", scope) == set()
    assert ids(client, "/fhir/Task?business-status=reviewed", scope) == {"r0"}
    assert client.get("/fhir/Task/a0", headers=bearer(scope)).status_code == 200
    outside = client.get("/fhir/Task/b0", headers=bearer(scope))
    assert outside.status_code == 404 and outside.json()["resourceType"] == "OperationOutcome"
    assert client.get("/fhir/Task/b0/_history", headers=bearer(scope)).status_code == 404


def test_a_token_restriction_limits_what_a_search_can_reach(client: TestClient) -> None:
    scope = "system/Task.rs?business-status=reviewed"
    assert ids(client, "/fhir/Task", scope) == {"r0", "b0", "b1"}
    assert ids(client, "/fhir/Task?business-status=awaiting-review", scope) == set()
    assert client.get("/fhir/Task/a1", headers=bearer(scope)).status_code == 404
    assert client.get("/fhir/Task/r0", headers=bearer(scope)).status_code == 200


def test_several_restricted_scopes_are_alternatives(client: TestClient) -> None:
    scopes = "system/Task.rs?patient=Patient/p2 system/Task.rs?business-status=awaiting-review"
    assert ids(client, "/fhir/Task", scopes) == {"b0", "b1", "a0", "a1", "a2"}
    # One unrestricted scope for the type lifts the limits.
    assert len(ids(client, "/fhir/Task", scopes + " system/Task.rs")) == 6


def test_a_restriction_the_server_cannot_evaluate_grants_nothing(client: TestClient) -> None:
    denied = client.get("/fhir/Task", headers=bearer("system/Task.rs?owner=Practitioner/x"))
    assert denied.status_code == 403
    assert "cannot evaluate" in denied.json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    "scope",
    [
        "system/Task.rs?_count=1",
        "system/Task.rs?_offset=0",
        "system/Task.rs?_summary=count",
        "system/Task.rs?_format=json",
        "system/Task.rs?_include=Task:based-on",
        "system/*.rs?_offset=0",
        # A control beside a filter: the limit asked for would not be honored in full.
        "system/Task.rs?patient=Patient/p1&_count=1",
    ],
)
def test_a_restriction_of_controls_that_filter_nothing_grants_nothing(
    client: TestClient, scope: str
) -> None:
    # Search accepts these parameters but adds no condition for them: as a limit they would
    # have matched every Task.
    denied = client.get("/fhir/Task", headers=bearer(scope))
    assert denied.status_code == 403
    assert "cannot evaluate" in denied.json()["issue"][0]["diagnostics"]
    assert client.get("/fhir/Task/b0", headers=bearer(scope)).status_code == 403


def test_a_controls_only_restriction_beside_a_filter_leaves_the_filter(
    client: TestClient,
) -> None:
    scopes = "system/Task.rs?_count=1 system/Task.rs?patient=Patient/p2"
    assert ids(client, "/fhir/Task", scopes) == {"b0", "b1"}


def test_a_restricted_scope_does_not_grant_a_write(client: TestClient) -> None:
    refused = client.post("/ingest", json={}, headers=bearer("system/Bundle.c?patient=Patient/p1"))
    assert refused.status_code == 403


@pytest.mark.parametrize("scope", ["system/Task.read", "system/*.read", "system/Task.rs"])
def test_v1_and_unrestricted_v2_scopes_see_everything(client: TestClient, scope: str) -> None:
    assert len(ids(client, "/fhir/Task", scope)) == 6


def test_a_wildcard_restriction_applies_to_every_type(client: TestClient) -> None:
    assert ids(client, "/fhir/Task", "system/*.rs?patient=Patient/p2") == {"b0", "b1"}
