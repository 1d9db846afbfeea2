"""Bearer-token authentication with SMART-style scopes.

Tokens are JWTs signed with RS384 or ES384 and verified against configured public keys (a JWK
Set). Scopes follow SMART v1 (`system/Task.read`, `system/*.write`) and v2
(`system/Task.rs`, `system/*.cruds`); `user/` and `patient/` contexts are not served.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey
from joserfc.jwt import JWTClaimsRegistry

from fhir_adapter.api.outcome import ApiError
from fhir_adapter.smart_scopes import parse_scope

ALGORITHMS = ["RS384", "ES384"]
# Clock skew tolerated between the token issuer and us.
LEEWAY_S = 60


@dataclass(frozen=True)
class TokenVerifier:
    """Verifies bearer tokens: signature (keys), issuer, audience, expiry, then scopes."""

    keys: KeySet
    issuer: str
    audience: str
    algorithms: tuple[str, ...] = tuple(ALGORITHMS)

    def claims(self, authorization: str | None) -> dict[str, Any]:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise ApiError(401, "login", "missing bearer token (Authorization: Bearer <JWT>)")
        token = authorization.split(" ", 1)[1].strip()
        try:
            decoded = jwt.decode(token, self.keys, algorithms=list(self.algorithms))
            JWTClaimsRegistry(
                leeway=LEEWAY_S,
                iss={"essential": True, "value": self.issuer},
                aud={"essential": True, "value": self.audience},
                exp={"essential": True},
            ).validate(decoded.claims)
        except (JoseError, ValueError) as exc:
            raise ApiError(401, "login", f"invalid bearer token: {exc}") from exc
        return decoded.claims

    def require(self, authorization: str | None, resource_type: str, action: str) -> None:
        """Check the token grants `action` ("read" or "write") on `resource_type`."""
        scopes = str(self.claims(authorization).get("scope", "")).split()
        if not any(scope_allows(s, resource_type, action) for s in scopes):
            raise ApiError(
                403,
                "forbidden",
                f"token lacks a scope for {action} on {resource_type} "
                f"(e.g. system/{resource_type}.{'rs' if action == 'read' else 'c'})",
            )


# What an API action needs: any one of these letters (SMART v2; v1 read/write map onto them).
_ACTION_LETTERS = {"read": "rs", "write": "cu"}


def scope_allows(scope: str, resource_type: str, action: str) -> bool:
    """Whether one `system/` scope grants `action` ("read" or "write") on `resource_type`."""
    parsed = parse_scope(scope)
    return (
        parsed is not None
        and parsed.context == "system"
        and parsed.covers(resource_type, _ACTION_LETTERS[action])
    )


def issue_token(
    key: RSAKey | ECKey,
    issuer: str,
    audience: str,
    scopes: str,
    subject: str = "local-operator",
    lifetime_s: int = 3600,
) -> str:
    """Sign a bearer token with a local key (embedded mode and tests)."""
    alg = "RS384" if isinstance(key, RSAKey) else "ES384"
    now = int(time.time())
    claims = {
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "iat": now,
        "exp": now + lifetime_s,
        "jti": str(uuid.uuid4()),
        "scope": scopes,
    }
    header = {"alg": alg, "typ": "JWT", "kid": key.kid}
    return jwt.encode(header, claims, key, algorithms=[alg])
