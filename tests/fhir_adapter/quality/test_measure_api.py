"""`$evaluate-measure` and outcome linkage over the samples as the real pipeline processed them,
checked against answers reached another way: plain FHIR searches of the same store."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.measurereport import MeasureReport

from fhir_adapter.store import Store
from tests.fhir_adapter.quality.samples import approve_later
from tests.security.support import app_over, bearer

REVIEW = "/fhir/Measure/homework-review-rate/$evaluate-measure"
ASSIGNMENT = "/fhir/Measure/homework-assignment-rate/$evaluate-measure"


@pytest.fixture
def client(sample_store: Store) -> Iterator[TestClient]:
    with TestClient(app_over(sample_store)) as test_client:
        yield test_client


def get(client: TestClient, url: str, status: int = 200, **kw: Any) -> dict[str, Any]:
    response = client.get(url, headers=bearer(), **kw)
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


def count(client: TestClient, query: str) -> int:
    total: int = get(client, f"/fhir/{query}&_summary=count")["total"]
    return total


def ids(client: TestClient, query: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in get(client, f"/fhir/{query}&_count=500").get("entry", [])]


def populations(group: dict[str, Any]) -> dict[str, int]:
    return {p["code"]["coding"][0]["code"]: p["count"] for p in group["population"]}


def strata(report: dict[str, Any], name: str) -> dict[str, dict[str, Any]]:
    group = report["group"][0]
    found = next(s for s in group["stratifier"] if s["code"][0]["text"] == name)
    return {s["value"]["coding"][0]["code"]: s for s in found.get("stratum", [])}


def test_review_rate_matches_task_searches(client: TestClient) -> None:
    report = get(client, REVIEW)
    MeasureReport.model_validate(report)
    group = report["group"][0]
    reviewed = count(client, "Task?business-status=reviewed")
    not_reviewed = count(client, "Task?business-status=not-reviewed")
    assert reviewed + not_reviewed > 0
    assert populations(group) == {
        "initial-population": count(client, "Task?status=draft"),
        "denominator": reviewed + not_reviewed,
        "numerator": reviewed,
    }
    assert group["measureScore"]["value"] == round(reviewed / (reviewed + not_reviewed), 4)
    by_therapist = strata(report, "practitioner")
    assert len(by_therapist) == 2
    for reference, stratum in by_therapist.items():
        mine = f"Task?requester={reference}"
        assert populations(stratum)["numerator"] == count(
            client, f"{mine}&business-status=reviewed"
        )
        assert populations(stratum)["initial-population"] == count(client, f"{mine}&status=draft")
    by_category = strata(report, "category")
    assert sum(populations(s)["initial-population"] for s in by_category.values()) == count(
        client, "Task?status=draft"
    )
    assert set(strata(report, "month")) == {"2025-02"}


def test_assignment_rate_counts_sessions_with_homework(client: TestClient) -> None:
    report = get(client, ASSIGNMENT)
    group = report["group"][0]
    notes = ids(client, "DocumentReference?type=http://loinc.org|11506-3")
    tasks = ids(client, "Task?status=draft")
    with_homework = {t["encounter"]["reference"] for t in tasks}
    sessions = {n["context"]["encounter"][0]["reference"] for n in notes}
    assert with_homework < sessions  # the samples hold a session that set nothing
    assert populations(group) == {
        "initial-population": len(sessions),
        "denominator": len(sessions),
        "numerator": len(with_homework),
    }
    # Category strata are not a partition: each holds every session.
    for stratum in strata(report, "category").values():
        assert populations(stratum)["denominator"] == len(sessions)
    journal = {
        t["encounter"]["reference"] for t in tasks if t["code"]["coding"][0]["code"] == "journal"
    }
    assert populations(strata(report, "category")["journal"])["numerator"] == len(journal)
    assert strata(report, "clinic")["Organization/clinic-1"]["value"]["text"] == (
        "Riverbend Counseling Center"
    )


def test_period_practitioner_and_clinic_narrow_the_population(client: TestClient) -> None:
    week = get(client, f"{ASSIGNMENT}?periodStart=2025-02-10&periodEnd=2025-02-16")
    assert week["period"] == {"start": "2025-02-10", "end": "2025-02-16"}
    assert populations(week["group"][0])["denominator"] == 3  # each patient's second session
    month = get(client, f"{REVIEW}?periodStart=2025-02&periodEnd=2025-02")
    assert month["period"] == {"start": "2025-02-01", "end": "2025-02-28"}
    one = get(client, f"{REVIEW}?practitioner=Practitioner/prac-2")
    assert populations(one["group"][0])["initial-population"] == count(
        client, "Task?requester=Practitioner/prac-2&status=draft"
    )
    elsewhere = get(client, f"{REVIEW}?clinic=Organization/other")
    assert populations(elsewhere["group"][0])["initial-population"] == 0
    assert "measureScore" not in elsewhere["group"][0]  # no score over nobody


@pytest.mark.parametrize(
    "period", ["periodStart=0001", "periodEnd=9999", "periodStart=0001-01-01&periodEnd=9999-12-31"]
)
def test_a_period_at_the_calendars_edge_covers_everything(client: TestClient, period: str) -> None:
    # The day's margin around the period once overflowed past year 1 or 9999 (a 500).
    everything = get(client, ASSIGNMENT)
    edge = get(client, f"{ASSIGNMENT}?{period}")
    assert populations(edge["group"][0]) == populations(everything["group"][0])
    assert populations(get(client, f"{REVIEW}?{period}")["group"][0]) == populations(
        get(client, REVIEW)["group"][0]
    )
    courses = get(client, f"/quality/outcomes?{period}")["courses"]
    assert len(courses) == len(get(client, "/quality/outcomes")["courses"]) == 3


def test_subject_list_names_the_tasks(client: TestClient) -> None:
    report = get(client, f"{REVIEW}?reportType=subject-list")
    assert report["type"] == "subject-list"
    MeasureReport.model_validate(report)
    contained = {c["id"]: c for c in report["contained"]}
    numerator = next(p for p in report["group"][0]["population"]
                     if p["code"]["coding"][0]["code"] == "numerator")  # fmt: skip
    listed = contained[numerator["subjectResults"]["reference"].lstrip("#")]
    reviewed = {f"Task/{t['id']}" for t in ids(client, "Task?business-status=reviewed")}
    assert {e["item"]["reference"] for e in listed["entry"]} == reviewed


def test_published_measures(client: TestClient) -> None:
    bundle = get(client, "/fhir/Measure")
    assert {e["resource"]["id"] for e in bundle["entry"]} == {
        "homework-assignment-rate",
        "homework-review-rate",
    }
    measure = get(client, "/fhir/Measure/homework-review-rate")
    assert measure["scoring"]["coding"][0]["code"] == "proportion"
    assert get(client, "/fhir/Measure?_id=homework-review-rate")["total"] == 1
    get(client, "/fhir/Measure/nope", 404)
    get(client, "/fhir/Measure/nope/$evaluate-measure", 404)
    capability = get(client, "/fhir/metadata")
    types = {r["type"]: r for r in capability["rest"][0]["resource"]}
    assert types["Measure"]["operation"][0]["name"] == "evaluate-measure"


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("periodStart=2025-13-01", "periodStart"),
        ("periodStart=2025-02-30", "calendar date"),
        ("periodStart=2025-03-01&periodEnd=2025-02-01", "before"),
        ("reportType=individual", "reportType"),
        ("subject=Patient/pat-1", "unknown parameter subject"),
        ("practitioner=Practitioner/a b", "practitioner"),
        ("periodStart=2025&periodStart=2026", "twice"),
    ],
)
def test_bad_parameters_are_400_naming_the_problem(
    client: TestClient, query: str, says: str
) -> None:
    outcome = get(client, f"{REVIEW}?{query}", 400)
    assert says in outcome["issue"][0]["diagnostics"]


def test_reports_need_unrestricted_reads(client: TestClient) -> None:
    for route in (REVIEW, ASSIGNMENT, "/fhir/Measure", "/fhir/Measure/homework-review-rate",
                  "/quality/outcomes"):  # fmt: skip
        assert client.get(route).status_code == 401, route
    restricted = bearer(
        "system/Measure.rs system/DocumentReference.rs system/Task.rs?patient=Patient/pat-1"
    )
    response = client.get(REVIEW, headers=restricted)
    assert response.status_code == 403
    assert "restricted" in response.json()["issue"][0]["diagnostics"]
    no_notes = bearer("system/Measure.rs system/Task.rs")
    assert client.get(REVIEW, headers=no_notes).status_code == 403
    no_scores = bearer("system/Task.rs system/DocumentReference.rs")
    assert client.get("/quality/outcomes", headers=no_scores).status_code == 403
    enough = bearer("system/Measure.rs system/DocumentReference.rs system/Task.rs")
    assert client.get(REVIEW, headers=enough).status_code == 200


def test_outcomes_link_review_to_score_change(client: TestClient) -> None:
    body = get(client, "/quality/outcomes")
    courses = {c["patient"]: c for c in body["courses"]}
    assert set(courses) == {"Patient/pat-1", "Patient/pat-2", "Patient/pat-3"}
    for patient, course in courses.items():
        phq = sorted(
            (o["effectiveDateTime"], o["valueInteger"])
            for o in ids(client, f"Observation?patient={patient}&code=http://loinc.org|44261-6")
        )
        assert course["phq9"]["first"]["value"] == phq[0][1]
        assert course["phq9"]["last"]["value"] == phq[-1][1]
        assert course["phq9"]["change"] == phq[-1][1] - phq[0][1]
        reviewable = count(client, f"Task?patient={patient}&business-status=reviewed,not-reviewed")
        assert course["tasks_reviewable"] == reviewable
    assert body["association"]["phq9"]["n"] == 3
    assert body["association"]["phq9"]["low"] is None  # an interval needs 4 courses or more
    assert "confounded" in body["caveats"]


def test_a_note_approved_weeks_later_counts_in_its_sessions_month(
    client: TestClient, sample_store: Store
) -> None:
    # Approval re-dates the note (a draft is dated by its session's end); reports go by the
    # session, so the session stays in February and March gains nothing.
    feb, mar = "periodStart=2025-02&periodEnd=2025-02", "periodStart=2025-03&periodEnd=2025-03"
    at_clinic = "clinic=Organization/clinic-1"  # a Task's clinic is its session's
    queries = [
        f"{ASSIGNMENT}?{feb}",
        f"{REVIEW}?{feb}&{at_clinic}",
        f"{ASSIGNMENT}?{feb}&{at_clinic}",
    ]
    before = [populations(get(client, q)["group"][0]) for q in queries]
    encounter = min(t["encounter"]["reference"] for t in ids(client, "Task?status=draft"))
    approve_later(sample_store, encounter, "2025-03-20T09:00:00Z")
    assert count(client, "DocumentReference?date=2025-03-20") == 1
    assert [populations(get(client, q)["group"][0]) for q in queries] == before
    assert before[0]["denominator"] == 9 and before[1]["initial-population"] > 0
    outcomes = get(client, f"/quality/outcomes?{feb}&{at_clinic}")["courses"]
    assert sum(c["sessions"] for c in outcomes) == 9
    for later in (f"{ASSIGNMENT}?{mar}", f"{REVIEW}?{mar}&{at_clinic}"):
        assert populations(get(client, later)["group"][0])["initial-population"] == 0
