"""Extract the search columns of a stored resource from its JSON.

One table of FHIR search parameters per resource type, kept as data, so adding a parameter is
a line here, not a query change. Paths are the R4 search parameter expressions, simplified to
the first matching element.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

# resource type -> (patient path, encounter path, code path, date paths, practitioner path)
_PATHS: dict[str, dict[str, tuple[str, ...]]] = {
    "CarePlan": {
        "patient": ("subject",),
        "encounter": ("encounter",),
        "code": ("category",),
        "date": ("period.start", "created"),
        # The treating practitioner: the plan's author once a clinician approved it; an AI
        # draft's author is the model (a Device), and the practitioner is its contributor.
        "practitioner": ("author", "contributor"),
    },
    "Task": {
        "patient": ("for",),
        "encounter": ("encounter",),
        "code": ("code",),
        "date": ("authoredOn",),
        "practitioner": ("requester",),
    },
    "Observation": {
        "patient": ("subject",),
        "encounter": ("encounter",),
        "code": ("code",),
        "date": ("effectiveDateTime", "effectivePeriod.start", "issued"),
    },
    "DocumentReference": {
        "patient": ("subject",),
        "encounter": ("context.encounter",),
        "code": ("type",),
        "date": ("date",),
        "practitioner": ("author",),
    },
    "Communication": {
        "patient": ("subject",),
        "encounter": ("encounter",),
        "code": ("category",),
        "date": ("sent",),
    },
    "Provenance": {
        "patient": ("target",),
        "encounter": (),
        "code": ("activity",),
        "date": ("recorded",),
    },
    "Device": {"patient": ("patient",), "encounter": (), "code": ("type",), "date": ()},
    # A clinician's decision: its first entity is the patient (mapping.fhir.audit).
    "AuditEvent": {"patient": ("entity.what",), "encounter": (), "code": (), "date": ("recorded",)},
}

SEARCHABLE_TYPES: tuple[str, ...] = tuple(_PATHS)


@dataclass(frozen=True)
class SearchColumns:
    patient: str | None
    encounter: str | None
    status: str | None
    code_system: str | None
    code: str | None
    business_status: str | None
    date: datetime | None
    # The end (exclusive) of the date's precision: a day for "2026-03-01", a second for a time;
    # None with `date` set is an open period (CarePlan.period without an end).
    date_end: datetime | None
    # The treating practitioner (Task.requester, the note's author): fidelity by therapist.
    practitioner: str | None
    identifiers: tuple[tuple[str, str], ...]


def _walk(body: Any, path: str) -> Any:
    node = body
    for part in path.split("."):
        if isinstance(node, list):
            node = node[0] if node else None
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    if isinstance(node, list):
        return node[0] if node else None
    return node


def _reference(value: Any, want_patient: bool) -> str | None:
    if not isinstance(value, dict):
        return None
    ref = value.get("reference")
    if not isinstance(ref, str):
        return None
    if want_patient and not ref.startswith("Patient/"):
        return None
    return ref


def _first_coding(value: Any) -> tuple[str | None, str | None]:
    if isinstance(value, dict) and isinstance(value.get("coding"), list) and value["coding"]:
        coding = value["coding"][0]
        if isinstance(coding, dict):
            return coding.get("system"), coding.get("code")
    return None, None


_FRACTION = re.compile(r"(\.[0-9]{6})[0-9]+")
_TIME = re.compile(r"T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.([0-9]+))?)?")
_UTC_MAX = datetime.max.replace(tzinfo=UTC)
_UTC_MIN = datetime.min.replace(tzinfo=UTC)


def parse_datetime(value: str) -> datetime:
    """Parse a FHIR date/dateTime/instant into UTC; a bare date or naive time is taken as UTC.

    A time within hours of the calendar's edge (9999-12-31T23:00-05:00) is clamped to the
    edge instead of overflowing.
    """
    return parse_range(value)[0]


def parse_range(value: str) -> tuple[datetime, datetime]:
    """The interval [start, end) a FHIR date, dateTime or instant stands for, in UTC: a year,
    a month or a day for a partial date, a second (or the given fraction) for a time, as FHIR
    search reads precision. Clamped at the calendar's edges."""
    # Python reads at most microseconds; FHIR allows more digits.
    text = _FRACTION.sub(r"\1", value.replace("Z", "+00:00"))
    if len(text) == 4:
        start = datetime(int(text), 1, 1, tzinfo=UTC)
        return start, _shift(start, years=1)
    if len(text) == 7:
        start = datetime(int(text[:4]), int(text[5:7]), 1, tzinfo=UTC)
        return start, _shift(start, months=1)
    parsed = datetime.fromisoformat(text)
    time = _TIME.search(text)
    if time is None:
        step = timedelta(days=1)
    elif time[1] is None:
        step = timedelta(minutes=1)
    elif time[3] is None:
        step = timedelta(seconds=1)
    else:
        step = timedelta(microseconds=10 ** (6 - len(time[3])))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        start = parsed.astimezone(UTC)
    except OverflowError:
        return (_UTC_MAX, _UTC_MAX) if parsed.year == datetime.max.year else (_UTC_MIN, _UTC_MIN)
    try:
        return start, start + step
    except OverflowError:
        return start, _UTC_MAX


def _shift(start: datetime, years: int = 0, months: int = 0) -> datetime:
    """`start` (the first of a month) moved on by whole years or months; the edge at 9999."""
    month = start.month - 1 + months
    year = start.year + years + month // 12
    if year > datetime.max.year:
        return _UTC_MAX
    return start.replace(year=year, month=month % 12 + 1)


def _date_range(
    body: dict[str, Any], path: str, raw: str
) -> tuple[datetime | None, datetime | None]:
    """[start, end) of the date at `path`; a Period (`x.start`) runs to the end of `x.end`, or
    stays open (end None) without one."""
    try:
        start, end = parse_range(raw)
        if path.endswith(".start"):
            period_end = _walk(body, path.removesuffix(".start") + ".end")
            return start, parse_range(period_end)[1] if isinstance(period_end, str) else None
        return start, end
    except ValueError:
        return None, None


_PRACTITIONER_TYPES = (["Practitioner"], ["PractitionerRole"])


def extract(body: dict[str, Any]) -> SearchColumns:
    paths = _PATHS.get(body.get("resourceType", ""), {})
    patient = None
    for path in paths.get("patient", ()):
        if path == "target":  # Provenance.target lists many things; take its Patient, if any
            targets = body.get("target") or []
            patient = next(
                (ref for t in targets if (ref := _reference(t, want_patient=True))), None
            )
        else:
            patient = _reference(_walk(body, path), want_patient=True)
    practitioner = None
    for path in paths.get("practitioner", ()):
        found = _reference(_walk(body, path), want_patient=False)
        if found is not None and found.split("/")[-2:-1] in _PRACTITIONER_TYPES:
            practitioner = found
            break
    encounter = None
    for path in paths.get("encounter", ()):
        encounter = _reference(_walk(body, path), want_patient=False)
    system = code = None
    for path in paths.get("code", ()):
        system, code = _first_coding(_walk(body, path))
    date = date_end = None
    for path in paths.get("date", ()):
        raw = _walk(body, path)
        if isinstance(raw, str):
            date, date_end = _date_range(body, path, raw)
            break
    _, business_status = _first_coding(body.get("businessStatus"))
    identifiers = tuple(
        (str(i["system"]), str(i["value"]))
        for i in body.get("identifier") or []
        if isinstance(i, dict) and i.get("system") and i.get("value")
    )
    status = body.get("status")
    return SearchColumns(
        patient=patient,
        encounter=encounter,
        status=status if isinstance(status, str) else None,
        code_system=system,
        code=code,
        business_status=business_status,
        date=date,
        date_end=date_end,
        practitioner=practitioner,
        identifiers=identifiers,
    )
