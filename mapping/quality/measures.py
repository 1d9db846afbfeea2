"""The fidelity Measures we publish and the MeasureReports that answer `$evaluate-measure`.

Two proportion measures, each stratified by practitioner, clinic, homework category and month:

- **homework-assignment-rate**: sessions that set at least one homework item / sessions. Its
  category strata are *not* a partition: a session counts in the denominator of every
  category, and in the numerator of each category it set (a session may set several).
- **homework-review-rate**: homework items reviewed at the patient's next session / items whose
  patient had a next session. Items still awaiting their next session are in the initial
  population, not the denominator: they have not yet had the chance to be reviewed.

Sessions fall in a period by their start date, items by the date they were set (the session's
date); months and period bounds are calendar dates in UTC, both bounds inclusive. The functions
here are pure: the caller loads the records and supplies the report date.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from fhir.resources.R4B.measure import Measure
from fhir.resources.R4B.measurereport import MeasureReport

from mapping import terminology
from mapping.errors import ResourceError
from mapping.fhir.codes import BASE_URL, CS_HOMEWORK_CATEGORY
from mapping.fhir.validate import as_json, parse
from mapping.quality.records import Ref, SessionRecord, TaskRecord, sessions_by_encounter

__all__ = [
    "ASSIGNMENT",
    "MEASURE_IDS",
    "REVIEW",
    "STRATIFIERS",
    "Filters",
    "evaluate",
    "measure_resource",
]

ASSIGNMENT = "homework-assignment-rate"
REVIEW = "homework-review-rate"
MEASURE_IDS = (ASSIGNMENT, REVIEW)
STRATIFIERS = ("practitioner", "clinic", "category", "month")
MEASURE_POPULATION = "http://terminology.hl7.org/CodeSystem/measure-population"
_IMPROVEMENT = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/measure-improvement-notation",
            "code": "increase",
            "display": "Increased score indicates improvement",
        }
    ]
}

_DEFINITIONS: dict[str, dict[str, Any]] = {
    ASSIGNMENT: {
        "title": "Homework assignment rate",
        "description": "Share of therapy sessions (with a transcript) that set at least one "
        "between-session homework item, as detected by homework-fhir's model.",
        "subject": "Encounter",
        "populations": {
            "initial-population": "Sessions in the period: chart notes written by homework-fhir "
            "(DocumentReference, identifier system {sid}/note, status current), by session start.",
            "denominator": "All sessions of the initial population.",
            "numerator": "Sessions whose encounter has at least one homework Task (identifier "
            "system {sid}/task, neither cancelled nor rejected).",
        },
        "strata": {
            "practitioner": "The session's treating practitioner (the note's author).",
            "clinic": "The session's clinic (the note's custodian: the encounter's service "
            "provider).",
            "category": "Homework category. Not a partition: every session is in each "
            "category's denominator; the numerator counts sessions that set that category.",
            "month": "Calendar month (UTC) of the session's start.",
        },
    },
    REVIEW: {
        "title": "Homework review rate",
        "description": "Share of homework items that the patient's next session followed up "
        "(reviewed), among items whose patient had a next session.",
        "subject": "Task",
        "populations": {
            "initial-population": "Homework Tasks drafted by homework-fhir (identifier system "
            "{sid}/task, neither cancelled nor rejected) set in the period, by the date they "
            "were set.",
            "denominator": "Items whose patient had a next session (businessStatus reviewed "
            "or not-reviewed); items awaiting their next session are excluded.",
            "numerator": "Items the next session reviewed (businessStatus reviewed).",
        },
        "strata": {
            "practitioner": "The practitioner who set the item (Task.requester).",
            "clinic": "The clinic of the session that set the item.",
            "category": "Homework category (Task.code).",
            "month": "Calendar month (UTC) the item was set.",
        },
    },
}


def measure_url(measure_id: str) -> str:
    return f"{BASE_URL}/Measure/{measure_id}"


def _population_code(code: str) -> dict[str, Any]:
    display = code.replace("-", " ").capitalize()
    return {"coding": [{"system": MEASURE_POPULATION, "code": code, "display": display}]}


def measure_resource(measure_id: str, version: str) -> dict[str, Any]:
    """The published Measure (proportion scoring); ResourceError for an unknown id."""
    spec = _DEFINITIONS.get(measure_id)
    if spec is None:
        raise ResourceError(f"no measure {measure_id!r}; measures: {', '.join(MEASURE_IDS)}")
    body: dict[str, Any] = {
        "resourceType": "Measure",
        "id": measure_id,
        "url": measure_url(measure_id),
        "version": version,
        "name": spec["title"].title().replace(" ", ""),
        "title": spec["title"],
        "status": "active",
        "experimental": False,
        "publisher": "homework-fhir",
        "description": spec["description"],
        "subjectCodeableConcept": {"text": spec["subject"]},
        "scoring": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/measure-scoring",
                    "code": "proportion",
                    "display": "Proportion",
                }
            ]
        },
        "improvementNotation": _IMPROVEMENT,
        "group": [
            {
                "population": [
                    {
                        "code": _population_code(code),
                        "description": text.format(sid=BASE_URL + "/sid"),
                        "criteria": {
                            "language": "text/plain",
                            "expression": text.format(sid=BASE_URL + "/sid"),
                        },
                    }
                    for code, text in spec["populations"].items()
                ],
                "stratifier": [
                    {
                        "code": {"text": name},
                        "description": text,
                        "criteria": {"language": "text/plain", "expression": text},
                    }
                    for name, text in spec["strata"].items()
                ],
            }
        ],
    }
    return as_json(parse(body, Measure))


@dataclass(frozen=True)
class Filters:
    """The population asked for: a period (inclusive dates, UTC) and optional scopes."""

    start: date
    end: date
    practitioner: str | None = None  # "Practitioner/x"
    clinic: str | None = None  # "Organization/x"

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ResourceError(f"the period ends ({self.end}) before it starts ({self.start})")

    def covers(self, when: datetime) -> bool:
        return self.start <= when.astimezone(UTC).date() <= self.end


@dataclass
class _Tally:
    display: str
    initial: list[str] = field(default_factory=list)
    denominator: list[str] = field(default_factory=list)
    numerator: list[str] = field(default_factory=list)

    def add(self, subject: str, denominator: bool, numerator: bool) -> None:
        self.initial.append(subject)
        if denominator:
            self.denominator.append(subject)
        if numerator:
            self.numerator.append(subject)


@dataclass
class _Counts:
    overall: _Tally = field(default_factory=lambda: _Tally("all"))
    strata: dict[str, dict[str, _Tally]] = field(
        default_factory=lambda: {name: {} for name in STRATIFIERS}
    )

    def stratum(self, stratifier: str, key: str, display: str) -> _Tally:
        return self.strata[stratifier].setdefault(key, _Tally(display))


def _month(when: datetime) -> str:
    return f"{when.astimezone(UTC):%Y-%m}"


def _ref_key(ref: Ref | None, unknown: str) -> tuple[str, str]:
    return (ref.reference, ref.display) if ref else (unknown, unknown)


def _category_display(code: str) -> str:
    try:
        return terminology.display(CS_HOMEWORK_CATEGORY, code)
    except ResourceError:
        return code


def _in_scope(filters: Filters, practitioner: Ref | None, clinic: Ref | None) -> bool:
    if filters.practitioner and (
        practitioner is None or practitioner.reference != filters.practitioner
    ):
        return False
    return not filters.clinic or (clinic is not None and clinic.reference == filters.clinic)


def _assignment(
    sessions: Iterable[SessionRecord], tasks: Iterable[TaskRecord], filters: Filters
) -> _Counts:
    categories_by_encounter: dict[str, set[str]] = defaultdict(set)
    for t in tasks:
        categories_by_encounter[t.encounter].add(t.category)
    all_categories = sorted({c for cs in categories_by_encounter.values() for c in cs})
    counts = _Counts()
    for s in sorted(sessions_by_encounter(sessions).values(), key=lambda s: (s.start, s.encounter)):
        if not filters.covers(s.start) or not _in_scope(filters, s.practitioner, s.clinic):
            continue
        set_here = categories_by_encounter.get(s.encounter, set())
        counts.overall.add(s.encounter, True, bool(set_here))
        for name, (key, display) in (
            ("practitioner", _ref_key(s.practitioner, "unknown practitioner")),
            ("clinic", _ref_key(s.clinic, "unknown clinic")),
            ("month", (_month(s.start), _month(s.start))),
        ):
            counts.stratum(name, key, display).add(s.encounter, True, bool(set_here))
        for category in all_categories:
            counts.stratum("category", category, _category_display(category)).add(
                s.encounter, True, category in set_here
            )
    return counts


def _review(
    sessions: Iterable[SessionRecord], tasks: Iterable[TaskRecord], filters: Filters
) -> _Counts:
    by_encounter = sessions_by_encounter(sessions)
    counts = _Counts()
    for t in sorted(tasks, key=lambda t: (t.authored, t.id)):
        session = by_encounter.get(t.encounter)
        clinic = session.clinic if session else None
        if not filters.covers(t.authored) or not _in_scope(filters, t.practitioner, clinic):
            continue
        subject = f"Task/{t.id}"
        flags = (t.followed_up, t.review == "reviewed")
        counts.overall.add(subject, *flags)
        for name, (key, display) in (
            ("practitioner", _ref_key(t.practitioner, "unknown practitioner")),
            ("clinic", _ref_key(clinic, "unknown clinic")),
            ("category", (t.category, t.category_display)),
            ("month", (_month(t.authored), _month(t.authored))),
        ):
            counts.stratum(name, key, display).add(subject, *flags)
    return counts


_COUNTERS: dict[str, Callable[[Iterable[SessionRecord], Iterable[TaskRecord], Filters], _Counts]]
_COUNTERS = {ASSIGNMENT: _assignment, REVIEW: _review}


def _score(tally: _Tally) -> dict[str, Any] | None:
    if not tally.denominator:
        return None  # no score where nobody could have been counted
    return {"value": round(len(tally.numerator) / len(tally.denominator), 4)}


class _Lists:
    """Contained List resources for a subject-list report, referenced by `#id`."""

    def __init__(self) -> None:
        self.contained: list[dict[str, Any]] = []

    def add(self, title: str, subjects: Sequence[str]) -> dict[str, str]:
        list_id = f"list-{len(self.contained) + 1}"
        entry = [{"item": {"reference": s}} for s in subjects]
        body: dict[str, Any] = {
            "resourceType": "List",
            "id": list_id,
            "status": "current",
            "mode": "snapshot",
            "title": title,
        }
        if entry:
            body["entry"] = entry
        else:
            body["emptyReason"] = {"text": "no subjects"}
        self.contained.append(body)
        return {"reference": f"#{list_id}"}


def _populations(tally: _Tally, lists: _Lists | None, where: str) -> list[dict[str, Any]]:
    out = []
    for code, subjects in (
        ("initial-population", tally.initial),
        ("denominator", tally.denominator),
        ("numerator", tally.numerator),
    ):
        population: dict[str, Any] = {"code": _population_code(code), "count": len(subjects)}
        if lists is not None:
            population["subjectResults"] = lists.add(f"{where} {code}", subjects)
        out.append(population)
    return out


def evaluate(
    measure_id: str,
    sessions: Sequence[SessionRecord],
    tasks: Sequence[TaskRecord],
    filters: Filters,
    *,
    subject_list: bool = False,
    generated: datetime,
) -> dict[str, Any]:
    """The MeasureReport for `measure_id` over the records (summary, or subject-list with
    contained Lists naming each population's Encounters or Tasks)."""
    counter = _COUNTERS.get(measure_id)
    if counter is None:
        raise ResourceError(f"no measure {measure_id!r}; measures: {', '.join(MEASURE_IDS)}")
    counts = counter(sessions, tasks, filters)
    lists = _Lists() if subject_list else None
    group: dict[str, Any] = {"population": _populations(counts.overall, lists, "all")}
    if (score := _score(counts.overall)) is not None:
        group["measureScore"] = score
    stratifiers = []
    for name in STRATIFIERS:
        strata = []
        for key, tally in sorted(counts.strata[name].items()):
            stratum: dict[str, Any] = {
                "value": {
                    "coding": [{"code": key, "display": tally.display}],
                    "text": tally.display,
                },
                "population": _populations(tally, lists, f"{name} {key}"),
            }
            if (score := _score(tally)) is not None:
                stratum["measureScore"] = score
            strata.append(stratum)
        stratifier: dict[str, Any] = {"code": [{"text": name}]}
        if strata:
            stratifier["stratum"] = strata
        stratifiers.append(stratifier)
    group["stratifier"] = stratifiers
    body: dict[str, Any] = {
        "resourceType": "MeasureReport",
        "status": "complete",
        "type": "subject-list" if subject_list else "summary",
        "measure": measure_url(measure_id),
        "date": generated.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "period": {"start": filters.start.isoformat(), "end": filters.end.isoformat()},
        "improvementNotation": _IMPROVEMENT,
        "group": [group],
    }
    if lists is not None and lists.contained:
        body["contained"] = lists.contained
    return as_json(parse(body, MeasureReport))
