"""An API over a real store (SQLite or PostgreSQL) with two patients' Tasks, and tokens."""

from __future__ import annotations

import time
import uuid
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from fhir_adapter.api import ApiDeps, create_app
from fhir_adapter.api.security import TokenVerifier, issue_token
from fhir_adapter.store import Store, resources

ISSUER, AUDIENCE = "https://issuer.test", "https://homework.test/fhir"
SID = "https://homework-fhir.org/fhir/sid/task"
KEY = RSAKey.generate_key(2048, parameters={"kid": "sec-rsa"})
EC_KEY = ECKey.generate_key("P-384", parameters={"kid": "sec-ec"})
MAX_BODY = 64 * 1024


def task(value: str, patient: str, status: str, authored: str) -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "id": value,
        "identifier": [{"system": SID, "value": value}],
        "status": "draft",
        "intent": "proposal",
        "for": {"reference": patient},
        "code": {"coding": [{"system": "urn:hw", "code": "journal"}]},
        "businessStatus": {"coding": [{"code": status}]},
        "authoredOn": authored,
    }


def seed(store: Store) -> None:
    """p1: three awaiting-review Tasks and one reviewed; p2: two reviewed."""
    with store.session() as s:
        for i in range(3):
            resources.put(s, task(f"a{i}", "Patient/p1", "awaiting-review", f"2026-03-0{i + 1}"))
        resources.put(s, task("r0", "Patient/p1", "reviewed", "2026-03-05"))
        for i in range(2):
            resources.put(s, task(f"b{i}", "Patient/p2", "reviewed", f"2026-04-0{i + 1}"))


async def _ingest(
    found: list[dict[str, Any]], connection: str | None
) -> tuple[str, dict[str, Any]]:
    outcome = {"resourceType": "OperationOutcome",
               "issue": [{"severity": "information", "code": "informational",
                          "diagnostics": f"{len(found)} resources"}]}  # fmt: skip
    return "job-1", outcome


def app_over(store: Store, **kw: Any) -> Any:
    verifier = TokenVerifier(KeySet([KEY, EC_KEY]), ISSUER, AUDIENCE, **kw)
    deps = ApiDeps(
        store=store,
        verifier=verifier,
        ingest=_ingest,
        ingest_status=lambda job: {"complete": True} if job == "job-1" else None,
        model_card={"name": "test"},
    )
    return create_app(deps, max_body_bytes=MAX_BODY)


def bearer(scopes: str = "system/*.rs", key: Any = KEY, lifetime_s: int = 300) -> dict[str, str]:
    token = issue_token(key, ISSUER, AUDIENCE, scopes, lifetime_s=lifetime_s)
    return {"Authorization": f"Bearer {token}"}


def signed(claims: dict[str, Any], alg: str = "RS384", key: Any = KEY) -> dict[str, str]:
    """A token with these claims on top of iss, aud, jti and iat (a claim given None is left
    out)."""
    body = {"iss": ISSUER, "aud": AUDIENCE, "jti": str(uuid.uuid4()), "iat": int(time.time()),
            **claims}  # fmt: skip
    body = {k: v for k, v in body.items() if v is not None}
    token = jwt.encode({"alg": alg, "kid": key.kid}, body, key, algorithms=[alg])
    return {"Authorization": f"Bearer {token}"}
