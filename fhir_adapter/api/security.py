"""Bearer-token authentication with SMART-style scopes.

Tokens are JWTs signed with RS384 or ES384 (by default) and verified against configured public
keys (a JWK Set), with a bounded lifetime. Scopes follow SMART v1 (`system/Task.read`,
`system/*.write`) and v2 (`system/Task.rs`, `system/*.cruds`), including v2 search
restrictions (`system/Task.rs?patient=Patient/1`): a restricted scope reaches only what its
query matches, ANDed into every search and checked on every read. `user/` and `patient/`
contexts are not served.
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
from fhir_adapter.smart_scopes import Scope, parse_scope, parse_scopes

ALGORITHMS = ["RS384", "ES384"]
# Clock skew tolerated between the token issuer and us.
LEEWAY_S = 60
# The longest token lifetime accepted (exp - iat): a leaked token stops working soon.
MAX_LIFETIME_S = 3600

Restriction = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Grant:
    """What a token's scopes allow on one resource type for one action.

    `restrictions` is None where some scope is unrestricted; otherwise the v2 search
    restrictions of the scopes that grant it, any one of which a resource must match.
    """

    restrictions: tuple[Restriction, ...] | None = None


@dataclass(frozen=True)
class TokenVerifier:
    """Verifies bearer tokens: signature (keys), issuer, audience, expiry, then scopes."""

    keys: KeySet
    issuer: str
    audience: str
    algorithms: tuple[str, ...] = tuple(ALGORITHMS)

    max_lifetime_s: int = MAX_LIFETIME_S

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
        claims = decoded.claims
        issued = claims.get("iat", time.time())
        if not isinstance(issued, int | float) or claims["exp"] - issued > (
            self.max_lifetime_s + LEEWAY_S
        ):
            raise ApiError(
                401,
                "login",
                f"invalid bearer token: its lifetime (exp - iat) is over "
                f"{self.max_lifetime_s} s; ask the issuer for a shorter-lived token",
            )
        return claims

    def system_scopes(self, authorization: str | None) -> list[Scope]:
        """The token's `system/` resource scopes; 403 when it has none (routes that serve no
        resource type, like the CapabilityStatement, still need a system client)."""
        scopes = [
            s
            for s in parse_scopes(str(self.claims(authorization).get("scope", "")).split())
            if s.context == "system"
        ]
        if not scopes:
            raise ApiError(403, "forbidden", "token has no system/ scope (e.g. system/*.rs)")
        return scopes

    def require(self, authorization: str | None, resource_type: str, action: str) -> Grant:
        """Check the token grants `action` ("read" or "write") on `resource_type`; returns
        where it may (v2 restrictions). A restricted scope never grants a write: what a write
        would have to match cannot be checked before the write."""
        granting = [
            s
            for s in self.system_scopes(authorization)
            if s.covers(resource_type, _ACTION_LETTERS[action])
            and (action == "read" or not s.restriction)
        ]
        if not granting:
            v1, v2 = ("read", "rs") if action == "read" else ("write", "cu")
            raise ApiError(
                403,
                "forbidden",
                f"token lacks a scope for {action} on {resource_type} "
                f"(system/{resource_type}.{v1} or system/{resource_type}.{v2}, unrestricted "
                "for a write)",
            )
        if any(not s.restriction for s in granting):
            return Grant()
        return Grant(tuple(s.restriction for s in granting))


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
