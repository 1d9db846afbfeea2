"""The fidelity dashboard: pages and JSON for quality teams, behind the API's own tokens.

    GET  /dashboard/login         the login form (a bearer token, as the API takes)
    POST /dashboard/login         verify the token, start a session (cookie), go to /dashboard
    POST /dashboard/logout        end the session
    GET  /dashboard               the dashboard page                (no session: to the login)
    GET  /dashboard/api/filters   therapists, clinics, first and last session    (no session: 401)
    GET  /dashboard/api/report    measures, funnel, outcome linkage for a filter
    GET  /dashboard/api/tasks     the Tasks behind a figure (drill-down)
    GET  /dashboard/static/NAME   stylesheet (public: the login page uses it), scripts (session)

A token opens the dashboard when the API's TokenVerifier accepts it and it grants unrestricted
read of Task, DocumentReference and Observation: the figures count every session and task, so a
token restricted to some patients must not see them. Sessions and CSRF: `web.sessions`. Every
response carries a strict Content-Security-Policy (scripts and styles from this server only, no
inline ones), `frame-ancestors 'none'`, nosniff and `Cache-Control: no-store`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates

from fhir_adapter.api.outcome import ApiError, operation_outcome
from fhir_adapter.web import data
from fhir_adapter.web.sessions import (
    MAX_SESSIONS,
    CookiePolicy,
    SessionStore,
    WebSession,
    new_token,
    same_origin,
    same_value,
)

if TYPE_CHECKING:
    from fhir_adapter.api.app import ApiDeps

logger = logging.getLogger(__name__)

# What a token must grant, unrestricted, to open the dashboard.
REQUIRED_READ = ("Task", "DocumentReference", "Observation")
# A login form holds one token: anything longer is not one.
MAX_LOGIN_BODY = 16 * 1024
# How long a login form stays usable (its CSRF cookie).
LOGIN_FORM_S = 1800
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: with no-referrer a browser sends `Origin: null` on POSTs.
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_WEB = Path(str(files("fhir_adapter.web")))
# Static files: name -> (media type, needs a session).
STATIC = {
    "dashboard.css": ("text/css; charset=utf-8", False),
    "dashboard.js": ("text/javascript; charset=utf-8", True),
    "vendor/chart.umd.min.js": ("text/javascript; charset=utf-8", True),
}


class SecuredRoute(APIRoute):
    """A route whose every response carries the dashboard's security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def secured(request: Request) -> Response:
            response = await handler(request)
            response.headers.update(SECURITY_HEADERS)
            return response

        return secured


def _base(request: Request) -> str:
    return f"{request.scope.get('root_path', '')}/dashboard"


def _unauthorised() -> JSONResponse:
    return JSONResponse(
        operation_outcome("login", "no dashboard session: log in at /dashboard/login"),
        status_code=401,
    )


def _invalid(message: str) -> JSONResponse:
    return JSONResponse(operation_outcome("invalid", message), status_code=400)


def dashboard_router(active: Callable[[], ApiDeps], max_sessions: int = MAX_SESSIONS) -> APIRouter:
    """The dashboard's routes over the app's dependencies (store and token verifier); at most
    `max_sessions` dashboard sessions at once (`api.max_sessions`)."""
    router = APIRouter(prefix="/dashboard", include_in_schema=False, route_class=SecuredRoute)
    templates = Jinja2Templates(directory=_WEB / "templates")
    sessions = SessionStore(lambda: active().store, max_sessions)

    def current(request: Request) -> WebSession | None:
        return sessions.get(request.cookies.get(CookiePolicy.of(request).session))

    def login_form(request: Request, error: str | None = None, status: int = 200) -> Response:
        """The login page, with a fresh CSRF value in the form and in its cookie."""
        csrf = new_token()
        response = templates.TemplateResponse(
            request,
            "login.html",
            {"base": _base(request), "csrf": csrf, "error": error},
            status_code=status,
        )
        policy = CookiePolicy.of(request)
        policy.set(response, policy.login_csrf, csrf, LOGIN_FORM_S)
        return response

    def verify(token: str) -> dict[str, Any]:
        """The token's claims when it may open the dashboard; ApiError otherwise."""
        verifier = active().verifier
        authorization = f"Bearer {token}"
        claims = verifier.claims(authorization)
        for resource_type in REQUIRED_READ:
            grant = verifier.require(authorization, resource_type, "read")
            if grant.restrictions is not None:
                raise ApiError(
                    403,
                    "forbidden",
                    f"the token's read of {resource_type} is restricted (e.g. to some "
                    "patients); the dashboard counts every session, so it needs unrestricted "
                    f"read of {', '.join(REQUIRED_READ)}",
                )
        return claims

    @router.get("/login", name="dashboard_login")
    def login_page(request: Request) -> Response:
        if current(request) is not None:
            return RedirectResponse(_base(request), status_code=303)
        return login_form(request)

    @router.post("/login")
    async def login(request: Request) -> Response:
        policy = CookiePolicy.of(request)
        body = await request.body()
        if len(body) > MAX_LOGIN_BODY:
            return login_form(request, "That is too long to be an access token.", 413)
        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        if not same_origin(request) or not same_value(
            request.cookies.get(policy.login_csrf), form.get("csrf")
        ):
            return login_form(
                request,
                "This login form expired or was sent from another site; please try again.",
                403,
            )
        token = form.get("token", "").strip()
        if not token:
            return login_form(request, "Paste an access token.", 401)
        try:
            claims = verify(token)
        except ApiError as exc:
            logger.info("dashboard login refused: %s", exc.code)
            reason = (
                "This token does not open the dashboard: "
                if exc.status == 403
                else "This token was not accepted: "
            )
            return login_form(request, reason + exc.diagnostics, exc.status)
        expires = float(claims["exp"])
        session_id, _ = sessions.start(str(claims.get("sub") or "unknown"), expires)
        logger.info("dashboard session started for %s", claims.get("sub"))
        response = RedirectResponse(_base(request), status_code=303)
        policy.set(response, policy.session, session_id, max(1, int(expires - time.time())))
        policy.clear(response, policy.login_csrf)
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        policy = CookiePolicy.of(request)
        session = current(request)
        if session is None:
            return RedirectResponse(f"{_base(request)}/login", status_code=303)
        body = await request.body()
        form = dict(parse_qsl(body[:MAX_LOGIN_BODY].decode("utf-8", "replace")))
        if not same_origin(request) or not same_value(session.csrf, form.get("csrf")):
            return JSONResponse(
                operation_outcome("security", "logout refused: missing or wrong CSRF token"),
                status_code=403,
            )
        sessions.end(request.cookies.get(policy.session))
        response = RedirectResponse(f"{_base(request)}/login", status_code=303)
        policy.clear(response, policy.session)
        return response

    @router.get("", name="dashboard")
    def page(request: Request) -> Response:
        session = current(request)
        if session is None:
            return RedirectResponse(f"{_base(request)}/login", status_code=303)
        return templates.TemplateResponse(
            request,
            "dashboard.html",
            {
                "base": _base(request),
                "csrf": session.csrf,
                "subject": session.subject,
                "options": data.options(active().store),
            },
        )

    @router.get("/api/filters")
    def filters(request: Request) -> Response:
        if current(request) is None:
            return _unauthorised()
        return JSONResponse(data.options(active().store))

    @router.get("/api/report")
    def report(request: Request) -> Response:
        if current(request) is None:
            return _unauthorised()
        try:
            chosen = data.Filters.parse(request.query_params)
        except data.FilterError as exc:
            return _invalid(str(exc))
        return JSONResponse(data.report(active().store, chosen))

    @router.get("/api/tasks")
    def tasks(request: Request) -> Response:
        if current(request) is None:
            return _unauthorised()
        try:
            chosen = data.Filters.parse(request.query_params)
            drill = data.Drill.parse(request.query_params)
        except data.FilterError as exc:
            return _invalid(str(exc))
        return JSONResponse(data.tasks(active().store, chosen, drill))

    @router.get("/static/{name:path}")
    def static(request: Request, name: str) -> Response:
        known = STATIC.get(name)
        if known is None:
            return JSONResponse(operation_outcome("not-found", "no such file"), status_code=404)
        media_type, private = known
        if private and current(request) is None:
            return _unauthorised()
        return Response((_WEB / "static" / name).read_bytes(), media_type=media_type)

    return router
