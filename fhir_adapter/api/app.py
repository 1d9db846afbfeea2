"""`create_app(deps)`: the FastAPI application, built from explicit dependencies.

Everything the routes need (store, token verifier, readiness checks, the ingest function)
comes in `ApiDeps`: given directly (tests build an app over a real store and a test key), or
opened by the app's lifespan (`create_app(opened=...)`: the service opens its Runtime at
start-up and closes it at shutdown, once per process). Every route but `/healthz`, `/readyz`
and the public JWK Set needs a bearer token; errors are answered as FHIR OperationOutcome.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from importlib.metadata import version
from typing import Annotated, Any

from fastapi import APIRouter, Body, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from fhir_adapter.api.capability import capability_statement
from fhir_adapter.api.outcome import ApiError, operation_outcome
from fhir_adapter.api.search import PARAMETERS, parse_query, searchset
from fhir_adapter.api.security import TokenVerifier
from fhir_adapter.store import Store, resources

logger = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus text format
# Encounter steps where processing has ended (fhir_adapter.pipeline.steps; kept as strings so
# the API does not import the pipeline).
FINAL = frozenset({"done", "skipped", "failed"})
ReadinessCheck = Callable[[], Awaitable[None]]
# (bundle, connection name or None) -> (job id, OperationOutcome); processing goes on after.
IngestFn = Callable[[dict[str, Any], str | None], Awaitable[tuple[str, dict[str, Any]]]]
# job id -> its status ({"complete": bool, ...}), None when unknown
IngestStatusFn = Callable[[str], dict[str, Any] | None]
# Module level: FastAPI resolves the (postponed) annotations of routes in this module's globals.
Auth = Annotated[str | None, Header(alias="Authorization")]


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


def _fhir(body: dict[str, Any], status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status, media_type=FHIR_JSON)


def create_app(
    deps: ApiDeps | None = None,
    *,
    opened: Callable[[], AbstractAsyncContextManager[ApiDeps]] | None = None,
    public_routers: Sequence[APIRouter] = (),
) -> FastAPI:
    """The app over `deps`, or over what `opened` yields for the app's lifetime.

    `public_routers` are served without a token: only the JWK Set, whose keys must be public.
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

    app = FastAPI(title="homework-fhir", version=version("homework-fhir"), lifespan=lifespan)
    for router in public_routers:
        app.include_router(router)

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
        return _fhir(operation_outcome(code, str(exc.detail)), exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return _fhir(operation_outcome("exception", "internal error; see the server log"), 500)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            active().store.ping()
            checks["database"] = "ok"
        except Exception as exc:  # readiness reports any failure, it never raises
            checks["database"] = f"unavailable: {type(exc).__name__}"
        for name, check in active().readiness:
            try:
                await check()
                checks[name] = "ok"
            except Exception as exc:
                checks[name] = f"unavailable: {exc}"
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "not-ready", "checks": checks},
            status_code=200 if ready else 503,
        )

    def base_url(request: Request) -> str:
        return str(request.base_url).rstrip("/") + "/fhir"

    @app.get("/fhir/metadata")
    async def metadata(request: Request, authorization: Auth = None) -> JSONResponse:
        active().verifier.claims(authorization)
        return _fhir(capability_statement(base_url(request), app.version))

    @app.get("/fhir/{resource_type}")
    def search(request: Request, resource_type: str, authorization: Auth = None) -> JSONResponse:
        active().verifier.require(authorization, resource_type, "read")
        params = list(request.query_params.multi_items())
        query = parse_query(resource_type, params)
        with active().store.session() as session:
            found, total = resources.search(session, query)
        return _fhir(searchset(base_url(request), resource_type, params, query, found, total))

    def _known(resource_type: str) -> None:
        if resource_type not in PARAMETERS:
            raise ApiError(404, "not-supported", f"this server holds no {resource_type}")

    @app.get("/fhir/{resource_type}/{rid}")
    def read(resource_type: str, rid: str, authorization: Auth = None) -> JSONResponse:
        active().verifier.require(authorization, resource_type, "read")
        _known(resource_type)
        with active().store.session() as session:
            body = resources.get(session, resource_type, rid)
        if body is None:
            raise ApiError(404, "not-found", f"{resource_type}/{rid} is not known")
        response = _fhir(body)
        response.headers["ETag"] = f'W/"{body["meta"]["versionId"]}"'
        return response

    @app.get("/fhir/{resource_type}/{rid}/_history")
    def history(
        request: Request, resource_type: str, rid: str, authorization: Auth = None
    ) -> JSONResponse:
        active().verifier.require(authorization, resource_type, "read")
        _known(resource_type)
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

    @app.get("/model-card")
    async def model_card(authorization: Auth = None) -> JSONResponse:
        deps = active()
        deps.verifier.claims(authorization)
        if deps.model_card is None:
            raise ApiError(404, "not-found", "no model card is configured")
        return JSONResponse(deps.model_card)

    @app.get("/metrics", include_in_schema=False)
    def metrics(authorization: Auth = None) -> Response:
        """Prometheus metrics; scrape with a bearer token (`authorization` in the scrape
        config), like every route but the health checks."""
        deps = active()
        deps.verifier.claims(authorization)
        if deps.metrics is None:
            raise ApiError(404, "not-found", "no metrics on this server")
        return Response(deps.metrics(), media_type=METRICS_TYPE)

    @app.post("/ingest")
    async def ingest(
        request: Request,
        bundle: Annotated[dict[str, Any], Body()],
        authorization: Auth = None,
        connection: str | None = None,
    ) -> JSONResponse:
        """Stage a Bundle and answer 202 Accepted; processing goes on in the background and
        `Content-Location` names its status (FHIR asynchronous request pattern)."""
        deps = active()
        deps.verifier.require(authorization, "Bundle", "write")
        if deps.ingest is None:
            raise ApiError(501, "not-supported", "ingest is not enabled on this server")
        if bundle.get("resourceType") != "Bundle" or bundle.get("type") not in (
            "transaction",
            "collection",
            "batch",
        ):
            raise ApiError(
                400, "invalid", "POST /ingest takes a FHIR Bundle of type transaction or collection"
            )
        job_id, outcome = await deps.ingest(bundle, connection)
        response = _fhir(outcome, 202)
        response.headers["Content-Location"] = str(request.url_for("ingest_job", job_id=job_id))
        return response

    @app.get("/ingest/{job_id}", name="ingest_job")
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

    return app
