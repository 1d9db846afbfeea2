"""Fidelity over FHIR: the published Measures and `$evaluate-measure`, and outcome linkage.

`GET /fhir/Measure[/{id}]` serves the Measures; `GET /fhir/Measure/{id}/$evaluate-measure`
answers a MeasureReport (parameters: periodStart, periodEnd, reportType
population|summary|subject-list, practitioner, and `clinic`, ours: an Organization
reference); `GET /quality/outcomes` answers the outcome linkage JSON with the same parameters.
A report aggregates Tasks, notes and scores, so the token must read each of them without v2
restrictions (an aggregate over part of the data would read as the whole).
"""

from __future__ import annotations

import asyncio
import calendar
import re
from collections.abc import Callable, Sequence
from datetime import date
from importlib.metadata import version
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse

from fhir_adapter.api.outcome import ERRORS, ApiError, FhirResponse
from fhir_adapter.api.security import TokenVerifier
from fhir_adapter.quality import MeasureRequest, course_outcomes, evaluate_measure
from fhir_adapter.quality.evaluate import REPORT_TYPES
from fhir_adapter.store import Store
from mapping.fhir.references import is_fhir_id
from mapping.quality import measures

Auth = Annotated[str | None, Header(alias="Authorization", include_in_schema=False)]
# Each report reads these types; outcome linkage reads the scores too.
MEASURE_INPUTS = ("Measure", "Task", "DocumentReference")
OUTCOME_INPUTS = ("Task", "DocumentReference", "Observation")
_PARAMETERS = frozenset({"periodStart", "periodEnd", "reportType", "practitioner", "clinic"})
_PARTIAL_DATE = re.compile(r"([0-9]{4})(?:-(0[1-9]|1[0-2])(?:-(0[1-9]|[12][0-9]|3[01]))?)?")


class Deps(Protocol):
    store: Store
    verifier: TokenVerifier


def _fhir(body: dict[str, Any]) -> JSONResponse:
    return FhirResponse(body)


def _bound(name: str, value: str, *, end: bool) -> date:
    """A FHIR date of year, month or day precision; a period end takes its last day."""
    match = _PARTIAL_DATE.fullmatch(value)
    if match is None:
        raise ApiError(400, "invalid", f"{name} must be a date (YYYY, YYYY-MM or YYYY-MM-DD)")
    year, month, day = int(match[1]), match[2], match[3]
    try:
        if day is not None:
            return date(year, int(month), int(day))
        if month is not None:
            last = calendar.monthrange(year, int(month))[1] if end else 1
            return date(year, int(month), last)
        return date(year, 12, 31) if end else date(year, 1, 1)
    except ValueError:
        raise ApiError(400, "invalid", f"{name} {value} is not a calendar date") from None


def _reference(name: str, value: str, resource_type: str) -> str:
    rid = value.removeprefix(f"{resource_type}/")
    if not is_fhir_id(rid):
        raise ApiError(400, "invalid", f"{name} must be {resource_type}/id or an id")
    return f"{resource_type}/{rid}"


def measure_request(params: Sequence[tuple[str, str]]) -> MeasureRequest:
    """The $evaluate-measure parameters as a request; 400 naming what is wrong."""
    seen: dict[str, str] = {}
    for name, value in params:
        if name not in _PARAMETERS:
            raise ApiError(
                400, "not-supported",
                f"unknown parameter {name}; supported: {', '.join(sorted(_PARAMETERS))}",
            )  # fmt: skip
        if name in seen:
            raise ApiError(400, "invalid", f"{name} is given twice")
        seen[name] = value
    report_type = seen.get("reportType", "summary")
    if report_type not in REPORT_TYPES:
        raise ApiError(
            400, "invalid", f"reportType must be one of {', '.join(sorted(REPORT_TYPES))}"
        )
    start = _bound("periodStart", seen["periodStart"], end=False) if "periodStart" in seen else None
    end = _bound("periodEnd", seen["periodEnd"], end=True) if "periodEnd" in seen else None
    if start and end and end < start:
        raise ApiError(400, "invalid", f"periodEnd {end} is before periodStart {start}")
    return MeasureRequest(
        period_start=start,
        period_end=end,
        report_type=report_type,
        practitioner=(
            _reference("practitioner", seen["practitioner"], "Practitioner")
            if "practitioner" in seen
            else None
        ),
        clinic=_reference("clinic", seen["clinic"], "Organization") if "clinic" in seen else None,
    )


def require_unrestricted(
    verifier: TokenVerifier, authorization: str | None, types: Sequence[str]
) -> None:
    """The token reads every type in `types` without v2 restrictions (403 otherwise)."""
    for resource_type in types:
        grant = verifier.require(authorization, resource_type, "read")
        if grant.restrictions is not None:
            raise ApiError(
                403, "forbidden",
                f"a fidelity report aggregates all {resource_type} resources; the token's "
                f"scope for {resource_type} is restricted, so ask for an unrestricted read scope",
            )  # fmt: skip


def _measure_id(measure_id: str) -> str:
    if measure_id not in measures.MEASURE_IDS:
        raise ApiError(
            404, "not-found",
            f"no Measure/{measure_id}; measures: {', '.join(measures.MEASURE_IDS)}",
        )  # fmt: skip
    return measure_id


def quality_router(active: Callable[[], Deps]) -> APIRouter:
    """Routes over `active()`'s store and verifier (the app's lifespan opens them)."""
    router = APIRouter()
    published = version("homework-fhir")

    @router.get("/fhir/Measure", response_class=FhirResponse, responses=ERRORS)
    def search_measures(request: Request, authorization: Auth = None) -> JSONResponse:
        active().verifier.require(authorization, "Measure", "read")
        unknown = sorted({k for k in request.query_params if k not in ("_id", "url")})
        if unknown:
            raise ApiError(
                400, "not-supported", f"Measure search supports _id and url, not {unknown[0]}"
            )
        wanted_ids = request.query_params.getlist("_id")
        wanted_urls = request.query_params.getlist("url")
        found = [
            measures.measure_resource(m, published)
            for m in measures.MEASURE_IDS
            if (not wanted_ids or m in wanted_ids)
            and (not wanted_urls or measures.measure_url(m) in wanted_urls)
        ]
        base = str(request.base_url).rstrip("/") + "/fhir"
        return _fhir(
            {
                "resourceType": "Bundle",
                "type": "searchset",
                "total": len(found),
                "entry": [
                    {
                        "fullUrl": f"{base}/Measure/{m['id']}",
                        "resource": m,
                        "search": {"mode": "match"},
                    }
                    for m in found
                ],
            }
        )

    @router.get("/fhir/Measure/{measure_id}", response_class=FhirResponse, responses=ERRORS)
    def read_measure(measure_id: str, authorization: Auth = None) -> JSONResponse:
        active().verifier.require(authorization, "Measure", "read")
        return _fhir(measures.measure_resource(_measure_id(measure_id), published))

    @router.get(
        "/fhir/Measure/{measure_id}/$evaluate-measure",
        response_class=FhirResponse,
        responses=ERRORS,
    )
    async def evaluate(
        request: Request, measure_id: str, authorization: Auth = None
    ) -> JSONResponse:
        deps = active()
        require_unrestricted(deps.verifier, authorization, MEASURE_INPUTS)
        wanted = measure_request(list(request.query_params.multi_items()))
        report = await asyncio.to_thread(
            evaluate_measure, deps.store, _measure_id(measure_id), wanted
        )
        return _fhir(report)

    @router.get("/quality/outcomes", responses=ERRORS)
    async def outcomes(request: Request, authorization: Auth = None) -> JSONResponse:
        deps = active()
        require_unrestricted(deps.verifier, authorization, OUTCOME_INPUTS)
        wanted = measure_request(list(request.query_params.multi_items()))
        body = await asyncio.to_thread(course_outcomes, deps.store, wanted)
        return JSONResponse(body)

    return router
