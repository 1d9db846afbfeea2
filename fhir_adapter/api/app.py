"""`create_app(deps)`: the FastAPI application, built from explicit dependencies.

Everything the routes need (store, token verifier, readiness checks, the ingest function)
comes in `ApiDeps`: given directly (tests build an app over a real store and a test key), or
opened by the app's lifespan (`create_app(opened=...)`: the service opens its Runtime at
start-up and closes it at shutdown, once per process). Every route here but `/healthz`,
`/readyz` and the public JWK Set needs a bearer token; the browser apps mounted beside it (the
dashboard, `fhir_adapter.web`; the SMART review app) sign in and then use a session cookie, and
CDS Hooks takes the EHR's JWT (README's API section lists each). Errors are answered as FHIR
OperationOutcome.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from importlib.metadata import version
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from fhir_adapter.api.bundle import ingest_resources
from fhir_adapter.api.capability import capability_statement
from fhir_adapter.api.includes import included, parse_includes
from fhir_adapter.api.limits import DEFAULT_MAX_BODY_BYTES, RequestLimits
from fhir_adapter.api.outcome import (
    ERRORS,
    FHIR_JSON,
    OUTCOME_CONTENT,
    ApiError,
    FhirResponse,
    operation_outcome,
)
from fhir_adapter.api.quality import quality_router
from fhir_adapter.api.search import PARAMETERS, parse_query, searchset
from fhir_adapter.api.security import Grant, TokenVerifier
from fhir_adapter.store import Store, resources
from fhir_adapter.store.resources import Query
from mapping.fhir.context import ModelInfo
from mapping.fhir.references import is_fhir_id

if TYPE_CHECKING:
    from fhir_adapter.cds import CdsHooks
    from fhir_adapter.smart import SmartApp

logger = logging.getLogger(__name__)

METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus text format
# Encounter steps where processing has ended (fhir_adapter.pipeline.steps; kept as strings so
# the API does not import the pipeline).
FINAL = frozenset({"done", "skipped", "failed"})
ReadinessCheck = Callable[[], Awaitable[None]]
# (validated resources, connection name or None) -> (job id, OperationOutcome); processing
# goes on after.
IngestFn = Callable[[list[dict[str, Any]], str | None], Awaitable[tuple[str, dict[str, Any]]]]
# job id -> its status ({"complete": bool, ...}), None when unknown
IngestStatusFn = Callable[[str], dict[str, Any] | None]
# Module level: FastAPI resolves the (postponed) annotations of routes in this module's globals.
# Declared once in the OpenAPI document as the bearer security scheme, not per route.
Auth = Annotated[str | None, Header(alias="Authorization", include_in_schema=False)]
# Path parameters as the OpenAPI document states them (the routes check them too).
ResourceTypePath = Annotated[str, Path(json_schema_extra={"enum": sorted(PARAMETERS)})]
IdPath = Annotated[str, Path(json_schema_extra={"pattern": "^[A-Za-z0-9\\-.]{1,64}$"})]


@dataclass
class ApiDeps:
    store: Store
    verifier: TokenVerifier
    # name -> async check that raises when the dependency is not ready (e.g. the model server)
    readiness: Sequence[tuple[str, ReadinessCheck]] = ()
    ingest: IngestFn | None = None
    ingest_status: IngestStatusFn | None = None
    # The Prometheus text page (fhir_adapter.metrics), when the app serves one.
    metrics: Callable[[], bytes] | None = None
    model_card: dict[str, Any] | None = None
    # The clinician app's SMART launches (fhir_adapter.smart), when EHRs are set up for it.
    smart: SmartApp | None = None
    # The model the drafts name (the clinician's reviewed note names it too).
    model: ModelInfo | None = None
    # Starts the write-back of a connection after a clinician's decision committed.
    write_back: Callable[[str], Awaitable[None]] | None = None
    # The CDS Hooks service (fhir_adapter.cds), when enabled; its routes answer 404 without.
    cds: CdsHooks | None = None


def _fhir(body: dict[str, Any], status: int = 200) -> JSONResponse:
    return FhirResponse(body, status_code=status)


_OUTCOME = OUTCOME_CONTENT
_ERRORS = ERRORS
_OPERATION_OUTCOME_SCHEMA = {
    "type": "object",
    "required": ["resourceType", "issue"],
    "properties": {
        "resourceType": {"const": "OperationOutcome"},
        "issue": {"type": "array", "items": {"type": "object"}},
    },
}
_INGEST_BODY = {
    "required": True,
    "content": {
        media: {"schema": {"type": "object", "description": "a FHIR Bundle (transaction, "
                           "collection or batch) of Encounters, transcripts, questionnaires"}}
        for media in (FHIR_JSON, "application/json")
    },
}  # fmt: skip


def scope_limits(resource_type: str, grant: Grant) -> list[Query]:
    """The token's v2 restrictions as store queries (ORed); [] when unrestricted.

    A restriction this server cannot evaluate grants nothing: a limit that cannot be enforced
    must not widen into no limit. That is an unsupported parameter, or one that filters nothing
    (`_count`, `_offset`, `_summary`, `_include`, ...: search accepts them but they add no
    condition, so a restriction of them alone would match every row).
    """
    if grant.restrictions is None:
        return []
    limits = []
    for restriction in grant.restrictions:
        try:
            limit = parse_query(resource_type, restriction)
            # Every parameter must filter: a control beside a filter (`patient=X&_count=1`)
            # asks for a limit this server would not honor in full.
            enforceable = all(
                resources.filters(parse_query(resource_type, [param])) for param in restriction
            )
        except ApiError:
            continue
        if enforceable:
            limits.append(limit)
    if not limits:
        raise ApiError(
            403,
            "forbidden",
            f"the token's scope restrictions for {resource_type} use parameters this server "
            "cannot evaluate as a limit (unsupported, or controls such as _count that filter "
            "nothing); ask for a scope restricted by search filters such as patient",
        )
    return limits


def create_app(
    deps: ApiDeps | None = None,
    *,
    opened: Callable[[], AbstractAsyncContextManager[ApiDeps]] | None = None,
    public_routers: Sequence[APIRouter] = (),
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_sessions: int | None = None,
) -> FastAPI:
    """The app over `deps`, or over what `opened` yields for the app's lifetime.

    `public_routers` are served without a token: the JWK Set, whose keys must be public, and
    in the demo alone its development EHR.
    Request bodies over `max_body_bytes` are refused before they are read. The dashboard and
    the clinician app each keep at most `max_sessions` signed-in sessions (None:
    `web.sessions.MAX_SESSIONS`, the setting's default).
    """
    if (deps is None) == (opened is None):
        raise ValueError("create_app: pass deps or opened, not both")
    current: list[ApiDeps] = [deps] if deps is not None else []

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if opened is None:
            yield
            return
        async with opened() as made:
            current.append(made)
            try:
                yield
            finally:
                current.clear()

    def active() -> ApiDeps:
        return current[0]

    # The OpenAPI document is served below, behind a token like every other route; no docs UI.
    app = FastAPI(
        title="homework-fhir",
        version=version("homework-fhir"),
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(RequestLimits, max_body_bytes=max_body_bytes)
    for router in public_routers:
        app.include_router(router)
    # Before the generic FHIR routes, which would take /fhir/Measure for a stored type.
    app.include_router(quality_router(active))
    # Imported here: the dashboard, the clinician app and CDS Hooks reuse the API's search and
    # outcome modules.
    from fhir_adapter.cds import cds_router
    from fhir_adapter.smart import smart_router
    from fhir_adapter.web import dashboard_router
    from fhir_adapter.web.sessions import MAX_SESSIONS

    app.include_router(dashboard_router(active, max_sessions or MAX_SESSIONS))
    app.include_router(smart_router(active, max_sessions or MAX_SESSIONS))
    app.include_router(cds_router(active))

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        response = _fhir(operation_outcome(exc.code, exc.diagnostics), exc.status)
        if headers:
            response.headers.update(headers)
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _fhir(operation_outcome("invalid", f"{where}: {first.get('msg', 'invalid')}"), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not-found" if exc.status_code == 404 else "processing"
        response = _fhir(operation_outcome(code, str(exc.detail)), exc.status_code)
        response.headers.update(exc.headers or {})  # 405's Allow
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return _fhir(operation_outcome("exception", "internal error; see the server log"), 500)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # The checks failing now, by the type of their failure: a probe every few seconds during
    # an outage logs its traceback once, not on every probe, and its recovery once.
    failing: dict[str, str] = {}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        checks: dict[str, str] = {}

        def failed(name: str, exc: Exception) -> str:
            # Anyone may call /readyz: a message can name a host or URL (the model server's),
            # so the reply names only the exception's type; the detail goes to the server log
            # (redacted as every logged exception is).
            kind = type(exc).__name__
            if failing.get(name) != kind:
                logger.warning("readiness check %s failed", name, exc_info=exc)
            else:
                logger.debug("readiness check %s still failing (%s)", name, kind)
            failing[name] = kind
            return f"unavailable: {kind}; see the server log"

        def passed(name: str) -> str:
            if failing.pop(name, None) is not None:
                logger.warning("readiness check %s recovered", name)
            return "ok"

        try:
            active().store.ping()
            checks["database"] = passed("database")
        except Exception as exc:  # readiness reports any failure, it never raises
            checks["database"] = failed("database", exc)
        for name, check in active().readiness:
            try:
                await check()
                checks[name] = passed(name)
            except Exception as exc:
                checks[name] = failed(name, exc)
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "not-ready", "checks": checks},
            status_code=200 if ready else 503,
        )

    def base_url(request: Request) -> str:
        return str(request.base_url).rstrip("/") + "/fhir"

    fhir_route: dict[str, Any] = {"response_class": FhirResponse, "responses": _ERRORS}

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(authorization: Auth = None) -> JSONResponse:
        active().verifier.system_scopes(authorization)
        return JSONResponse(app.openapi())

    @app.get("/fhir/metadata", **fhir_route)
    async def metadata(request: Request, authorization: Auth = None) -> JSONResponse:
        active().verifier.system_scopes(authorization)
        return _fhir(capability_statement(base_url(request), app.version))

    @app.get("/fhir/{resource_type}", **fhir_route)
    def search(
        request: Request, resource_type: ResourceTypePath, authorization: Auth = None
    ) -> JSONResponse:
        grant = active().verifier.require(authorization, resource_type, "read")
        params = list(request.query_params.multi_items())
        query = parse_query(resource_type, params)
        includes = parse_includes(resource_type, params)
        query.within = scope_limits(resource_type, grant)

        def limits(other: str) -> list[Query]:
            """Included resources obey the token as matches do (403 for an unreadable type)."""
            return scope_limits(other, active().verifier.require(authorization, other, "read"))

        with active().store.session() as session:
            found, total = resources.search(session, query)
            extra = included(session, found, includes, limits) if includes else []
        return _fhir(
            searchset(base_url(request), resource_type, params, query, found, total, extra)
        )

    def _readable(resource_type: str, rid: str, authorization: str | None) -> None:
        """The token may read `resource_type`/`rid`: 404 for an id outside its scope
        restrictions, as for one that does not exist (SMART 2.2 allows either; this one
        does not tell a stranger that the resource exists)."""
        grant = active().verifier.require(authorization, resource_type, "read")
        if resource_type not in PARAMETERS:
            raise ApiError(404, "not-supported", f"this server holds no {resource_type}")
        if not is_fhir_id(rid):
            raise ApiError(400, "invalid", "a FHIR id is 1-64 letters, digits, '-' or '.'")
        limits = scope_limits(resource_type, grant)
        if limits:
            with active().store.session() as session:
                _, total = resources.search(
                    session, Query(resource_type, ids=[rid], within=limits, count=0)
                )
            if not total:
                raise ApiError(404, "not-found", f"{resource_type}/{rid} is not known")

    @app.get("/fhir/{resource_type}/{rid}", **fhir_route)
    def read(
        resource_type: ResourceTypePath, rid: IdPath, authorization: Auth = None
    ) -> JSONResponse:
        _readable(resource_type, rid, authorization)
        with active().store.session() as session:
            body = resources.get(session, resource_type, rid)
        if body is None:
            raise ApiError(404, "not-found", f"{resource_type}/{rid} is not known")
        response = _fhir(body)
        response.headers["ETag"] = f'W/"{body["meta"]["versionId"]}"'
        return response

    @app.get("/fhir/{resource_type}/{rid}/_history", **fhir_route)
    def history(
        request: Request, resource_type: ResourceTypePath, rid: IdPath, authorization: Auth = None
    ) -> JSONResponse:
        _readable(resource_type, rid, authorization)
        with active().store.session() as session:
            versions = resources.history(session, resource_type, rid)
        if not versions:
            raise ApiError(404, "not-found", f"{resource_type}/{rid} is not known")
        return _fhir(
            {
                "resourceType": "Bundle",
                "type": "history",
                "total": len(versions),
                "entry": [
                    {"fullUrl": f"{base_url(request)}/{resource_type}/{rid}", "resource": v}
                    for v in versions
                ],
            }
        )

    @app.get("/model-card", responses=_ERRORS)
    async def model_card(authorization: Auth = None) -> JSONResponse:
        deps = active()
        deps.verifier.system_scopes(authorization)
        if deps.model_card is None:
            raise ApiError(404, "not-found", "no model card is configured")
        return JSONResponse(deps.model_card)

    @app.get("/metrics", include_in_schema=False)
    def metrics(authorization: Auth = None) -> Response:
        """Prometheus metrics; scrape with a bearer token (`authorization` in the scrape
        config), like every route but the health checks."""
        deps = active()
        deps.verifier.system_scopes(authorization)
        if deps.metrics is None:
            raise ApiError(404, "not-found", "no metrics on this server")
        return Response(deps.metrics(), media_type=METRICS_TYPE)

    ingest_responses = {
        **_ERRORS,
        202: {"description": "Accepted; Content-Location names the status", **_OUTCOME},
        413: {"description": "Body over api.max_body_bytes (OperationOutcome)", **_OUTCOME},
        501: {"description": "Ingest is not enabled on this server", **_OUTCOME},
    }

    @app.post(
        "/ingest",
        status_code=202,
        response_class=FhirResponse,
        responses=ingest_responses,
        openapi_extra={"requestBody": _INGEST_BODY},
    )
    async def ingest(
        request: Request, authorization: Auth = None, connection: str | None = None
    ) -> JSONResponse:
        """Stage a Bundle and answer 202 Accepted; processing goes on in the background and
        `Content-Location` names its status (FHIR asynchronous request pattern)."""
        deps = active()
        # The token first: an unauthenticated body is never read, let alone parsed.
        deps.verifier.require(authorization, "Bundle", "write")
        if deps.ingest is None:
            raise ApiError(501, "not-supported", "ingest is not enabled on this server")
        raw = await request.body()
        # Parsing and validating a large Bundle is CPU work: off the event loop.
        found = await asyncio.to_thread(ingest_resources, raw)
        job_id, outcome = await deps.ingest(found, connection)
        response = _fhir(outcome, 202)
        response.headers["Content-Location"] = str(request.url_for("ingest_job", job_id=job_id))
        return response

    @app.get(
        "/ingest/{job_id}",
        name="ingest_job",
        response_class=FhirResponse,
        responses={**_ERRORS, 202: {"description": "Still processing", **_OUTCOME}},
    )
    def ingest_job(job_id: str, authorization: Auth = None) -> JSONResponse:
        """202 while the push's encounters are being processed, 200 once all are final."""
        deps = active()
        deps.verifier.require(authorization, "Bundle", "write")
        status = deps.ingest_status(job_id) if deps.ingest_status else None
        if status is None:
            raise ApiError(404, "not-found", f"no ingest job {job_id}")
        done = bool(status["complete"])
        outcome = operation_outcome(
            "informational", json.dumps(status, sort_keys=True), severity="information"
        )
        response = _fhir(outcome, 200 if done else 202)
        if not done:
            final = sum(n for step, n in status["by_step"].items() if step in FINAL)
            response.headers["X-Progress"] = f"{final} of {status['encounters']} encounters"
        return response

    def schema() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, routes=app.routes)
            document.setdefault("components", {}).setdefault("schemas", {})["OperationOutcome"] = (
                _OPERATION_OUTCOME_SCHEMA
            )
            document["components"]["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            }
            document["security"] = [{"bearer": []}]
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = schema  # type: ignore[method-assign]
    return app
