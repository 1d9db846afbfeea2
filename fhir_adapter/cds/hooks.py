"""CDS Hooks 2.0: discovery and the two services, answered from the store alone.

    GET  /cds-services                                   discovery (the services below)
    POST /cds-services/homework-drafts-patient-view      hook patient-view
    POST /cds-services/homework-drafts-encounter-start   hook encounter-start

When the patient in `context.patientId` has homework drafts awaiting review (`drafts`), a
service answers one `info` card ("3 homework drafts from 2 Dec awaiting review") whose link
(type `smart`) launches the review app at `cds.launch_url`; with `context.encounterId` the link's
`appContext` is `{"encounter":"Encounter/<id>"}`. No drafts: `{"cards": []}`. Nothing is
prefetched and nothing is asked of the EHR or the model: one count and one row from the store.

Every call, discovery included, carries the EHR's JWT (`trust`); its `aud` is the URL called,
`{api base}/cds-services[/{id}]`. The token is checked before the body is read. A body that is
not a hook request of the service's hook is a 400 naming the field; errors are
OperationOutcomes (JSON). Logs carry the service, the `hookInstance`, the issuer and the card
count, never the patient or the token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Annotated, Any

import httpx
from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fhir_adapter.api.outcome import ApiError
from fhir_adapter.cds.drafts import Drafts, awaiting_review, summary
from fhir_adapter.cds.keys import JwksCache
from fhir_adapter.cds.trust import ClientVerifier, StoredReplays, TrustedClient
from fhir_adapter.settings import Settings
from fhir_adapter.store import Store

if TYPE_CHECKING:
    from fhir_adapter.api.app import ApiDeps

logger = logging.getLogger(__name__)

# Module level: FastAPI resolves the (postponed) annotations of routes in this module's globals.
Auth = Annotated[str | None, Header(alias="Authorization", include_in_schema=False)]
PREFIX = "/cds-services"
LAUNCH_PATH = "/smart/launch"
SOURCE = {"label": "homework-fhir"}
DETAIL = (
    "Drafted by AI (homework-fhir) from the session transcript. Nothing reaches the care plan "
    "until a clinician approves it: open the review to approve, edit or reject each draft."
)
_SERVICE_ID = re.compile(r"[a-z0-9-]{1,64}")
_FHIR_ID = r"^[A-Za-z0-9\-.]{1,64}$"


@dataclass(frozen=True)
class CdsService:
    id: str
    hook: str
    title: str
    description: str
    # Context fields the hook requires beyond patientId and userId.
    needs_encounter: bool = False

    def discovery(self) -> dict[str, str]:
        return {"hook": self.hook, "id": self.id, "title": self.title,
                "description": self.description}  # fmt: skip


SERVICES = (
    CdsService(
        id="homework-drafts-patient-view",
        hook="patient-view",
        title="Homework drafts awaiting review",
        description="When the patient's chart opens: a card when AI-drafted therapy homework "
        "from their sessions awaits the clinician's review, with a link to review it.",
    ),
    CdsService(
        id="homework-drafts-encounter-start",
        hook="encounter-start",
        title="Homework drafts awaiting review",
        description="When an encounter starts: a card when AI-drafted therapy homework from "
        "the patient's sessions awaits the clinician's review, with a link to review it.",
        needs_encounter=True,
    ),
)
BY_ID = {s.id: s for s in SERVICES}


# ---------------------------------------------------------------- the request


class HookContext(BaseModel):
    """patient-view and encounter-start context (other fields are allowed and ignored)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    user_id: str = Field(alias="userId", min_length=1, max_length=256)
    patient_id: str = Field(alias="patientId", pattern=_FHIR_ID)
    encounter_id: str | None = Field(None, alias="encounterId", pattern=_FHIR_ID)


class HookRequest(BaseModel):
    """A CDS Hooks request; `prefetch`, `fhirServer` and `fhirAuthorization` are accepted and
    not used (this service reads its own store)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    hook: str = Field(min_length=1, max_length=128)
    hook_instance: uuid.UUID = Field(alias="hookInstance")
    fhir_server: str | None = Field(None, alias="fhirServer")
    fhir_authorization: dict[str, Any] | None = Field(None, alias="fhirAuthorization")
    context: HookContext
    prefetch: dict[str, Any] | None = None


def parse_request(raw: bytes, service: CdsService) -> HookRequest:
    """The hook request in `raw` for `service`; ApiError 400 naming the first bad field."""
    try:
        request = HookRequest.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ApiError(400, "invalid", f"{where}: {first['msg']}") from None
    if request.hook != service.hook:
        raise ApiError(400, "invalid", f"hook: {service.id} answers the {service.hook} hook")
    if service.needs_encounter and request.context.encounter_id is None:
        raise ApiError(400, "invalid", f"context.encounterId: required by {service.hook}")
    return request


# ---------------------------------------------------------------- the answer


def card(drafts: Drafts, launch_url: str, encounter_id: str | None, today: date) -> dict[str, Any]:
    """The one card for a patient's drafts, its link launching the review app."""
    link: dict[str, str] = {"label": "Review homework drafts", "url": launch_url, "type": "smart"}
    if encounter_id is not None:
        link["appContext"] = json.dumps({"encounter": f"Encounter/{encounter_id}"},
                                        separators=(",", ":"))  # fmt: skip
    return {
        "summary": summary(drafts, today),
        "indicator": "info",
        "detail": DETAIL,
        "source": dict(SOURCE),
        "links": [link],
    }


def _today() -> date:
    return datetime.now(UTC).date()


@dataclass(frozen=True)
class CdsHooks:
    """What the CDS Hooks routes need beside the store: the client verifier and the URLs."""

    verifier: ClientVerifier
    # The API's public base URL: the JWT's aud is {base_url}/cds-services[/{id}].
    base_url: str
    launch_url: str
    today: Callable[[], date] = field(default=_today)

    def url(self, service_id: str | None = None) -> str:
        return f"{self.base_url}{PREFIX}" + (f"/{service_id}" if service_id else "")

    def answer(self, store: Store, request: HookRequest) -> dict[str, Any]:
        """The response body for a verified, valid request (synchronous store reads)."""
        with store.session() as session:
            drafts = awaiting_review(session, request.context.patient_id)
        if not drafts.count:
            return {"cards": []}
        encounter = request.context.encounter_id
        return {"cards": [card(drafts, self.launch_url, encounter, self.today())]}


@asynccontextmanager
async def open_cds(
    settings: Settings, store: Store | None = None
) -> AsyncIterator[CdsHooks | None]:
    """The CDS Hooks service for the process's lifetime (None when `cds.enabled` is off): one
    HTTP client for the EHRs' JWK Sets, closed at shutdown; with `store`, the tokens seen are
    kept there (a replay to another replica is refused)."""
    cds = settings.cds
    if not cds.enabled:
        yield None
        return
    # Few hosts (the EHRs' key URLs), small documents: a small pool.
    limits = httpx.Limits(max_connections=10, max_keepalive_connections=5)
    async with httpx.AsyncClient(limits=limits) as http:
        clients = [TrustedClient(c.issuer, c.jwks_url, frozenset(c.jku)) for c in cds.clients]
        verifier = ClientVerifier(
            clients,
            JwksCache(http, ttl_s=cds.jwks_cache_s),
            algorithms=cds.algorithms,
            max_lifetime_s=cds.max_token_lifetime_s,
            replay_cache_size=cds.replay_cache_size,
            replays=(
                StoredReplays(lambda: store, cds.replay_cache_size) if store is not None else None
            ),
        )
        base = settings.api.base_url()
        yield CdsHooks(verifier, base, cds.launch_url or f"{base}{LAUNCH_PATH}")


# ---------------------------------------------------------------- the routes


def cds_router(active: Callable[[], ApiDeps]) -> APIRouter:
    """Discovery and the services over the app's dependencies (`ApiDeps.cds`, the store);
    404 while CDS Hooks is not enabled."""
    # Not in the OpenAPI document: its bearer scheme is the API's tokens, and these routes take
    # the EHR's (CDS Hooks defines its own API).
    router = APIRouter(prefix=PREFIX, include_in_schema=False)

    def enabled() -> CdsHooks:
        cds = active().cds
        if cds is None:
            raise ApiError(404, "not-supported", "CDS Hooks is not enabled on this server "
                           "(cds.enabled)")  # fmt: skip
        return cds

    @router.get("")
    async def discovery(authorization: Auth = None) -> JSONResponse:
        cds = enabled()
        await cds.verifier.verify(authorization, cds.url())
        return JSONResponse({"services": [s.discovery() for s in SERVICES]})

    @router.post("/{service_id}")
    async def call(service_id: str, request: Request, authorization: Auth = None) -> JSONResponse:
        cds = enabled()
        if not _SERVICE_ID.fullmatch(service_id):
            raise ApiError(404, "not-found", "no such CDS service (GET /cds-services lists them)")
        # The token first, for the URL called: a stranger learns nothing, not even which ids
        # exist, and an unauthenticated body is never read.
        claims = await cds.verifier.verify(authorization, cds.url(service_id))
        service = BY_ID.get(service_id)
        if service is None:
            raise ApiError(404, "not-found", "no such CDS service (GET /cds-services lists them)")
        hook = parse_request(await request.body(), service)
        deps = active()
        body = await asyncio.to_thread(cds.answer, deps.store, hook)
        logger.info("CDS %s hookInstance %s from %s: %d card(s)", service.id,
                    hook.hook_instance, claims["iss"], len(body["cards"]))  # fmt: skip
        return JSONResponse(body)

    return router
