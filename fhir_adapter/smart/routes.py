"""The clinician app: SMART launch, callback, and the review screen (read-only for now).

    GET  /smart/launch?iss=&launch=   EHR launch (both) or standalone launch (iss, or neither:
                                      the connection marked standalone_default)
    GET  /smart/callback?code=&state= code exchange, id_token check, session; to /smart/review
    GET  /smart/review                the session's patient: this session's drafts, earlier
                                      homework and its review, the PHQ-9/GAD-7 trend
    GET  /smart/review/tasks/{id}     one draft's linked evidence: the quoted turn in its
                                      transcript context, read from the EHR with the
                                      clinician's token (404 for a Task of another patient)
    POST /smart/logout                end the session (CSRF)
    GET  /smart/static/NAME           the review screen's script and stylesheets

State: `/smart/launch` keeps the launch (EHR connection, PKCE code_verifier, nonce) server-side
under a random `state`, for 10 minutes and for one callback (taken, never read twice), bound to
the browser by a random value in an HttpOnly cookie whose hash the launch keeps: a callback
from another browser, a replayed or an expired state gets a page saying to launch again.

Cookies are SameSite=Lax, not Strict as the dashboard's: the callback arrives as a top-level
navigation redirected from the EHR's authorization server (another site), and an EHR opens the
app from its own pages; a Strict cookie is sent on neither, so the launch binding and the new
session would be lost. Lax still withholds them from cross-site POSTs, subresources and frames,
and every form also carries the session's CSRF token (synchronizer) and must come from our own
Origin. HttpOnly always; Secure and `__Host-` names except for http on loopback.

Session: what the launch established (EHR connection, fhirUser, patient, encounter, the access
token for reading the EHR) lives in this process's memory, never in the cookie, until the access
token expires. The access token is never logged or shown.

Extension point: approve/edit/reject/add (issue #16 item 3) become POST routes here taking the
session's CSRF token; the review template marks where their forms go.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from fhir_adapter.smart import review
from fhir_adapter.smart.client import SmartApp
from fhir_adapter.smart.errors import LaunchError
from fhir_adapter.web.dashboard import _WEB, SecuredRoute
from fhir_adapter.web.sessions import (
    CookiePolicy,
    ExpiringStore,
    new_token,
    same_origin,
    same_value,
)
from mapping.fhir.references import is_fhir_id

if TYPE_CHECKING:
    from fhir_adapter.api.app import ApiDeps

logger = logging.getLogger(__name__)

LAUNCH_TTL_S = 600
LAUNCH_COOKIE = "hwf-smart-launch"
SESSION_COOKIE = "hwf-smart"
# A session ends with its access token; an EHR that says nothing about expiry gets an hour.
DEFAULT_TOKEN_S = 3600
MAX_FORM_BODY = 16 * 1024
STATIC = {
    "dashboard.css": ("text/css; charset=utf-8", False),
    "review.css": ("text/css; charset=utf-8", False),
    "review.js": ("text/javascript; charset=utf-8", True),
    "vendor/chart.umd.min.js": ("text/javascript; charset=utf-8", True),
}


@dataclass(frozen=True)
class PendingLaunch:
    connection: str
    code_verifier: str
    nonce: str
    binding: str  # sha256 of the browser's launch cookie
    expires: float


@dataclass(frozen=True)
class SmartSession:
    connection: str
    iss: str
    subject: str
    fhir_user: str | None
    patient: str  # "Patient/<id>"
    encounter: str | None  # "Encounter/<id>"
    scope: str
    csrf: str
    expires: float
    access_token: str = ""  # never logged, never rendered

    def __repr__(self) -> str:  # keep the token out of any repr
        return f"SmartSession(connection={self.connection!r}, patient={self.patient!r})"


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _reference(kind: str, value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    bare = value.rsplit("/", 1)[-1]
    return f"{kind}/{bare}" if is_fhir_id(bare) else None


def smart_router(active: Callable[[], ApiDeps]) -> APIRouter:
    router = APIRouter(prefix="/smart", include_in_schema=False, route_class=SecuredRoute)
    templates = Jinja2Templates(directory=_WEB / "templates")
    launches: ExpiringStore[PendingLaunch] = ExpiringStore()
    sessions: ExpiringStore[SmartSession] = ExpiringStore()

    def base(request: Request) -> str:
        return f"{request.scope.get('root_path', '')}/smart"

    def page(request: Request, status: int, message: str, title: str = "Cannot open") -> Response:
        return templates.TemplateResponse(
            request,
            "smart_error.html",
            {"base": base(request), "title": title, "message": message},
            status_code=status,
        )

    def app() -> SmartApp:
        smart = active().smart
        if smart is None:
            raise LaunchError(404, "App launch is not set up on this server.")
        return smart

    def current(request: Request) -> SmartSession | None:
        return sessions.get(request.cookies.get(CookiePolicy.of(request).name(SESSION_COOKIE)))

    @router.get("/launch")
    async def launch(
        request: Request, iss: str | None = None, launch: str | None = None
    ) -> Response:
        policy = CookiePolicy.of(request)
        try:
            smart = app()
            conn = smart.connection_for(iss)
            config = await smart.discover(conn)
            state, nonce, verifier = new_token(), new_token(), new_token() + new_token()
            binding = request.cookies.get(policy.name(LAUNCH_COOKIE)) or new_token()
            launches.put(
                PendingLaunch(conn.name, verifier, nonce, _hash(binding),
                              time.time() + LAUNCH_TTL_S),
                session_id=state,
            )  # fmt: skip
            url = await smart.authorization_url(
                conn, config, state=state, nonce=nonce, code_verifier=verifier, launch=launch
            )
        except LaunchError as exc:
            return page(request, exc.status, exc.message)
        logger.info("SMART %s launch to %s", "EHR" if launch else "standalone", conn.name)
        response = RedirectResponse(url, status_code=302)
        policy.set(response, policy.name(LAUNCH_COOKIE), binding, LAUNCH_TTL_S, samesite="lax")
        return response

    @router.get("/callback")
    async def callback(request: Request) -> Response:
        policy = CookiePolicy.of(request)
        params = request.query_params
        pending = launches.take(params.get("state"))
        if pending is None:
            return page(
                request,
                400,
                "This sign-in has expired or was already used. Please open the app again "
                "from the patient's chart in your EHR.",
            )
        binding = request.cookies.get(policy.name(LAUNCH_COOKIE)) or ""
        if not hmac.compare_digest(_hash(binding), pending.binding):
            return page(
                request, 400, "This sign-in was started in another browser; please launch again."
            )
        if params.get("error"):
            return page(
                request,
                400,
                f"The EHR did not sign you in ({params.get('error')}: "
                f"{params.get('error_description', 'no reason given')}).",
            )
        code = params.get("code")
        if not code:
            return page(request, 400, "The EHR sent no authorization code; please launch again.")
        try:
            smart = app()
            conn = smart.connections[pending.connection]
            config = await smart.discover(conn)
            token = await smart.exchange(conn, config, code, pending.code_verifier)
            claims = await smart.verify_id_token(conn, config, token.get("id_token"),
                                                 pending.nonce)  # fmt: skip
        except (LaunchError, KeyError) as exc:
            if isinstance(exc, KeyError):
                return page(request, 400, "This EHR connection is no longer set up.")
            return page(request, exc.status, exc.message)
        patient = _reference("Patient", token.get("patient"))
        if patient is None:
            return page(
                request,
                400,
                "The EHR gave no patient in context. Open the app from a patient's chart "
                "(or choose a patient when the EHR asks).",
            )
        access = token.get("access_token")
        if not isinstance(access, str) or not access:
            return page(request, 502, "The EHR sent no access token.")
        lifetime = int(token.get("expires_in") or DEFAULT_TOKEN_S)
        fhir_user = claims.get("fhirUser") or claims.get("profile")
        made = SmartSession(
            connection=conn.name,
            iss=conn.base_url,
            subject=str(claims["sub"]),
            fhir_user=str(fhir_user) if fhir_user else None,
            patient=patient,
            encounter=_reference("Encounter", token.get("encounter")),
            scope=str(token.get("scope", "")),
            csrf=new_token(),
            expires=time.time() + max(60, lifetime),
            access_token=access,
        )
        session_id = sessions.put(made)
        logger.info("SMART session for %s (%s) at %s", made.fhir_user, made.patient, conn.name)
        response = RedirectResponse(f"{base(request)}/review", status_code=303)
        policy.set(response, policy.name(SESSION_COOKIE), session_id, max(60, lifetime),
                   samesite="lax")  # fmt: skip
        policy.clear(response, policy.name(LAUNCH_COOKIE), samesite="lax")
        return response

    def no_session(request: Request) -> Response:
        return page(
            request,
            401,
            "No clinician session. Open the review from the patient's chart in your EHR "
            "(or sign in again: sessions end when the EHR's access expires).",
            title="Launch from your EHR",
        )

    @router.get("/review")
    def review_page(request: Request) -> Response:
        session = current(request)
        if session is None:
            return no_session(request)
        store = active().store
        found = review.drafts(store, session.patient, session.encounter)
        trend = review.trend(store, session.patient)
        return templates.TemplateResponse(
            request,
            "smart_review.html",
            {
                "base": base(request),
                "session": session,
                "drafts": found,
                "trend_json": json.dumps(trend).replace("<", "\\u003c"),
                "trend": trend,
                "has_trend": any(trend.values()),
            },
        )

    @router.get("/review/tasks/{task_id}")
    async def evidence_page(request: Request, task_id: str) -> Response:
        session = current(request)
        if session is None:
            return no_session(request)
        shown = (
            review.task(active().store, session.patient, task_id) if is_fhir_id(task_id) else None
        )
        if shown is None:
            return page(request, 404, "No such homework item for this patient.", "Not found")
        document = None
        problem = None
        if shown.document and shown.document.startswith("DocumentReference/"):
            try:
                document = await app().read(session.iss, session.access_token, shown.document)
            except LaunchError as exc:
                problem = exc.message
            subject = (document or {}).get("subject", {}).get("reference")
            if document is not None and subject != session.patient:
                document, problem = None, "The transcript belongs to another patient."
        found = review.evidence(shown, document)
        return templates.TemplateResponse(
            request,
            "smart_evidence.html",
            {
                "base": base(request),
                "session": session,
                "item": shown,
                "evidence": found,
                "problem": problem or found.problem,
            },
        )

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        policy = CookiePolicy.of(request)
        session = current(request)
        if session is None:
            return no_session(request)
        body = await request.body()
        form = dict(parse_qsl(body[:MAX_FORM_BODY].decode("utf-8", "replace")))
        if not same_origin(request) or not same_value(session.csrf, form.get("csrf")):
            return page(request, 403, "Sign-out refused: the form expired or came from elsewhere.")
        sessions.end(request.cookies.get(policy.name(SESSION_COOKIE)))
        response = page(request, 200, "You are signed out. Launch the app again from the EHR.",
                        "Signed out")  # fmt: skip
        policy.clear(response, policy.name(SESSION_COOKIE), samesite="lax")
        return response

    @router.get("/static/{name:path}")
    def static(request: Request, name: str) -> Response:
        known = STATIC.get(name)
        if known is None:
            return page(request, 404, "No such file.", "Not found")
        media_type, private = known
        if private and current(request) is None:
            return no_session(request)
        return Response((_WEB / "static" / name).read_bytes(), media_type=media_type)

    return router


def launch_link(base_url: str, iss: str, launch: str) -> str:
    """An EHR launch URL of this app, as an EHR would open it."""
    return f"{base_url}/smart/launch?{urlencode({'iss': iss, 'launch': launch})}"
