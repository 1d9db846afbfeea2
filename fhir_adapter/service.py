"""Build the API service from settings: token verifier, readiness checks, ingest, CDS Hooks.

The entry points (`serve`, `demo`) call `build_service(settings)` once; the app's lifespan opens
the process's `Runtime` (store, model backend, EHR clients) and the CDS Hooks service (its JWK Set
client) at start-up and closes them at shutdown.
"""

from __future__ import annotations

import gc
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey

from fhir_adapter.api import ApiDeps, create_app
from fhir_adapter.api.outcome import ApiError, operation_outcome
from fhir_adapter.api.security import TokenVerifier, issue_token
from fhir_adapter.cds import CdsHooks, open_cds
from fhir_adapter.ehr.jwks import jwks_router
from fhir_adapter.metrics import exposition
from fhir_adapter.pipeline import runner
from fhir_adapter.pipeline.jobs import accept_ingest, ingest_status
from fhir_adapter.pipeline.runner import RunSummary
from fhir_adapter.runtime import Runtime, open_runtime
from fhir_adapter.settings import Settings, SettingsError
from fhir_adapter.smart import SmartApp
from fhir_adapter.store import Store

DEV_KEY_FILE = "api-dev-key.json"
DEV_ISSUER = "homework-fhir-dev"


def api_audience(settings: Settings) -> str:
    return f"{settings.api.base_url()}/fhir"


def dev_key(settings: Settings) -> ECKey:
    """The development signing key, made on first use under data_dir (never in production)."""
    path = settings.data_dir / DEV_KEY_FILE
    if path.is_file():
        return ECKey.import_key(json.loads(path.read_text(encoding="utf-8")))
    key = ECKey.generate_key("P-384", parameters={"kid": "dev-1"})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(key.as_dict(private=True)), encoding="utf-8")
    path.chmod(0o600)
    return key


def dev_token(
    settings: Settings, scopes: str = "system/*.read", lifetime_s: int | None = None
) -> str:
    """A development token, living the longest the API accepts unless `lifetime_s` is shorter;
    SettingsError for a longer one (the API would refuse it)."""
    longest = settings.api.auth.max_token_lifetime_s
    if lifetime_s is not None and lifetime_s > longest:
        raise SettingsError(
            f"a token living {lifetime_s} s would be refused: the API accepts at most {longest} s "
            "(api.auth.max_token_lifetime_s)"
        )
    return issue_token(dev_key(settings), DEV_ISSUER, api_audience(settings), scopes,
                       lifetime_s=lifetime_s or longest)  # fmt: skip


def _import_pem(path: Path) -> RSAKey | ECKey:
    """An RSA or EC public key from a PEM file; SettingsError for anything else."""
    pem = path.read_bytes()
    for kind in (RSAKey, ECKey):
        try:
            return kind.import_key(pem)
        except (ValueError, JoseError, TypeError):
            continue
    raise SettingsError(
        f"api.auth.public_key_file: {path} holds no RSA or EC (P-384) public key in PEM"
    )


def token_verifier(settings: Settings) -> TokenVerifier:
    auth = settings.api.auth
    if auth.mode == "dev-embedded":
        key = dev_key(settings)
        public = ECKey.import_key(key.as_dict(private=False))
        return TokenVerifier(KeySet([public]), DEV_ISSUER, api_audience(settings),
                             max_lifetime_s=auth.max_token_lifetime_s)  # fmt: skip
    if not auth.issuer or not auth.audience:
        raise SettingsError("api.auth: set issuer and audience to verify API bearer tokens")
    keys: list[Any] = []
    if auth.public_key_file:
        keys.append(_import_pem(auth.public_key_file))
    if auth.jwks_url:
        try:
            document = httpx.get(auth.jwks_url, timeout=10.0).raise_for_status().json()
        except (httpx.HTTPError, ValueError) as exc:
            raise SettingsError(f"api.auth.jwks_url: cannot read {auth.jwks_url}: {exc}") from exc
        keys.extend(KeySet.import_key_set(document).keys)
    if not keys:
        raise SettingsError("api.auth: set public_key_file or jwks_url")
    return TokenVerifier(KeySet(keys), auth.issuer, auth.audience, tuple(auth.algorithms),
                         auth.max_token_lifetime_s)  # fmt: skip


def api_deps(runtime: Runtime, verifier: TokenVerifier, cds: CdsHooks | None = None) -> ApiDeps:
    """What the API's routes need, from the process's runtime."""

    async def model_ready() -> None:
        ready = getattr(runtime.backend, "ready", None)
        if ready is not None and not await ready():
            raise RuntimeError("model server not ready")

    async def ingest(
        found: list[dict[str, Any]], connection: str | None
    ) -> tuple[str, dict[str, Any]]:
        try:
            accepted = await accept_ingest(runtime, found, connection)
        except SettingsError as exc:
            raise ApiError(400, "invalid", f"{exc} (POST /ingest?connection=NAME)") from exc
        staged = {**accepted.staged.as_dict(), "encounters": len(accepted.staged.encounters)}
        outcome = operation_outcome(
            "informational", json.dumps(staged, sort_keys=True), severity="information"
        )
        return accepted.job_id, outcome

    def status(job_id: str) -> dict[str, Any] | None:
        return ingest_status(runtime, job_id)

    async def write_back(connection: str) -> None:
        if runtime.queue is not None:  # the workers flush
            from fhir_adapter.queue import defer_flush

            await defer_flush(runtime.queue, connection)
            return

        async def flush_now() -> None:
            await runner.write_back(runtime, connection, RunSummary())

        runtime.kick(f"write:{connection}", flush_now)

    return ApiDeps(
        write_back=write_back,
        model=runtime.model,
        store=runtime.store,
        verifier=verifier,
        # With the queue the workers run the model; this process serves the EHR (JWK Set,
        # launch, CDS Hooks) and stays ready while the model server restarts.
        readiness=[] if runtime.queue is not None else [("model", model_ready)],
        ingest=ingest,
        ingest_status=status,
        metrics=lambda: exposition(runtime.store),
        model_card=runtime.card,
        cds=cds,
    )


@dataclass
class Service:
    """The API app; its runtime is opened by the app's lifespan (uvicorn or a TestClient)."""

    app: FastAPI
    runtime: Runtime | None = None

    @property
    def store(self) -> Store:
        if self.runtime is None:
            raise RuntimeError("the service is not started")
        return self.runtime.store


def build_service(settings: Settings, extra_routers: Sequence[APIRouter] = ()) -> Service:
    """The API for `settings`. Token settings are checked now (SettingsError); the runtime
    (store, model, EHR clients) opens when the app starts and closes when it stops.

    `extra_routers` are served without a token (the demo's development EHR)."""
    verifier = token_verifier(settings)
    service = Service(app=FastAPI())

    @asynccontextmanager
    async def opened() -> AsyncIterator[ApiDeps]:
        async with open_runtime(settings) as runtime, open_cds(settings, runtime.store) as cds:
            service.runtime = runtime
            # What start-up made (the model, the FHIR models, the libraries) lives as long as
            # the process: out of the collector's sight, a full collection no longer walks it
            # and stalls the event loop (hundreds of ms under a large ingest).
            gc.freeze()
            deps = api_deps(runtime, verifier, cds)
            if any(c.smart_app for c in settings.ehr.values()):
                deps.smart = SmartApp(settings.ehr)
            try:
                yield deps
            finally:
                service.runtime = None
                if deps.smart is not None:
                    await deps.smart.aclose()

    service.app = create_app(
        opened=opened,
        public_routers=(jwks_router(settings), *extra_routers),
        max_body_bytes=settings.api.max_body_bytes,
        max_sessions=settings.api.max_sessions,
    )
    return service
