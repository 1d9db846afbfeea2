"""Build the API service from settings: token verifier, readiness checks, ingest.

The entry points (`serve`, `demo`) call `build_service(settings)` once; everything it opens
(the store, the model backend) is closed by `Service.close()`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from joserfc.jwk import ECKey, KeySet, RSAKey

from fhir_adapter.api import ApiDeps, create_app
from fhir_adapter.api.outcome import ApiError, operation_outcome
from fhir_adapter.api.security import TokenVerifier, issue_token
from fhir_adapter.ehr.jwks import jwks_router
from fhir_adapter.model_backend import make_backend, model_card, model_info
from fhir_adapter.pipeline.jobs import bundle_resources, ingest_resources
from fhir_adapter.settings import Settings, SettingsError
from fhir_adapter.store import Store, open_store
from inference_server.client import Backend

DEV_KEY_FILE = "api-dev-key.json"
DEV_ISSUER = "homework-fhir-dev"


def api_audience(settings: Settings) -> str:
    base = settings.api.public_base_url or f"http://{settings.api.host}:{settings.api.port}"
    return f"{base}/fhir"


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


def dev_token(settings: Settings, scopes: str = "system/*.read", lifetime_s: int = 3600) -> str:
    return issue_token(dev_key(settings), DEV_ISSUER, api_audience(settings), scopes,
                       lifetime_s=lifetime_s)  # fmt: skip


def _import_pem(path: Path) -> RSAKey | ECKey:
    pem = path.read_bytes()
    try:
        return RSAKey.import_key(pem)
    except ValueError:
        return ECKey.import_key(pem)


def token_verifier(settings: Settings) -> TokenVerifier:
    auth = settings.api.auth
    if auth.mode == "dev-embedded":
        key = dev_key(settings)
        public = ECKey.import_key(key.as_dict(private=False))
        return TokenVerifier(KeySet([public]), DEV_ISSUER, api_audience(settings))
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
    return TokenVerifier(KeySet(keys), auth.issuer, auth.audience, tuple(auth.algorithms))


@dataclass
class Service:
    app: FastAPI
    store: Store
    backend: Backend

    async def close(self) -> None:
        await self.backend.close()
        self.store.close()


def build_service(settings: Settings, store: Store | None = None) -> Service:
    store = store or open_store(settings.database_url)
    backend = make_backend(settings)
    model = model_info(settings)
    card = model_card(settings)

    async def model_ready() -> None:
        ready = getattr(backend, "ready", None)
        if ready is not None and not await ready():
            raise RuntimeError("model server not ready")

    async def ingest(bundle: dict[str, Any], connection: str | None) -> dict[str, Any]:
        try:
            summary = await ingest_resources(
                settings, store, backend, model, bundle_resources(bundle), connection
            )
        except SettingsError as exc:
            raise ApiError(400, "invalid", f"{exc} (POST /ingest?connection=NAME)") from exc
        outcome = operation_outcome(
            "informational", json.dumps(summary.as_dict(), sort_keys=True), severity="information"
        )
        return outcome

    deps = ApiDeps(
        store=store,
        verifier=token_verifier(settings),
        readiness=[("model", model_ready)],
        ingest=ingest,
        model_card=card,
        public_routers=(jwks_router(settings),),
    )
    return Service(create_app(deps), store, backend)
