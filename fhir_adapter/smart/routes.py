"""The clinician app: SMART launch, callback, and the review screen (read-only for now).

    GET  /smart/launch?iss=&launch=   EHR launch (both) or standalone launch (iss, or neither:
                                      the connection marked standalone_default)
    GET  /smart/callback?code=&state= code exchange, id_token check, the grant check (403
                                      unless the granted scopes let the clinician read what
                                      the screen shows: REQUIRED_READ), session (replacing
                                      the browser's previous one); to /smart/review (the
                                      encounter: the token's `encounter`, else the one in a
                                      CDS Hooks card's `appContext` the EHR passed on)
    GET  /smart/review                the session's patient: this session's drafts, earlier
                                      homework and its review, the PHQ-9/GAD-7 trend
                                      (these pages without a session: 302 to /smart/launch,
                                      with the `iss` this browser last signed in through)
    GET  /smart/review/tasks/{id}     one draft's linked evidence: the quoted turn in its
                                      transcript context, read from the EHR with the
                                      clinician's token (the DocumentReference, and its
                                      Binary where the transcript is given by url; 404 for a
                                      Task of another patient)
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
token for reading the EHR) lives in the database, shared by every API process, until the access
token expires; never in the cookie, whose random id is the only key that decrypts it
(`fhir_adapter.web.sessions`). The access token is never logged or shown. Pending launches are
kept the same way, so the callback may reach another replica than the launch did. The two are
bounded apart: anyone may start a launch, so a flood of them evicts only other pending launches
(MAX_PENDING_LAUNCHES, oldest first), never a clinician's session (`api.max_sessions`).

Actions (POST, same Origin and the session's CSRF token, else 403; a Task of another
patient 404; a body over MAX_FORM_BODY 413, never cut; then 303 back to the review screen):

    POST /smart/review/approve            the whole plan, or the Tasks ticked (`task`)
    POST /smart/review/tasks/{id}/edit    description, category, due
    POST /smart/review/tasks/{id}/reject  reason
    POST /smart/review/add                category, description, due

Approve, edit and reject forms carry `version-<task id>`, the versionId of each Task the page
showed: a decision that would change a Task someone changed since is refused (409, reload);
one that changes nothing (a double submit, a reload's resend) is the idempotent 303. A form
without a Task's version (a page from before they were shown) cannot say what the clinician
saw, so any change it would make is refused the same way.

Each is applied by `fhir_adapter.smart.actions` (store and outbox in one transaction) and the
connection's write-back is started after the commit: the EHR receives it under the service's
backend identity (its SMART Backend Services connection), the clinician named as author and
verifier in its Provenance, not under the clinician's token.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.exc import IntegrityError

from fhir_adapter.ehr.attachments import inline_attachments
from fhir_adapter.smart import actions, review
from fhir_adapter.smart.client import SmartApp
from fhir_adapter.smart.errors import LaunchError
from fhir_adapter.smart_scopes import parse_scopes, unreadable
from fhir_adapter.web.dashboard import _WEB, SecuredRoute
from fhir_adapter.web.sessions import (
    MAX_SESSIONS,
    CookiePolicy,
    ExpiringStore,
    new_token,
    same_origin,
    same_value,
)
from mapping import terminology
from mapping.errors import DecisionError, MappingError, ResourceError
from mapping.fhir.approval import MAX_DESCRIPTION, MAX_REASON
from mapping.fhir.audit import LaunchContext
from mapping.fhir.codes import CS_HOMEWORK_CATEGORY
from mapping.fhir.context import Ref
from mapping.fhir.references import is_fhir_id

if TYPE_CHECKING:
    from fhir_adapter.api.app import ApiDeps

logger = logging.getLogger(__name__)

LAUNCH_TTL_S = 600
# Pending launches kept at most. Anyone may start one, so past this a new launch evicts the
# oldest pending ones (all live LAUNCH_TTL_S), never a session: those are another kind, bounded
# by `api.max_sessions`.
MAX_PENDING_LAUNCHES = 1000
LAUNCH_COOKIE = "hwf-smart-launch"
SESSION_COOKIE = "hwf-smart"
# The EHR connection this browser last signed in through (a name from the settings, no secret):
# where a browser without a session is sent to launch again.
EHR_COOKIE = "hwf-smart-ehr"
EHR_COOKIE_S = 30 * 24 * 3600
# A session ends with its access token; an EHR that says nothing about expiry gets an hour.
DEFAULT_TOKEN_S = 3600
# What the review screen shows of the launch patient, so what the clinician's own grant must
# let them read (patient/ or user/ scopes, v1 or v2, wildcards): the PHQ-9/GAD-7 totals
# (Observation), shown from our store, and the transcript the drafts are drawn from and quote
# (DocumentReference, and its Binary where given by url), read from the EHR with their token.
# Not Task: the drafts are ours, and Epic and Oracle Health hold no such Task to grant.
REQUIRED_READ = ("Observation", "DocumentReference", "Binary")
READ_CONTEXTS = ("patient", "user")
# The largest form the review screen sends fits: a description of MAX_DESCRIPTION characters
# at up to 4 UTF-8 bytes each, 3 bytes each once percent-encoded, plus the other fields (CSRF
# token, category, due, the versions of a plan's items). A larger body is refused, never cut.
MAX_FORM_BODY = MAX_DESCRIPTION * 4 * 3 + 16 * 1024
VERSION_FIELD = "version-"  # + a Task id: the versionId of that Task the page showed
CATEGORIES = tuple((code, terminology.display(CS_HOMEWORK_CATEGORY, code))
                   for code in ("practice", "take-action", "journal", "learn"))  # fmt: skip
DONE = {"approve": "approved", "edit": "edited", "reject": "rejected", "add": "added"}
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
    launch: str | None = None  # the EHR's launch id (None: standalone)


@dataclass(frozen=True)
class SmartSession:
    connection: str
    iss: str
    subject: str
    fhir_user: str | None
    patient: str  # "Patient/<id>"
    encounter: str | None  # "Encounter/<id>"
    scope: str  # as granted (checked against REQUIRED_READ at the callback)
    csrf: str
    expires: float
    access_token: str = ""  # never logged, never rendered
    launch: str | None = None  # the EHR's launch id, for the audit trail
    audit_key: str = ""  # names this session in AuditEvents (never the cookie value)

    def __repr__(self) -> str:  # keep the token out of any repr
        return f"SmartSession(connection={self.connection!r}, patient={self.patient!r})"


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _reference(kind: str, value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    bare = value.rsplit("/", 1)[-1]
    return f"{kind}/{bare}" if is_fhir_id(bare) else None


def smart_router(active: Callable[[], ApiDeps], max_sessions: int = MAX_SESSIONS) -> APIRouter:
    """The app's routes; at most `max_sessions` clinician sessions at once (`api.max_sessions`)."""
    router = APIRouter(prefix="/smart", include_in_schema=False, route_class=SecuredRoute)
    templates = Jinja2Templates(directory=_WEB / "templates")
    launches = ExpiringStore("smart-launch", PendingLaunch, lambda: active().store,
                             MAX_PENDING_LAUNCHES)  # fmt: skip
    sessions = ExpiringStore("smart-session", SmartSession, lambda: active().store, max_sessions)

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
                              time.time() + LAUNCH_TTL_S, launch),
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
        requested = conn.smart_app.scopes if conn.smart_app is not None else []
        scope = _granted_scope(token.get("scope"), requested)
        missing = unreadable(parse_scopes(scope.split()), REQUIRED_READ, READ_CONTEXTS)
        if missing:
            # No session: the screen would show this patient's data from our store, and the
            # decisions go to the EHR under our backend identity, whatever the EHR granted.
            logger.warning("SMART sign-in at %s refused: no read of %s granted", conn.name,
                           ", ".join(missing))  # fmt: skip
            return page(request, 403, _not_granted(conn.name, missing, requested),
                        "Access not granted")  # fmt: skip
        lifetime = int(token.get("expires_in") or DEFAULT_TOKEN_S)
        fhir_user = claims.get("fhirUser") or claims.get("profile")
        encounter = _reference("Encounter", token.get("encounter")) or _app_context_encounter(
            token.get("appContext")
        )
        made = SmartSession(
            connection=conn.name,
            iss=conn.base_url,
            subject=str(claims["sub"]),
            fhir_user=str(fhir_user) if fhir_user else None,
            patient=patient,
            encounter=encounter,
            scope=scope,
            csrf=new_token(),
            expires=time.time() + max(60, lifetime),
            access_token=access,
            launch=pending.launch,
            audit_key=new_token(),
        )
        # One review session per browser: a new sign-in ends the one its cookie names, which
        # would otherwise live on, unreachable, until its token expired and fill the bound.
        sessions.end(request.cookies.get(policy.name(SESSION_COOKIE)))
        session_id = sessions.put(made)
        logger.info("SMART session for %s (%s) at %s", made.fhir_user, made.patient, conn.name)
        response = RedirectResponse(f"{base(request)}/review", status_code=303)
        policy.set(response, policy.name(SESSION_COOKIE), session_id, max(60, lifetime),
                   samesite="lax")  # fmt: skip
        policy.clear(response, policy.name(LAUNCH_COOKIE), samesite="lax")
        policy.set(response, policy.name(EHR_COOKIE), conn.name, EHR_COOKIE_S, samesite="lax")
        return response

    def to_launch(request: Request) -> Response:
        """No session for a page: start a launch (standalone, with the EHR this browser last
        signed in through where it is still set up), which comes back to the review screen."""
        known = request.cookies.get(CookiePolicy.of(request).name(EHR_COOKIE))
        smart = active().smart
        conn = smart.connections.get(known or "") if smart is not None else None
        query = f"?{urlencode({'iss': conn.base_url})}" if conn is not None else ""
        return RedirectResponse(f"{base(request)}/launch{query}", status_code=302)

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
            return to_launch(request)
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
                "categories": CATEGORIES,
                "max_description": MAX_DESCRIPTION,
                "max_reason": MAX_REASON,
                "version_field": VERSION_FIELD,
                "done": DONE.get(request.query_params.get("done", "")),
            },
        )

    @router.get("/review/tasks/{task_id}")
    async def evidence_page(request: Request, task_id: str) -> Response:
        session = current(request)
        if session is None:
            return to_launch(request)
        shown = (
            review.task(active().store, session.patient, task_id) if is_fhir_id(task_id) else None
        )
        if shown is None:
            return page(request, 404, "No such homework item for this patient.", "Not found")
        document = None
        problem = None
        if shown.document and shown.document.startswith("DocumentReference/"):
            smart = app()
            try:
                document = await smart.read(session.iss, session.access_token, shown.document)
                subject = (document or {}).get("subject", {}).get("reference")
                if document is not None and subject != session.patient:
                    document, problem = None, "The transcript belongs to another patient."
                elif document is not None:
                    # A transcript given by url (a Binary, as Epic and Oracle Health keep
                    # note content) is read with the same token.
                    document = await inline_attachments(
                        document,
                        lambda url: smart.fetch_attachment(session.iss, session.access_token, url),
                    )
            except LaunchError as exc:
                document, problem = None, exc.message
            except MappingError as exc:
                document, problem = None, f"The transcript cannot be read: {exc}"
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

    async def fields(request: Request) -> list[tuple[str, str]] | None:
        """The form's fields; None for a body over MAX_FORM_BODY (refused whole: a cut body
        loses its last fields and splits a character)."""
        body = await request.body()
        if len(body) > MAX_FORM_BODY:
            return None
        return parse_qsl(body.decode("utf-8", "replace"))

    def too_large(request: Request) -> Response:
        return page(
            request,
            413,
            f"Nothing was saved: the form is larger than this app accepts (a description is "
            f"at most {MAX_DESCRIPTION} characters, a reason {MAX_REASON}). Go back, shorten "
            "the text and send it again.",
            "Too large",
        )

    async def act(request: Request, make: Callable[[dict[str, str], list[tuple[str, str]]],
                                                    actions.Action]) -> Response:  # fmt: skip
        session = current(request)
        if session is None:
            return no_session(request)
        pairs = await fields(request)
        if pairs is None:
            return too_large(request)
        csrf = next((v for k, v in pairs if k == "csrf"), None)
        if not same_origin(request) or not same_value(session.csrf, csrf):
            return page(request, 403, "Refused: the form expired or came from elsewhere.",
                        "Refused")  # fmt: skip
        deps = active()
        clinician = _clinician(session.fhir_user)
        if clinician is None or deps.model is None:
            return page(request, 403, "Only a practitioner signed in through the EHR can decide "
                        "on homework.", "Refused")  # fmt: skip
        conn = deps.smart.connections.get(session.connection) if deps.smart else None
        actor = actions.Actor(
            connection=conn,
            patient=session.patient,
            encounter=session.encounter,
            clinician=clinician,
            launch=LaunchContext(session.audit_key or _hash(session.subject)[:32],
                                 session.launch,
                                 Ref(session.encounter) if session.encounter else None),
            model=deps.model,
        )  # fmt: skip
        now = datetime.now(UTC)
        try:
            action = make(dict(pairs), pairs)
            decided = await asyncio.to_thread(actions.decide, deps.store, actor, action, now)
        except actions.NotFound:
            return page(request, 404, "No such homework item for this patient.", "Not found")
        except DecisionError as exc:
            await asyncio.to_thread(actions.refused, deps.store, actor, action, str(exc), now)
            return page(request, 409, str(exc), "Not possible")
        except IntegrityError:
            # Two decisions on one Task at the same moment, both from its current version:
            # the second's new version collides with the first's, and its transaction is
            # rolled back whole; nothing of it was saved, as with a stale page.
            return page(request, 409, "This homework was changed by someone else at the same "
                        "moment, so nothing was saved; reload the page to see it as it is now, "
                        "then decide again.", "Not possible")  # fmt: skip
        except (ResourceError, ValueError) as exc:
            return page(request, 400, str(exc), "Please check the form")
        if decided.queued_for is not None and deps.write_back is not None:
            await deps.write_back(decided.queued_for)
        logger.info("clinician %s: %s (%d written)", decided.kind, session.patient,
                    len(decided.written))  # fmt: skip
        return RedirectResponse(f"{base(request)}/review?done={decided.kind}", status_code=303)

    @router.post("/review/approve")
    async def approve(request: Request) -> Response:
        def make(form: dict[str, str], pairs: list[tuple[str, str]]) -> actions.Action:
            chosen = tuple(v for k, v in pairs if k == "task")
            return actions.ApproveItems(None if form.get("all") else chosen, _versions(pairs))

        return await act(request, make)

    @router.post("/review/tasks/{task_id}/edit")
    async def edit(request: Request, task_id: str) -> Response:
        def make(form: dict[str, str], pairs: list[tuple[str, str]]) -> actions.Action:
            return actions.EditItem(
                task_id,
                form.get("description") or None,
                form.get("category") or None,
                _due(form.get("due")),
                _versions(pairs).get(task_id, ""),
            )

        return await act(request, make)

    @router.post("/review/tasks/{task_id}/reject")
    async def reject(request: Request, task_id: str) -> Response:
        def make(form: dict[str, str], pairs: list[tuple[str, str]]) -> actions.Action:
            return actions.RejectItem(task_id, form.get("reason", ""),
                                      _versions(pairs).get(task_id, ""))  # fmt: skip

        return await act(request, make)

    @router.post("/review/add")
    async def add(request: Request) -> Response:
        def make(form: dict[str, str], _: list[tuple[str, str]]) -> actions.Action:
            return actions.AddItem(form.get("category", ""), form.get("description", ""),
                                   _due(form.get("due")))  # fmt: skip

        return await act(request, make)

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        policy = CookiePolicy.of(request)
        session = current(request)
        if session is None:
            return no_session(request)
        pairs = await fields(request)
        if pairs is None:
            return too_large(request)
        form = dict(pairs)
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


def _granted_scope(value: Any, requested: list[str]) -> str:
    """The scopes the EHR granted: the token response's `scope`. An EHR may leave it out only
    when it granted exactly what was asked for (RFC 6749 5.1), so then that is what `requested`
    says; anything but a string grants nothing."""
    if value is None:
        return " ".join(requested)
    return value if isinstance(value, str) else ""


def _not_granted(connection: str, missing: list[str], requested: list[str]) -> str:
    """The refusal page's text: what was not granted and who can change that, in the scope
    syntax (SMART v1 or v2) the connection already asks with."""
    v1 = any(s.endswith((".read", ".write", ".*")) for s in requested)
    needed = " ".join(f"patient/{t}.{'read' if v1 else 'rs'}" for t in missing)
    told = (
        f"Ask this service's administrator to add {needed} to "
        f"ehr.{connection}.smart_app.scopes, and the EHR's administrator to register the same "
        "scopes for the app; then open the app again from the patient's chart."
        if unreadable(parse_scopes(requested), missing, READ_CONTEXTS)
        else f"This service asks for that (ehr.{connection}.smart_app.scopes): ask the EHR's "
        f"administrator to register {needed} for the app and grant it to your sign-in; then "
        "open the app again from the patient's chart."
    )
    return (
        f"The EHR signed you in but did not let this app read the patient's "
        f"{', '.join(missing)}, which the review screen shows. Nothing was opened. {told}"
    )


def _app_context_encounter(value: Any) -> str | None:
    """The encounter a CDS Hooks card put in its link's `appContext` (our cards write
    `{"encounter": "Encounter/<id>"}`), which the EHR hands back in the token response (CDS
    Hooks 2.0, Link.appContext). Used when the token names no encounter of its own; anything
    else in it, or another shape, is ignored."""
    if not isinstance(value, str) or len(value) > 1024:
        return None
    try:
        body = json.loads(value)
    except ValueError:
        return None
    return _reference("Encounter", body.get("encounter")) if isinstance(body, dict) else None


def _versions(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Task id -> the versionId the page showed, from the form's `version-<id>` fields."""
    return {k.removeprefix(VERSION_FIELD): v for k, v in pairs if k.startswith(VERSION_FIELD)}


def _due(value: str | None) -> date | None:
    return date.fromisoformat(value) if value else None


def _clinician(fhir_user: str | None) -> Ref | None:
    """The fhirUser claim (absolute or relative) as a Practitioner reference."""
    parts = (fhir_user or "").rstrip("/").split("/")
    kinds = ("Practitioner", "PractitionerRole")
    if len(parts) >= 2 and parts[-2] in kinds and is_fhir_id(parts[-1]):
        return Ref(f"{parts[-2]}/{parts[-1]}")
    return None


def launch_link(base_url: str, iss: str, launch: str) -> str:
    """An EHR launch URL of this app, as an EHR would open it."""
    return f"{base_url}/smart/launch?{urlencode({'iss': iss, 'launch': launch})}"
