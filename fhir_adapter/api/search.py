"""FHIR search parameters -> a store `Query`, and search results -> a searchset Bundle.

The parameters each type supports are kept as data; an unsupported parameter is a 400 with an
OperationOutcome that lists the supported ones (silently ignoring it would return a wrong
answer to a quality team's question).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

from fhir_adapter.api.outcome import ApiError
from fhir_adapter.store.resources import DateBound, Query
from fhir_adapter.store.search_index import SEARCHABLE_TYPES, parse_datetime

DEFAULT_COUNT = 50
MAX_COUNT = 500

# Query field for each search parameter, per resource type (R4 names where R4 has one).
_COMMON = {"_id": "id", "_lastUpdated": "last_updated", "identifier": "identifier"}
PARAMETERS: dict[str, dict[str, str]] = {
    "CarePlan": {
        "patient": "patient",
        "subject": "patient",
        "encounter": "encounter",
        "status": "status",
        "category": "code",
        "date": "date",
    },
    "Task": {
        "patient": "patient",
        "subject": "patient",
        "encounter": "encounter",
        "status": "status",
        "code": "code",
        "business-status": "business_status",
        "authored-on": "date",
    },
    "Observation": {
        "patient": "patient",
        "subject": "patient",
        "encounter": "encounter",
        "status": "status",
        "code": "code",
        "date": "date",
    },
    "DocumentReference": {
        "patient": "patient",
        "subject": "patient",
        "encounter": "encounter",
        "status": "status",
        "type": "code",
        "date": "date",
    },
    "Communication": {
        "patient": "patient",
        "subject": "patient",
        "encounter": "encounter",
        "status": "status",
        "category": "code",
        "sent": "date",
    },
    "Provenance": {"patient": "patient", "recorded": "date"},
    "Device": {"patient": "patient", "status": "status", "type": "code"},
}
assert set(PARAMETERS) == set(SEARCHABLE_TYPES)

_PREFIXES = ("eq", "lt", "le", "gt", "ge")


def _reference(value: str, default_type: str) -> str:
    return value if "/" in value else f"{default_type}/{value}"


def _token(value: str) -> tuple[str | None, str]:
    if "|" in value:
        system, code = value.split("|", 1)
        return (system or None), code
    return None, value


def _date(param: str, value: str) -> DateBound:
    op = value[:2] if value[:2] in _PREFIXES else "eq"
    raw = value[2:] if value[:2] in _PREFIXES else value
    try:
        return DateBound(op, parse_datetime(raw))
    except ValueError as exc:
        raise ApiError(
            400, "invalid", f"{param}={value!r} is not a FHIR date (e.g. ge2026-03-01)"
        ) from exc


def _integer(param: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise ApiError(400, "invalid", f"{param} must be an integer, got {value!r}") from exc
    if not low <= number <= high:
        raise ApiError(400, "invalid", f"{param} must be between {low} and {high}")
    return number


def parse_query(resource_type: str, params: Iterable[tuple[str, str]]) -> Query:
    """Parse a FHIR search over `resource_type` into a store query."""
    if resource_type not in PARAMETERS:
        raise ApiError(
            404,
            "not-supported",
            f"this server holds no {resource_type}; it serves {', '.join(PARAMETERS)}",
        )
    known = {**_COMMON, **PARAMETERS[resource_type]}
    query = Query(resource_type, count=DEFAULT_COUNT)
    for name, value in params:
        if name == "_count":
            query.count = _integer(name, value, 0, MAX_COUNT)
            continue
        if name == "_offset":
            query.offset = _integer(name, value, 0, 10**9)
            continue
        if name in ("_format", "_pretty"):
            continue
        field = known.get(name)
        if field is None:
            raise ApiError(
                400,
                "not-supported",
                f"unsupported search parameter {name!r} for {resource_type}; supported: "
                + ", ".join(sorted([*known, "_count", "_offset"])),
            )
        values = value.split(",")
        if field == "id":
            query.ids = [*query.ids, *values]
        elif field == "patient":
            query.patient = _reference(value, "Patient")
        elif field == "encounter":
            query.encounter = _reference(value, "Encounter")
        elif field == "status":
            query.status = [*query.status, *values]
        elif field == "business_status":
            query.business_status = [*query.business_status, *(_token(v)[1] for v in values)]
        elif field == "code":
            query.code = [*query.code, *(_token(v) for v in values)]
        elif field == "identifier":
            query.identifier = _token(value)
        elif field == "date":
            query.date = [*query.date, _date(name, value)]
        elif field == "last_updated":
            query.last_updated = [*query.last_updated, _date(name, value)]
    return query


def searchset(
    base_url: str,
    resource_type: str,
    params: list[tuple[str, str]],
    query: Query,
    resources: list[dict[str, Any]],
    total: int,
) -> dict[str, Any]:
    """A searchset Bundle with self/next/previous links that keep the caller's parameters."""
    kept = [(k, v) for k, v in params if k not in ("_offset", "_count")]

    def link(relation: str, offset: int) -> dict[str, str]:
        query_string = urlencode([*kept, ("_count", str(query.count)), ("_offset", str(offset))])
        return {"relation": relation, "url": f"{base_url}/{resource_type}?{query_string}"}

    links = [link("self", query.offset)]
    if query.offset + query.count < total and query.count > 0:
        links.append(link("next", query.offset + query.count))
    if query.offset > 0:
        links.append(link("previous", max(0, query.offset - query.count)))
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": [
            {
                "fullUrl": f"{base_url}/{r['resourceType']}/{r['id']}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in resources
        ],
    }
