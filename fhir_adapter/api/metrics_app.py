"""A worker's own small HTTP server: `/healthz` and `/metrics` (bearer token), nothing else.

Step, model and write timings are measured in the process that does the work, so each worker
serves its own; Prometheus scrapes every worker pod as it scrapes the API. The token rules are
the API's (`TokenVerifier.system_scopes`): no route but the health check is open.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import FastAPI, Header
from fastapi.responses import JSONResponse, Response

from fhir_adapter.api.outcome import ApiError, operation_outcome
from fhir_adapter.api.security import TokenVerifier

METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus text format
Auth = Annotated[str | None, Header(alias="Authorization", include_in_schema=False)]


def metrics_app(verifier: TokenVerifier, page: Callable[[], bytes]) -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.exception_handler(ApiError)
    async def _api_error(_: object, exc: ApiError) -> JSONResponse:
        response = JSONResponse(
            operation_outcome(exc.code, exc.diagnostics),
            status_code=exc.status,
            media_type="application/fhir+json",
        )
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    def metrics(authorization: Auth = None) -> Response:
        verifier.system_scopes(authorization)
        return Response(page(), media_type=METRICS_TYPE)

    return app
