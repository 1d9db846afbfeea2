"""Fidelity answers over the built-in store: `$evaluate-measure`, outcome linkage, filters.

Shared by the FHIR API, the dashboard and the `homework-fhir quality` commands, so every
surface gives the same numbers. Sync functions (database and CPU work): call them from a
thread in async code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from fhir_adapter.quality.records import Records, load
from fhir_adapter.store import Store
from mapping.quality import measures, outcomes

__all__ = [
    "REPORT_TYPES",
    "MeasureRequest",
    "course_outcomes",
    "evaluate_measure",
    "filter_options",
]

# $evaluate-measure reportType: R4 names (population = a summary report), and R4B/R5's.
REPORT_TYPES = {"population": False, "summary": False, "subject-list": True}


@dataclass(frozen=True)
class MeasureRequest:
    period_start: date | None = None
    period_end: date | None = None
    report_type: str = "summary"  # or "subject-list" (R4: "population" = summary)
    practitioner: str | None = None  # "Practitioner/x"
    clinic: str | None = None  # "Organization/x"


def _filters(store: Store, request: MeasureRequest) -> tuple[measures.Filters, Records]:
    """The request's filters, an open period end closed at the first or last session."""
    start, end = request.period_start, request.period_end
    records = load(store, start, end)
    if start is None or end is None:
        days = sorted(s.start.astimezone(UTC).date() for s in records.sessions)
        today = datetime.now(UTC).date()
        start = start or (days[0] if days else today)
        end = end or (days[-1] if days else today)
    filters = measures.Filters(start, end, request.practitioner, request.clinic)
    return filters, records


def evaluate_measure(store: Store, measure_id: str, request: MeasureRequest) -> dict[str, Any]:
    """The MeasureReport for one of `measures.MEASURE_IDS` (ResourceError for another)."""
    if measure_id not in measures.MEASURE_IDS:
        measures.measure_resource(measure_id, "")  # raises the error naming the measures
    filters, records = _filters(store, request)
    return measures.evaluate(
        measure_id,
        records.sessions,
        records.tasks,
        filters,
        subject_list=REPORT_TYPES.get(request.report_type, False),
        generated=datetime.now(UTC),
    )


def course_outcomes(store: Store, request: MeasureRequest) -> dict[str, Any]:
    """Per-patient review rate and PHQ-9/GAD-7 change, and their association (JSON)."""
    filters, records = _filters(store, request)
    found = outcomes.courses(records.sessions, records.tasks, records.scores, filters)
    body = outcomes.as_json(found)
    body["period"] = {"start": filters.start.isoformat(), "end": filters.end.isoformat()}
    return body


def filter_options(store: Store) -> dict[str, Any]:
    """Practitioners and clinics with sessions, and the first and last session dates."""
    sessions = load(store).sessions
    practitioners = {s.practitioner for s in sessions if s.practitioner}
    clinics = {s.clinic for s in sessions if s.clinic}
    days = sorted(s.start.astimezone(UTC).date().isoformat() for s in sessions)
    return {
        "practitioners": [
            {"reference": p.reference, "display": p.display}
            for p in sorted(practitioners, key=lambda p: (p.display, p.reference))
        ],
        "clinics": [
            {"reference": c.reference, "display": c.display}
            for c in sorted(clinics, key=lambda c: (c.display, c.reference))
        ],
        "first_session": days[0] if days else None,
        "last_session": days[-1] if days else None,
    }
