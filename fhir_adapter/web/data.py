"""What the dashboard shows, as JSON: measures, funnel and outcome linkage for a filter, and
the Tasks behind a figure (the drill-down).

The figures come from `fhir_adapter.quality` (the same `$evaluate-measure` MeasureReports the
API answers), reshaped for charts; the drill-down is a FHIR search of the store, so a table
lists exactly what `GET /fhir/Task?...` would. Everything here is synchronous store reads:
call it from a sync route (FastAPI runs those on its thread pool).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any
from urllib.parse import urlencode

from fhir_adapter.api.search import MAX_COUNT, parse_query
from fhir_adapter.quality import MeasureRequest, course_outcomes, evaluate_measure, filter_options
from fhir_adapter.store import Store, resources
from mapping.fhir.codes import LABEL_CODES
from mapping.fhir.references import is_fhir_id
from mapping.quality.records import session_record, shifted, task_record

ASSIGNMENT = "homework-assignment-rate"
REVIEW = "homework-review-rate"
STRATIFIERS = ("practitioner", "clinic", "category", "month")
# Review statuses a drill-down can ask for; "followed-up" is the review rate's denominator.
STATUSES: dict[str, str] = {
    "reviewed": "reviewed",
    "not-reviewed": "not-reviewed",
    "awaiting-review": "awaiting-review",
    "followed-up": "reviewed,not-reviewed",
}
CATEGORIES = frozenset(LABEL_CODES.values())
# The most rows a drill-down table shows; the total is always given.
MAX_ROWS = 500
_MONTH = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")


class FilterError(ValueError):
    """A filter value the dashboard cannot use (the message says which and why)."""


def _reference(name: str, value: str | None, resource_type: str) -> str | None:
    if not value:
        return None
    kind, _, rid = value.partition("/")
    if kind != resource_type or not is_fhir_id(rid):
        raise FilterError(f"{name}: expected {resource_type}/<id>")
    return value


def _date(name: str, value: str | None) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise FilterError(f"{name}: expected a date, YYYY-MM-DD") from exc


@dataclass(frozen=True)
class Filters:
    """The dashboard's filters: a period of session dates (inclusive days), clinic, therapist."""

    start: date | None = None
    end: date | None = None
    clinic: str | None = None
    practitioner: str | None = None

    @staticmethod
    def parse(params: Mapping[str, str]) -> Filters:
        found = Filters(
            start=_date("from", params.get("from")),
            end=_date("to", params.get("to")),
            clinic=_reference("clinic", params.get("clinic"), "Organization"),
            practitioner=_reference("practitioner", params.get("practitioner"), "Practitioner"),
        )
        if found.start and found.end and found.start > found.end:
            raise FilterError("from: the period starts after it ends")
        return found

    def request(self) -> MeasureRequest:
        return MeasureRequest(
            period_start=self.start,
            period_end=self.end,
            practitioner=self.practitioner,
            clinic=self.clinic,
        )

    def as_dict(self) -> dict[str, str | None]:
        return {
            "from": self.start.isoformat() if self.start else None,
            "to": self.end.isoformat() if self.end else None,
            "clinic": self.clinic,
            "practitioner": self.practitioner,
        }


def _counts(populations: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for population in populations or ():
        code = population["code"]["coding"][0]["code"]
        counts[code] = int(population.get("count", 0))
    return counts


def _score(item: Mapping[str, Any]) -> float | None:
    score = (item.get("measureScore") or {}).get("value")
    return float(score) if score is not None else None


def _figure(counts: Mapping[str, int], score: float | None) -> dict[str, Any]:
    return {
        "initial": counts.get("initial-population", 0),
        "denominator": counts.get("denominator", 0),
        "numerator": counts.get("numerator", 0),
        "score": score,
    }


def measure_figures(report: Mapping[str, Any]) -> dict[str, Any]:
    """A MeasureReport's first group as counts, score and strata by stratifier."""
    group = report["group"][0]
    strata: dict[str, list[dict[str, Any]]] = {name: [] for name in STRATIFIERS}
    for stratifier in group.get("stratifier") or ():
        name = stratifier["code"][0]["text"]
        for stratum in stratifier.get("stratum") or ():
            coding = stratum["value"]["coding"][0]
            strata.setdefault(name, []).append(
                {
                    "code": coding["code"],
                    "display": coding.get("display") or stratum["value"].get("text") or "",
                    **_figure(_counts(stratum.get("population")), _score(stratum)),
                }
            )
    strata["month"].sort(key=lambda s: str(s["code"]))
    return {**_figure(_counts(group.get("population")), _score(group)), "strata": strata}


def report(store: Store, filters: Filters) -> dict[str, Any]:
    """Both measures, the review funnel and the outcome linkage for `filters`."""
    request = filters.request()
    assignment = measure_figures(evaluate_measure(store, ASSIGNMENT, request))
    review = measure_figures(evaluate_measure(store, REVIEW, request))
    funnel = [
        {"stage": "sessions", "label": "Sessions", "count": assignment["denominator"]},
        {"stage": "with-homework", "label": "Sessions with homework",
         "count": assignment["numerator"]},
        {"stage": "tasks", "label": "Tasks set", "count": review["initial"]},
        {"stage": "followed-up", "label": "Tasks with a next session",
         "count": review["denominator"]},
        {"stage": "reviewed", "label": "Reviewed at the next session",
         "count": review["numerator"]},
    ]  # fmt: skip
    return {
        "filters": filters.as_dict(),
        "assignment": assignment,
        "review": review,
        "funnel": funnel,
        "outcomes": course_outcomes(store, request),
    }


def options(store: Store) -> dict[str, Any]:
    return filter_options(store)


@dataclass(frozen=True)
class Drill:
    """What a drill-down narrows the filters to: one category, review status or month."""

    category: str | None = None
    status: str | None = None
    month: str | None = None

    @staticmethod
    def parse(params: Mapping[str, str]) -> Drill:
        category, status, month = (params.get(k) or None for k in ("category", "status", "month"))
        if category is not None and category not in CATEGORIES:
            raise FilterError(f"category: one of {', '.join(sorted(CATEGORIES))}")
        if status is not None and status not in STATUSES:
            raise FilterError(f"status: one of {', '.join(STATUSES)}")
        if month is not None and not _MONTH.fullmatch(month):
            raise FilterError("month: expected YYYY-MM")
        return Drill(category, status, month)


def task_search(filters: Filters, drill: Drill) -> list[tuple[str, str]]:
    """The FHIR search (`GET /fhir/Task?...`) for the Tasks behind a figure; the clinic is
    applied after it (a Task names no clinic: its session's chart note does)."""
    params: list[tuple[str, str]] = []
    if filters.practitioner:
        params.append(("requester", filters.practitioner))
    if filters.start:
        params.append(("authored-on", f"ge{filters.start.isoformat()}"))
    if filters.end:
        params.append(("authored-on", f"le{filters.end.isoformat()}"))
    if drill.month:
        params.append(("authored-on", drill.month))
    if drill.status:
        params.append(("business-status", STATUSES[drill.status]))
    if drill.category:
        params.append(("code", drill.category))
    return params


def _search_all(store: Store, resource_type: str, params: list[tuple[str, str]]) -> list[Any]:
    found: list[Any] = []
    query = parse_query(resource_type, [*params, ("_count", str(MAX_COUNT))])
    with store.session() as session:
        while True:
            page, total = resources.search(session, query)
            found.extend(page)
            query.offset += len(page)
            if not page or query.offset >= total:
                return found


def _clinic_encounters(store: Store, filters: Filters) -> set[str]:
    """The encounters whose session (our chart note) was held at `filters.clinic`."""
    # A note is dated when written: its session's end, or its approval days or weeks later.
    # Never before the session, so only the start bounds it (a day's margin); the Tasks
    # already hold the period, and the note itself says which encounter it records.
    params: list[tuple[str, str]] = [("type", "11506-3")]
    if filters.start:
        params.append(("date", f"ge{shifted(filters.start, -timedelta(days=1)).isoformat()}"))
    encounters = set()
    for note in _search_all(store, "DocumentReference", params):
        record = session_record(note)
        if record and record.clinic and record.clinic.reference == filters.clinic:
            encounters.add(record.encounter)
    return encounters


def tasks(store: Store, filters: Filters, drill: Drill) -> dict[str, Any]:
    """The Tasks behind a figure, oldest first: at most MAX_ROWS rows, and the total."""
    found = [r for t in _search_all(store, "Task", task_search(filters, drill))
             if (r := task_record(t)) is not None]  # fmt: skip
    if filters.clinic:
        at_clinic = _clinic_encounters(store, filters)
        found = [r for r in found if r.encounter in at_clinic]
    found.sort(key=lambda r: (r.authored, r.id))
    rows = [
        {
            "id": r.id,
            "date": r.authored.date().isoformat(),
            "practitioner": r.practitioner.display if r.practitioner else "",
            "patient": r.patient,
            "category": r.category,
            "category_display": r.category_display,
            "description": r.description,
            "status": r.review,
            "review_quote": r.review_quote or "",
        }
        for r in found[:MAX_ROWS]
    ]
    # The same search over the API, for whoever wants the FHIR resources themselves.
    search = "/fhir/Task?" + urlencode(task_search(filters, drill))
    return {"total": len(found), "tasks": rows, "search": search}
