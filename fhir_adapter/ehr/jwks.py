"""Our public JWK Set: the keys EHRs use to check our SMART client assertions.

It holds the public half of every SMART Backend key in the settings (each EHR connection,
and a separate care-plan store), of every clinician app key (`ehr.NAME.smart_app`,
private_key_jwt), plus `settings.published_keys`. Several `kid`s at once is
how keys rotate without an outage: publish the next key, wait for the EHRs' caches of this
document to expire (we allow an hour), switch the connection to it, and drop the old key
later.

`jwks_router(settings)` serves it unauthenticated at `GET /.well-known/jwks.json`; the API
mounts that router.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from fhir_adapter.ehr.keys import Algorithm, public_jwk
from fhir_adapter.settings import Settings, SettingsError, SmartBackendAuth

__all__ = ["JWKS_PATH", "jwks_document", "jwks_router"]

JWKS_PATH = "/.well-known/jwks.json"
# EHRs cache our JWK Set; an hour bounds how long a rotation has to wait.
CACHE_CONTROL = "public, max-age=3600"


def jwks_document(settings: Settings) -> dict[str, Any]:
    """{"keys": [...]} with one public JWK per distinct `kid`.

    Raises SettingsError when a key file cannot be read or two different keys share a kid.
    """
    sources: list[tuple[str, Path, Algorithm, str]] = []  # (where, file, algorithm, kid)
    for conn in settings.ehr.values():
        for label, endpoint in conn.fhir_stores():
            if isinstance(endpoint.auth, SmartBackendAuth):
                auth = endpoint.auth
                sources.append((f"{label}.auth", auth.private_key_file, auth.algorithm, auth.kid))
        app = conn.smart_app
        if app is not None and app.private_key_file is not None and app.kid:
            sources.append((f"ehr.{conn.name}.smart_app", app.private_key_file, app.algorithm,
                            app.kid))  # fmt: skip
    for i, key in enumerate(settings.published_keys):
        sources.append((f"published_keys[{i}]", key.file, key.algorithm, key.kid))
    keys: dict[str, dict[str, Any]] = {}
    for where, path, algorithm, kid in sources:
        try:
            jwk = public_jwk(path, algorithm, kid)
        except ValueError as exc:
            raise SettingsError(f"{where}: {exc}") from exc
        if kid in keys and keys[kid] != jwk:
            raise SettingsError(
                f"{where}: kid {kid!r} is already used by a different key; give each key "
                "its own kid"
            )
        keys[kid] = jwk
    return {"keys": list(keys.values())}


def jwks_router(settings: Settings) -> APIRouter:
    """A router serving the JWK Set, built once from the settings (keys read now)."""
    document = jwks_document(settings)
    router = APIRouter()

    @router.get(JWKS_PATH, include_in_schema=False)
    async def jwks() -> JSONResponse:
        return JSONResponse(document, headers={"Cache-Control": CACHE_CONTROL})

    return router
