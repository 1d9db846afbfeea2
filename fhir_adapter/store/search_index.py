"""Extract the search columns of a stored resource from its JSON.

One table of FHIR search parameters per resource type, kept as data, so adding a parameter is
a line here, not a query change. Paths are the R4 search parameter expressions, simplified to
the first matching element.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# resource type -> (patient path, encounter path, code path, date paths)
_PATHS: dict[str, dict[str, tuple[str, ...]]] = {
    "CarePlan": {
        "patient": ("subject",),
        "encounter": ("encounter",),
        "code": ("category",),
        "date": ("period.start", "created"),
    },
    "Task": {
        "patient": ("for",),
        "encounter": ("encounter",),
        "code": ("code",),
        "date": ("authoredOn",),
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


def parse_datetime(value: str) -> datetime:
    """Parse a FHIR date/dateTime/instant into UTC; a bare date or naive time is taken as UTC.

    A time within hours of the calendar's edge (9999-12-31T23:00-05:00) is clamped to the
    edge instead of overflowing.
    """
    # Python reads at most microseconds; FHIR allows more digits.
    text = _FRACTION.sub(r"\1", value.replace("Z", "+00:00"))
    if len(text) == 4:
        text += "-01-01"
    elif len(text) == 7:
        text += "-01"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        edge = datetime.max if parsed.year == datetime.max.year else datetime.min
        return edge.replace(tzinfo=UTC)


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
    encounter = None
    for path in paths.get("encounter", ()):
        encounter = _reference(_walk(body, path), want_patient=False)
    system = code = None
    for path in paths.get("code", ()):
        system, code = _first_coding(_walk(body, path))
    date = None
    for path in paths.get("date", ()):
        raw = _walk(body, path)
        if isinstance(raw, str):
            try:
                date = parse_datetime(raw)
            except ValueError:
                date = None
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
        identifiers=identifiers,
    )
