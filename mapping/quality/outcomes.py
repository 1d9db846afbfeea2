"""Outcome linkage: each patient's review rate beside their PHQ-9 / GAD-7 change.

A *course* is one patient's sessions in the period. Its review rate is the share of its
homework items that the next session reviewed (items without a next session do not count);
its change is last score minus first score in the period (negative = fewer symptoms), with
both dates. Across patients the association is Spearman's rho between review rate and change,
with a 95% interval from Fisher's z and the Bonett-Wright standard error
sqrt((1 + rho^2 / 2) / (n - 3)). Rho needs 3 courses that have both a review rate and a
change, each varying; the interval needs 4, and is not given when rho is +-1.

This is an observational association over routine care: who reviews homework, and which
patients keep coming, are not random; it says nothing about cause.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from scipy.stats import spearmanr

from mapping.quality.measures import Filters
from mapping.quality.records import (
    INSTRUMENTS,
    Ref,
    ScoreRecord,
    SessionRecord,
    TaskRecord,
    sessions_by_encounter,
)

__all__ = ["CAVEATS", "Association", "Change", "Course", "associate", "courses"]

CAVEATS = (
    "Observational and confounded: therapists who review homework, patients who do it, and "
    "patients who stay in treatment differ in ways these data do not measure; regression to "
    "the mean moves first-to-last changes too. The interval reflects sampling error only. "
    "Read it as a fidelity signal to look into, not as the effect of reviewing homework."
)
_Z95 = 1.959964


@dataclass(frozen=True)
class Change:
    first_date: str
    first: int
    last_date: str
    last: int

    @property
    def change(self) -> int:
        return self.last - self.first


@dataclass(frozen=True)
class Course:
    patient: str
    practitioner: Ref | None
    sessions: int
    tasks_reviewable: int
    tasks_reviewed: int
    scores: dict[str, Change]  # instrument -> first/last, only with two scores or more

    @property
    def review_rate(self) -> float | None:
        return self.tasks_reviewed / self.tasks_reviewable if self.tasks_reviewable else None


@dataclass(frozen=True)
class Association:
    instrument: str
    n: int
    rho: float | None
    low: float | None
    high: float | None


def _day(record: ScoreRecord) -> str:
    return record.date.astimezone(UTC).date().isoformat()


def courses(
    sessions: Sequence[SessionRecord],
    tasks: Sequence[TaskRecord],
    scores: Sequence[ScoreRecord],
    filters: Filters,
) -> list[Course]:
    """One course per patient with a session in the period (and scope), sorted by patient."""
    in_scope = [
        s
        for s in sessions_by_encounter(sessions).values()
        if filters.covers(s.start)
        and (
            not filters.practitioner
            or (s.practitioner and s.practitioner.reference == filters.practitioner)
        )
        and (not filters.clinic or (s.clinic and s.clinic.reference == filters.clinic))
    ]
    by_patient: dict[str, list[SessionRecord]] = defaultdict(list)
    for s in in_scope:
        by_patient[s.patient].append(s)
    encounters = {s.encounter for s in in_scope}
    tasks_of: dict[str, list[TaskRecord]] = defaultdict(list)
    for t in tasks:
        if t.encounter in encounters:
            tasks_of[t.patient].append(t)
    scores_of: dict[tuple[str, str], list[ScoreRecord]] = defaultdict(list)
    for r in scores:
        if filters.covers(r.date):
            scores_of[(r.patient, r.instrument)].append(r)
    out = []
    for patient, its_sessions in sorted(by_patient.items()):
        its_sessions.sort(key=lambda s: s.start)
        its_tasks = tasks_of.get(patient, [])
        changes = {}
        for instrument in INSTRUMENTS.values():
            series = sorted(scores_of.get((patient, instrument), []), key=lambda r: r.date)
            if len(series) >= 2:
                first, last = series[0], series[-1]
                changes[instrument] = Change(_day(first), first.value, _day(last), last.value)
        out.append(
            Course(
                patient=patient,
                practitioner=its_sessions[-1].practitioner,
                sessions=len(its_sessions),
                tasks_reviewable=sum(t.followed_up for t in its_tasks),
                tasks_reviewed=sum(t.review == "reviewed" for t in its_tasks),
                scores=changes,
            )
        )
    return out


def associate(found: Iterable[Course], instrument: str) -> Association:
    """Spearman's rho between review rate and score change, with its 95% interval."""
    pairs = [
        (c.review_rate, c.scores[instrument].change)
        for c in found
        if c.review_rate is not None and instrument in c.scores
    ]
    n = len(pairs)
    rates = [p[0] for p in pairs]
    changes = [p[1] for p in pairs]
    # rho is undefined with fewer than 3 pairs or when either variable is constant.
    if n < 3 or len(set(rates)) < 2 or len(set(changes)) < 2:
        return Association(instrument, n, None, None, None)
    rho = float(spearmanr(rates, changes).statistic)
    if n < 4 or abs(rho) >= 1.0:
        return Association(instrument, n, round(rho, 4), None, None)
    se = math.sqrt((1 + rho**2 / 2) / (n - 3))
    z = math.atanh(rho)
    return Association(
        instrument,
        n,
        round(rho, 4),
        round(math.tanh(z - _Z95 * se), 4),
        round(math.tanh(z + _Z95 * se), 4),
    )


def as_json(found: Sequence[Course]) -> dict[str, Any]:
    """Courses and associations as the JSON the API, the export and the dashboard share."""

    def change(c: Course, instrument: str) -> dict[str, Any] | None:
        ch = c.scores.get(instrument)
        if ch is None:
            return None
        return {
            "first": {"date": ch.first_date, "value": ch.first},
            "last": {"date": ch.last_date, "value": ch.last},
            "change": ch.change,
        }

    return {
        "courses": [
            {
                "patient": c.patient,
                "practitioner": c.practitioner.reference if c.practitioner else None,
                "practitioner_display": c.practitioner.display if c.practitioner else None,
                "sessions": c.sessions,
                "tasks_reviewable": c.tasks_reviewable,
                "tasks_reviewed": c.tasks_reviewed,
                "review_rate": None if c.review_rate is None else round(c.review_rate, 4),
                **{instrument: change(c, instrument) for instrument in INSTRUMENTS.values()},
            }
            for c in found
        ],
        "association": {
            instrument: vars(associate(found, instrument)) for instrument in INSTRUMENTS.values()
        },
        "caveats": CAVEATS,
    }
