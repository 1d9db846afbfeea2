"""CDS Hooks test parts: EHR keys, their JWK Sets served over real HTTP on loopback, signed
hook JWTs, an API app whose lifespan opens the CDS service, and a store of realistic Tasks."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from fastapi import FastAPI
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from fhir_adapter.api import ApiDeps, create_app
from fhir_adapter.api.security import TokenVerifier
from fhir_adapter.cds import CdsHooks
from fhir_adapter.cds.keys import JwksCache
from fhir_adapter.cds.trust import ClientVerifier, TrustedClient
from fhir_adapter.store import Store, resources
from tests.security.support import task

BASE = "https://homework.test"
LAUNCH = "https://review.homework.test/smart/launch"
DISCOVERY = f"{BASE}/cds-services"
PATIENT_VIEW = "homework-drafts-patient-view"
ENCOUNTER_START = "homework-drafts-encounter-start"
TODAY = date(2026, 12, 10)

# EHR A: an Epic-like client, its JWK Set URL configured (RS384).
ISS_A = "https://ehr-a.test/api/FHIR/R4"
KEY_A = RSAKey.generate_key(2048, parameters={"kid": "ehr-a-1"})
# EHR B: tokens name their JWK Set in `jku`, which must be on B's allow-list (ES384).
ISS_B = "https://ehr-b.test/fhir"
KEY_B = ECKey.generate_key("P-384", parameters={"kid": "ehr-b-1"})
# Someone else's key, published at a URL nobody allowed.
ROGUE = RSAKey.generate_key(2048, parameters={"kid": "ehr-a-1"})
# The API's own tokens (not used by CDS Hooks; the app needs a verifier).
API_KEY = ECKey.generate_key("P-384", parameters={"kid": "api"})


def public_set(*keys: RSAKey | ECKey) -> bytes:
    return json.dumps({"keys": [k.as_dict(private=False) for k in keys]}).encode()


@dataclass
class JwksServer:
    """JWK Sets over HTTP on 127.0.0.1; `documents` maps a path to (status, body)."""

    url: str
    documents: dict[str, tuple[int, bytes]]
    hits: Counter[str] = field(default_factory=Counter)


@contextmanager
def jwks_server() -> Iterator[JwksServer]:
    served = JwksServer("", {
        "/ehr-a/jwks.json": (200, public_set(KEY_A)),
        "/ehr-b/jwks.json": (200, public_set(KEY_B)),
        "/rogue/jwks.json": (200, public_set(ROGUE)),
    })  # fmt: skip

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            served.hits[self.path] += 1
            status, body = served.documents.get(self.path, (404, b"{}"))
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    served.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()


def clients(server: JwksServer) -> list[TrustedClient]:
    return [
        TrustedClient(ISS_A, jwks_url=f"{server.url}/ehr-a/jwks.json"),
        TrustedClient(ISS_B, jku=frozenset({f"{server.url}/ehr-b/jwks.json"})),
    ]


API_VERIFIER = TokenVerifier(KeySet([API_KEY]), "https://issuer.test", f"{BASE}/fhir")


def app_over(
    store: Store, server: JwksServer, min_refresh_s: float = 60.0, **verifier_kw: Any
) -> FastAPI:
    """The API with CDS Hooks, its JWK Set client opened by the app's lifespan as in `serve`."""

    @asynccontextmanager
    async def opened() -> AsyncIterator[ApiDeps]:
        async with httpx.AsyncClient() as http:
            cache = JwksCache(http, min_refresh_s=min_refresh_s)
            verifier = ClientVerifier(clients(server), cache, **verifier_kw)
            cds = CdsHooks(verifier, BASE, LAUNCH, today=lambda: TODAY)
            yield ApiDeps(store=store, verifier=API_VERIFIER, cds=cds)

    return create_app(opened=opened)


def signed(
    key: RSAKey | ECKey = KEY_A,
    *,
    iss: str = ISS_A,
    aud: str | list[str] = f"{BASE}/cds-services/{PATIENT_VIEW}",
    jku: str | None = None,
    alg: str | None = None,
    lifetime_s: int = 300,
    **claims: Any,
) -> dict[str, str]:
    """An Authorization header as an EHR sends it; a claim given as None is left out."""
    now = int(time.time())
    body = {"iss": iss, "aud": aud, "iat": now, "exp": now + lifetime_s,
            "jti": str(uuid.uuid4()), "sub": "cds-client", **claims}  # fmt: skip
    body = {k: v for k, v in body.items() if v is not None}
    alg = alg or ("RS384" if isinstance(key, RSAKey) else "ES384")
    header = {"alg": alg, "typ": "JWT", "kid": key.kid}
    if jku is not None:
        header["jku"] = jku
    return {"Authorization": f"Bearer {jwt.encode(header, body, key, algorithms=[alg])}"}


def hook_request(
    hook: str = "patient-view", patient: str = "p1", encounter: str | None = None
) -> dict[str, Any]:
    context = {"userId": "PractitionerRole/pr-1", "patientId": patient}
    if encounter is not None:
        context["encounterId"] = encounter
    return {
        "hookInstance": str(uuid.uuid4()),
        "hook": hook,
        "fhirServer": "https://ehr-a.test/api/FHIR/R4",
        "context": context,
    }


def _task(value: str, patient: str, encounter: str, authored: str, status: str = "draft") -> Any:
    body = task(value, f"Patient/{patient}", "awaiting-review", authored)
    return {**body, "status": status, "encounter": {"reference": f"Encounter/{encounter}"}}


def seed(store: Store) -> None:
    """p1: 2 drafts from a November session and 3 from one on 2 Dec (evening, -05:00: 3 Dec in
    UTC), one approved and one rejected Task; p2: 3 drafts from 2 Dec 2025; p3: only Tasks
    that are no longer drafts; p4: a draft CarePlan and no Task."""
    with store.session() as s:
        for i in range(2):
            resources.put(s, _task(f"p1-old-{i}", "p1", "e-nov", "2026-11-25T10:00:00-05:00"))
        for i in range(3):
            resources.put(s, _task(f"p1-new-{i}", "p1", "e-dec", "2026-12-02T21:30:00-05:00"))
        resources.put(s, _task("p1-ok", "p1", "e-oct", "2026-10-01T10:00:00Z", "requested"))
        resources.put(s, _task("p1-no", "p1", "e-oct", "2026-10-01T10:00:00Z", "rejected"))
        for i in range(3):
            resources.put(s, _task(f"p2-{i}", "p2", "e-p2", "2025-12-02T09:00:00Z"))
        resources.put(s, _task("p3-ok", "p3", "e-p3", "2026-12-01T10:00:00Z", "requested"))
        resources.put(s, _task("p3-gone", "p3", "e-p3", "2026-12-01T10:00:00Z", "cancelled"))
        plan = {"resourceType": "CarePlan", "id": "cp-p4", "status": "draft",
                "intent": "proposal", "subject": {"reference": "Patient/p4"}}  # fmt: skip
        resources.put(s, plan)
