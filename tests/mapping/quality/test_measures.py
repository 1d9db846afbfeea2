"""Measure arithmetic over hand-made records: populations, strata, periods, subject lists, and
outcome linkage, each checked against counts worked out by hand."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime

import pytest
from fhir.resources.R4B.measure import Measure
from fhir.resources.R4B.measurereport import MeasureReport
from scipy.stats import spearmanr

from mapping.errors import ResourceError
from mapping.quality import measures, outcomes
from mapping.quality.records import Ref, ScoreRecord, SessionRecord, TaskRecord

A, B = Ref("Practitioner/a", "Dr A"), Ref("Practitioner/b", "Dr B")
NORTH = Ref("Organization/north", "North Clinic")
NOW = datetime(2026, 12, 6, tzinfo=UTC)


def at(day: str, hour: int = 15) -> datetime:
    return datetime.fromisoformat(f"{day}T{hour:02d}:00:00+00:00")


def session(enc: str, patient: str, day: str, who: Ref = A, hour: int = 15) -> SessionRecord:
    return SessionRecord(enc, patient, who, NORTH, at(day, hour), None)


def task(tid: str, enc: str, patient: str, day: str, category: str, review: str,
         who: Ref = A) -> TaskRecord:  # fmt: skip
    return TaskRecord(tid, enc, patient, who, category, category, "", at(day), review, None, None)


SESSIONS = [
    session("Encounter/1", "Patient/p", "2025-01-07"),
    session("Encounter/2", "Patient/p", "2025-01-14"),
    session("Encounter/3", "Patient/p", "2025-02-04"),
    session("Encounter/4", "Patient/q", "2025-01-31", B, hour=23),
]
TASKS = [
    task("t1", "Encounter/1", "Patient/p", "2025-01-07", "practice", "reviewed"),
    task("t2", "Encounter/1", "Patient/p", "2025-01-07", "journal", "not-reviewed"),
    task("t3", "Encounter/3", "Patient/p", "2025-02-04", "practice", "awaiting-review"),
    task("t4", "Encounter/4", "Patient/q", "2025-01-31", "learn", "awaiting-review", B),
]
ALL = measures.Filters(date(2025, 1, 1), date(2025, 12, 31))


def pops(group: dict) -> tuple[int, int, int]:  # type: ignore[type-arg]
    found = {p["code"]["coding"][0]["code"]: p["count"] for p in group["population"]}
    return found["initial-population"], found["denominator"], found["numerator"]


def stratum(report: dict, name: str, key: str) -> dict:  # type: ignore[type-arg]
    group = report["group"][0]
    strat = next(s for s in group["stratifier"] if s["code"][0]["text"] == name)
    return next(s for s in strat.get("stratum", []) if s["value"]["coding"][0]["code"] == key)


def evaluate(measure: str, filters: measures.Filters = ALL, **kw: bool) -> dict:  # type: ignore[type-arg]
    report = measures.evaluate(measure, SESSIONS, TASKS, filters, generated=NOW, **kw)
    MeasureReport.model_validate(report)
    return report


def test_assignment_rate() -> None:
    report = evaluate(measures.ASSIGNMENT)
    assert pops(report["group"][0]) == (4, 4, 3)  # Encounter/2 set nothing
    assert report["group"][0]["measureScore"]["value"] == 0.75
    assert pops(stratum(report, "practitioner", "Practitioner/a")) == (3, 3, 2)
    assert stratum(report, "practitioner", "Practitioner/b")["value"]["text"] == "Dr B"
    # Not a partition: every session is in each category's denominator.
    assert pops(stratum(report, "category", "practice")) == (4, 4, 2)
    assert pops(stratum(report, "category", "learn")) == (4, 4, 1)
    assert pops(stratum(report, "month", "2025-01")) == (3, 3, 2)


def test_review_rate_leaves_tasks_without_a_next_session_out_of_the_denominator() -> None:
    report = evaluate(measures.REVIEW)
    assert pops(report["group"][0]) == (4, 2, 1)
    assert report["group"][0]["measureScore"]["value"] == 0.5
    assert pops(stratum(report, "category", "practice")) == (2, 1, 1)
    learn = stratum(report, "category", "learn")
    assert pops(learn) == (1, 0, 0) and "measureScore" not in learn


def test_period_bounds_are_inclusive_utc_dates() -> None:
    january = measures.Filters(date(2025, 1, 1), date(2025, 1, 31))
    assert pops(evaluate(measures.ASSIGNMENT, january)["group"][0]) == (3, 3, 2)
    # 2025-01-31T23:00Z is in January; 2025-02-04 is not.
    assert "2025-02" not in str(evaluate(measures.ASSIGNMENT, january)["group"][0]["stratifier"])
    one_day = measures.Filters(date(2025, 1, 7), date(2025, 1, 7))
    assert pops(evaluate(measures.REVIEW, one_day)["group"][0]) == (2, 2, 1)
    with pytest.raises(ResourceError, match="before it starts"):
        measures.Filters(date(2025, 2, 1), date(2025, 1, 1))


def test_practitioner_and_clinic_scopes() -> None:
    only_b = measures.Filters(ALL.start, ALL.end, practitioner="Practitioner/b")
    assert pops(evaluate(measures.REVIEW, only_b)["group"][0]) == (1, 0, 0)
    elsewhere = measures.Filters(ALL.start, ALL.end, clinic="Organization/south")
    assert pops(evaluate(measures.ASSIGNMENT, elsewhere)["group"][0]) == (0, 0, 0)


def test_subject_list_contains_a_list_per_population() -> None:
    report = evaluate(measures.REVIEW, subject_list=True)
    contained = {c["id"]: c for c in report["contained"]}
    numerator = report["group"][0]["population"][2]
    assert numerator["code"]["coding"][0]["code"] == "numerator"
    listed = contained[numerator["subjectResults"]["reference"][1:]]
    assert [e["item"]["reference"] for e in listed["entry"]] == ["Task/t1"]


def test_measures_validate_and_unknown_ids_are_refused() -> None:
    for measure_id in measures.MEASURE_IDS:
        Measure.model_validate(measures.measure_resource(measure_id, "1.0"))
    with pytest.raises(ResourceError, match="homework-review-rate"):
        measures.measure_resource("readmissions", "1.0")
    with pytest.raises(ResourceError, match="no measure"):
        measures.evaluate("readmissions", SESSIONS, TASKS, ALL, generated=NOW)


def scores(patient: str, *values: int) -> list[ScoreRecord]:
    return [ScoreRecord(patient, None, "phq9", at(f"2025-01-{10 + i:02d}"), v)
            for i, v in enumerate(values)]  # fmt: skip


def test_courses_take_first_and_last_scores_in_the_period() -> None:
    found = outcomes.courses(SESSIONS, TASKS, scores("Patient/p", 12, 15, 7), ALL)
    p = next(c for c in found if c.patient == "Patient/p")
    assert (p.tasks_reviewable, p.tasks_reviewed, p.review_rate) == (2, 1, 0.5)
    assert p.scores["phq9"].change == -5 and p.scores["phq9"].first_date == "2025-01-10"
    q = next(c for c in found if c.patient == "Patient/q")
    assert q.review_rate is None and q.scores == {}


def course(rate: float, change: int) -> outcomes.Course:
    reviewed = round(rate * 10)
    change_ = outcomes.Change("2025-01-01", 10, "2025-03-01", 10 + change)
    return outcomes.Course("Patient/x", None, 3, 10, reviewed, {"phq9": change_})


def test_association_is_spearman_with_a_fisher_z_interval() -> None:
    rates, changes = [0.1, 0.3, 0.5, 0.7, 0.9, 1.0], [-1, 0, -3, -4, -2, -6]
    found = outcomes.associate([course(r, c) for r, c in zip(rates, changes, strict=True)], "phq9")
    rho = spearmanr(rates, changes).statistic
    assert found.n == 6 and found.rho == round(rho, 4)
    se = math.sqrt((1 + rho**2 / 2) / 3)
    assert found.low == round(math.tanh(math.atanh(rho) - 1.959964 * se), 4)
    assert found.low is not None and found.high is not None and found.low < rho < found.high


def test_association_is_not_reported_where_it_is_undefined() -> None:
    three = [course(r, c) for r, c in [(0.1, -1), (0.5, -2), (0.9, -4)]]
    assert outcomes.associate(three, "phq9").low is None  # n < 4: no interval
    constant = [course(0.5, c) for c in (-1, -2, -3, -4)]
    assert outcomes.associate(constant, "phq9").rho is None
    assert outcomes.associate([], "gad7").n == 0
