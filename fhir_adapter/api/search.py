"""FHIR search parameters -> a store `Query`, and search results -> a searchset Bundle.

The parameters each type supports are kept as data; an unsupported parameter is a 400 with an
OperationOutcome that lists the supported ones (silently ignoring it would return a wrong
answer to a quality team's question).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlencode

from fhir_adapter.api.outcome import ApiError
from fhir_adapter.store.resources import DateBound, Query
from fhir_adapter.store.search_index import SEARCHABLE_TYPES, parse_range
from mapping.fhir.references import RESOURCE_TYPE, is_fhir_id

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
        # Ours (R4 CarePlan has no author parameter): the treating practitioner.
        "author": "practitioner",
    },
    "Task": {
        "patient": "patient",
        "subject": "patient",
        "encounter": "encounter",
        "status": "status",
        "code": "code",
        "business-status": "business_status",
        "authored-on": "date",
        "requester": "practitioner",
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
        "author": "practitioner",
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
    "AuditEvent": {"patient": "patient", "date": "date"},
}
assert set(PARAMETERS) == set(SEARCHABLE_TYPES)

_PREFIXES = ("eq", "ne", "lt", "le", "gt", "ge", "sa", "eb")
# FHIR search date values: a date, or a dateTime with seconds or minutes, and a zone.
_DATE = re.compile(
    r"[0-9]{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12][0-9]|3[01])"
    r"(T([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,9})?)?"
    r"(Z|[+-]((0[0-9]|1[0-3]):[0-5][0-9]|14:00))?)?)?)?"
)
# Parameters whose repeats already AND (a range: ge2026-01-01&lt2026-02-01).
_DATES = ("date", "last_updated")
# The longest token or reference the store can hold (its search columns' width).
MAX_VALUE = 256
# Values one parameter may OR, and conditions (values and repeats) one search may hold: each
# is a term of the SQL WHERE, and SQLite refuses a tree deeper than 1000 (a 500) long before
# the URL limit; no screen or report asks for more.
MAX_VALUES = 100
MAX_CONDITIONS = 100


def _invalid(message: str) -> ApiError:
    return ApiError(400, "invalid", message)


def _too_costly(message: str) -> ApiError:
    return ApiError(400, "too-costly", f"{message}; split the search into several")


def _value(param: str, value: str) -> str:
    if not value:
        raise _invalid(f"{param} has an empty value")
    if len(value) > MAX_VALUE:
        raise _invalid(f"{param} is longer than {MAX_VALUE} characters")
    return value


def _reference(param: str, value: str, default_type: str) -> str:
    """`id` or `Type/id` (FHIR's grammar for both), as the store indexes references."""
    rtype, _, rid = value.rpartition("/") if "/" in value else (default_type, "", value)
    if not (RESOURCE_TYPE.fullmatch(rtype) and is_fhir_id(rid)):
        raise _invalid(f"{param} must be a FHIR reference: {default_type}/ID or ID, where ID "
                       "is 1-64 letters, digits, '-' or '.'")  # fmt: skip
    return f"{rtype}/{rid}"


def _id(param: str, value: str) -> str:
    if not is_fhir_id(value):
        raise _invalid(f"{param}: a FHIR id is 1-64 letters, digits, '-' or '.'")
    return value


def _token(param: str, value: str) -> tuple[str | None, str]:
    if "|" in value:
        system, code = value.split("|", 1)
        return (_value(param, system) if system else None), _value(param, code)
    return None, _value(param, value)


def _date(param: str, value: str) -> DateBound:
    op = value[:2] if value[:2] in _PREFIXES else "eq"
    raw = value[2:] if value[:2] in _PREFIXES else value
    # An unencoded "+" of a zone arrives as a space ("+" means space in a query string).
    raw = raw.replace(" ", "+")
    try:
        if not _DATE.fullmatch(raw):
            raise ValueError(raw)
        start, end = parse_range(raw)  # the value's precision is an interval (FHIR search)
        return DateBound(op, start, end)
    except ValueError as exc:
        raise _invalid(
            f"{param} is not a FHIR date: [eq|ne|lt|le|gt|ge|sa|eb]YYYY[-MM[-DD[Thh:mm[:ss]"
            "[zone]]]] "
            "(e.g. ge2026-03-01)"
        ) from exc


def _integer(param: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise _invalid(f"{param} must be an integer") from exc
    if not low <= number <= high:
        raise _invalid(f"{param} must be between {low} and {high}")
    return number


def _supported(resource_type: str) -> dict[str, str]:
    if resource_type not in PARAMETERS:
        raise ApiError(
            404,
            "not-supported",
            f"this server holds no such resource type; it serves {', '.join(PARAMETERS)}",
        )
    return {**_COMMON, **PARAMETERS[resource_type]}


def parse_query(resource_type: str, params: Iterable[tuple[str, str]]) -> Query:
    """Parse a FHIR search over `resource_type` into a store query.

    Values of one parameter separated by commas are alternatives (OR); a parameter given
    twice must hold both times (AND), as FHIR search defines.
    """
    known = _supported(resource_type)
    query = Query(resource_type, count=DEFAULT_COUNT)
    seen: set[str] = set()
    conditions = 0
    for name, value in params:
        if name == "_count":
            query.count = _integer(name, value, 0, MAX_COUNT)
            continue
        if name == "_offset":
            query.offset = _integer(name, value, 0, 10**9)
            continue
        if name in ("_format", "_pretty", "_include", "_revinclude"):
            continue  # _include/_revinclude: fhir_adapter.api.includes
        if name == "_summary":
            if value != "count":
                raise ApiError(400, "not-supported", "_summary: only _summary=count is supported")
            query.count = 0  # the total alone
            continue
        field = known.get(name)
        if field is None:
            raise ApiError(
                400,
                "not-supported",
                f"unsupported search parameter {name[:64]!r} for {resource_type}; supported: "
                + ", ".join(sorted([*known, "_count", "_offset"])),
            )
        values = value.count(",") + 1
        if values > MAX_VALUES:
            raise _too_costly(f"{name} has {values} comma-separated values, over "
                              f"{MAX_VALUES}")  # fmt: skip
        conditions += values
        if conditions > MAX_CONDITIONS:
            raise _too_costly(f"the search has over {MAX_CONDITIONS} conditions (values and "
                              "repeated parameters together)")  # fmt: skip
        # A repeat gets its own condition, ANDed with the first (dates are ANDed already).
        target = query if field not in seen or field in _DATES else Query(resource_type)
        if target is not query:
            query.also.append(target)
        seen.add(field)
        _apply(target, name, field, value)
    return query


def _apply(query: Query, name: str, field: str, value: str) -> None:
    values = value.split(",")
    if field == "id":
        query.ids = [_id(name, v) for v in values]
    elif field == "patient":
        query.patient = _reference(name, value, "Patient")
    elif field == "encounter":
        query.encounter = _reference(name, value, "Encounter")
    elif field == "practitioner":
        query.practitioner = _reference(name, value, "Practitioner")
    elif field == "status":
        query.status = [_value(name, v) for v in values]
    elif field == "business_status":
        query.business_status = [_token(name, v)[1] for v in values]
    elif field == "code":
        query.code = [_token(name, v) for v in values]
    elif field == "identifier":
        query.identifier = _token(name, value)
    elif field == "date":
        query.date = [*query.date, _date(name, value)]
    elif field == "last_updated":
        query.last_updated = [*query.last_updated, _date(name, value)]


def searchset(
    base_url: str,
    resource_type: str,
    params: list[tuple[str, str]],
    query: Query,
    resources: list[dict[str, Any]],
    total: int,
    included: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """A searchset Bundle with self/next/previous links that keep the caller's parameters;
    `included` resources (`_include`, `_revinclude`) follow the matches."""
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
                "search": {"mode": mode},
            }
            for mode, found in (("match", resources), ("include", included))
            for r in found
        ],
    }
