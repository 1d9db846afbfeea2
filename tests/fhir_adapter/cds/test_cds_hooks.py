"""CDS Hooks services: discovery, the card for a patient's drafts, and malformed requests, over
the API app with real signed JWTs and the EHRs' JWK Sets served over HTTP. Who is trusted:
test_cds_trust.py."""

from __future__ import annotations

import json
import logging
from collections import Counter
from datetime import date
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fhir_adapter.api import ApiDeps, create_app
from fhir_adapter.cds.drafts import Drafts, summary
from fhir_adapter.store import Store
from tests.fhir_adapter.cds.support import (
    API_VERIFIER,
    BASE,
    DISCOVERY,
    ENCOUNTER_START,
    LAUNCH,
    PATIENT_VIEW,
    TODAY,
    JwksServer,
    app_over,
    hook_request,
    signed,
)


def call(client: TestClient, body: Any, service: str = PATIENT_VIEW, **token: Any) -> Any:
    headers = signed(aud=f"{BASE}/cds-services/{service}", **token)
    if isinstance(body, bytes):
        return client.post(f"/cds-services/{service}", content=body, headers=headers)
    return client.post(f"/cds-services/{service}", json=body, headers=headers)


def cards(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    found: list[dict[str, Any]] = response.json()["cards"]
    return found


def problem(response: Any, status: int) -> str:
    """The OperationOutcome's diagnostics of an error answer (JSON, never a stack trace)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert "Traceback" not in response.text
    diagnostics: str = body["issue"][0]["diagnostics"]
    return diagnostics


# ---------------------------------------------------------------- discovery


def test_discovery_lists_both_services_as_cds_hooks_describes_them(client: TestClient) -> None:
    response = client.get("/cds-services", headers=signed(aud=DISCOVERY))
    assert response.status_code == 200
    services = response.json()["services"]
    assert {s["id"]: s["hook"] for s in services} == {
        PATIENT_VIEW: "patient-view",
        ENCOUNTER_START: "encounter-start",
    }
    for service in services:
        assert set(service) == {"hook", "id", "title", "description"}  # nothing to prefetch
        assert all(isinstance(v, str) and v for v in service.values())


def test_discovery_needs_the_ehrs_jwt_for_the_discovery_url(client: TestClient) -> None:
    problem(client.get("/cds-services"), 401)
    # A token for a service is not one for discovery.
    problem(client.get("/cds-services", headers=signed()), 401)


def test_without_cds_enabled_the_routes_are_404(store: Store) -> None:
    with TestClient(create_app(ApiDeps(store=store, verifier=API_VERIFIER))) as client:
        assert "not enabled" in problem(client.get("/cds-services"), 404)
        problem(client.post(f"/cds-services/{PATIENT_VIEW}", json=hook_request()), 404)


# ---------------------------------------------------------------- the card


def test_drafts_from_two_sessions_make_one_card_linking_to_the_review_app(
    client: TestClient,
) -> None:
    (card,) = cards(call(client, hook_request(patient="p1")))
    # The approved and the rejected Task are not drafts; the date is the session's own day
    # (21:30 at -05:00 on 2 Dec), not the UTC one.
    assert card["summary"] == "5 homework drafts from 2 sessions, latest 2 Dec, awaiting review"
    assert card["indicator"] == "info"
    assert card["source"] == {"label": "homework-fhir"}
    assert "AI" in card["detail"]
    assert card["links"] == [
        {"label": "Review homework drafts", "url": LAUNCH, "type": "smart"}
    ]  # no encounter in context: no appContext (CDS Hooks forbids empty values)
    assert "uuid" not in card  # no feedback endpoint: a card without uuid gets no feedback


def test_encounter_start_carries_the_encounter_to_the_app(client: TestClient) -> None:
    body = hook_request("encounter-start", patient="p2", encounter="enc-9")
    (card,) = cards(call(client, body, ENCOUNTER_START))
    assert card["summary"] == "3 homework drafts from 2 Dec 2025 awaiting review"
    (link,) = card["links"]
    assert link["type"] == "smart" and link["url"] == LAUNCH
    assert json.loads(link["appContext"]) == {"encounter": "Encounter/enc-9"}


@pytest.mark.parametrize("patient", ["p3", "p4", "nobody"])
def test_no_drafts_no_cards(client: TestClient, patient: str) -> None:
    """p3's Tasks were approved or cancelled; p4 has a draft CarePlan but no Task."""
    assert cards(call(client, hook_request(patient=patient))) == []


def test_another_patients_drafts_are_not_counted(client: TestClient) -> None:
    (p1,) = cards(call(client, hook_request(patient="p1")))
    (p2,) = cards(call(client, hook_request(patient="p2")))
    assert p1["summary"].startswith("5 ") and p2["summary"].startswith("3 ")
    # An id that is a prefix of another's is another patient.
    assert cards(call(client, hook_request(patient="p"))) == []


def test_the_summary_reads_well_and_fits() -> None:
    today = date(2026, 12, 10)
    assert summary(Drafts(1, 1, date(2026, 12, 2)), today) == (
        "1 homework draft from 2 Dec awaiting review"
    )
    assert summary(Drafts(3, 1, None), today) == "3 homework drafts awaiting review"
    assert summary(Drafts(4, 2, None), today) == "4 homework drafts from 2 sessions awaiting review"
    assert summary(Drafts(10**130, 10**130, date(2025, 1, 31)), today).startswith("1000")
    assert len(summary(Drafts(10**130, 10**130, date(2025, 1, 31)), today)) < 140


def test_a_real_pipelines_drafts_as_the_card_counts_them(
    sample_store: Store, sample_resources: list[dict[str, Any]], server: JwksServer
) -> None:
    """The bundled samples as the pipeline drafted them: the patient with the most drafts."""
    drafts = [r for r in sample_resources if r["resourceType"] == "Task" and
              r["status"] == "draft"]  # fmt: skip
    per_patient = Counter(t["for"]["reference"] for t in drafts)
    patient, count = per_patient.most_common(1)[0]
    theirs = [t for t in drafts if t["for"]["reference"] == patient]
    sessions = {t["encounter"]["reference"] for t in theirs}
    latest = date.fromisoformat(max(theirs, key=lambda t: t["authoredOn"])["authoredOn"][:10])
    with TestClient(app_over(sample_store, server)) as client:
        body = hook_request(patient=patient.removeprefix("Patient/"))
        (card,) = cards(call(client, body))
    assert len(sessions) > 1 and latest.year != TODAY.year  # the samples are from 2025
    month = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
             "Dec")[latest.month - 1]  # fmt: skip
    assert card["summary"] == (
        f"{count} homework drafts from {len(sessions)} sessions, latest {latest.day} {month} "
        f"{latest.year}, awaiting review"
    )


# ---------------------------------------------------------------- malformed requests


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda b: b["context"].pop("patientId"), "context.patientId"),
        (lambda b: b["context"].update(patientId="../Patient/x"), "context.patientId"),
        (lambda b: b["context"].update(patientId=42), "context.patientId"),
        (lambda b: b["context"].pop("userId"), "context.userId"),
        (lambda b: b.pop("context"), "context"),
        (lambda b: b.pop("hookInstance"), "hookInstance"),
        (lambda b: b.update(hookInstance="not-a-uuid"), "hookInstance"),
        (lambda b: b.update(hook="order-sign"), "hook"),
        (lambda b: b["context"].update(encounterId="a b"), "context.encounterId"),
    ],
)
def test_a_malformed_request_is_a_400_naming_the_field(
    client: TestClient, change: Any, field: str
) -> None:
    body = hook_request()
    change(body)
    assert problem(call(client, body), 400).startswith(f"{field}:")


def test_encounter_start_needs_the_encounter(client: TestClient) -> None:
    body = hook_request("encounter-start")
    diagnostics = problem(call(client, body, ENCOUNTER_START), 400)
    assert diagnostics.startswith("context.encounterId:")


@pytest.mark.parametrize("raw", [b"", b"{not json", b"[]", b'"text"', b"\xff\xfe"])
def test_a_body_that_is_no_json_object_is_a_400(client: TestClient, raw: bytes) -> None:
    problem(call(client, raw), 400)


def test_extensions_and_prefetch_are_accepted_and_ignored(client: TestClient) -> None:
    body = {**hook_request(patient="p2"), "prefetch": {"patient": {"resourceType": "Patient"}},
            "extension": {"com.example.x": 1},
            "fhirAuthorization": {"access_token": "opaque", "token_type": "Bearer",
                                  "expires_in": 300, "scope": "patient/Patient.read",
                                  "subject": "homework-fhir"}}  # fmt: skip
    body["context"]["com.example.extra"] = True
    (card,) = cards(call(client, body))
    assert card["summary"].startswith("3 ")


def test_an_unknown_service_is_404_only_once_the_token_is_good(client: TestClient) -> None:
    problem(client.post("/cds-services/nope", json=hook_request()), 401)
    assert "no such CDS service" in problem(call(client, hook_request(), "nope"), 404)
    problem(client.post("/cds-services/NOPE%2F..", json=hook_request()), 404)


def test_logs_carry_ids_not_the_patient_or_the_token(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    body = hook_request(patient="p1")
    headers = signed()
    with caplog.at_level(logging.DEBUG):
        response = client.post(f"/cds-services/{PATIENT_VIEW}", json=body, headers=headers)
    assert response.status_code == 200
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert body["hookInstance"] in text
    assert "p1" not in text
    assert headers["Authorization"].split()[1] not in text
