"""Trusting CDS Clients (CDS Hooks 2.0): the JWT an EHR sends with every call.

`ClientVerifier.verify(authorization, audience)` accepts a call when its bearer JWT

- names a configured client as `iss` (the allow-list);
- is signed (RS384 or ES384 unless configured otherwise; never `none` or HMAC) by a key of
  that client's JWK Set: the configured `jwks_url`, or the `jku` header's URL when that URL
  is on the client's allow-list (a `jku` off the list is refused, never fetched);
- has `aud` equal to the URL of the endpoint called (a string, or an array holding it);
- is current (`exp`, `nbf`, `iat` with a minute's leeway) and lives at most
  `max_lifetime_s` (`exp - iat`);
- carries a `jti` not seen before from that issuer (kept until the token expires: in the
  database where the API has one (`StoredReplays`), so a replay to another replica is
  refused too; else in a bounded in-memory cache of this process).

Refusals are `ApiError(401)`; a JWK Set that cannot be fetched or a full replay cache are
`ApiError(503)`: the caller did nothing wrong, and nothing is let through.
"""

from __future__ import annotations

import heapq
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from joserfc import jws, jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from fhir_adapter.api.outcome import ApiError
from fhir_adapter.cds.keys import JwksCache, JwksUnavailable
from fhir_adapter.store import Store
from fhir_adapter.web.sessions import ExpiringStore

logger = logging.getLogger(__name__)

# Clock skew tolerated between the EHR and us.
LEEWAY_S = 60
ALGORITHMS = ("RS384", "ES384")
# The longest bearer token read. A CDS Client's JWT carries a few claims and one signature
# (a kilobyte or two); a longer one is no such JWT, and decoding it is work done for a stranger.
MAX_TOKEN_CHARS = 16 * 1024


@dataclass(frozen=True)
class TrustedClient:
    """One CDS Client: its issuer, and where its keys are (`jwks_url` and/or allowed `jku`s)."""

    issuer: str
    jwks_url: str | None = None
    jku: frozenset[str] = frozenset()

    def key_url(self, jku: object) -> str:
        """The JWK Set URL to verify a token with this `jku` header (None: absent)."""
        if jku is None:
            if self.jwks_url is None:
                raise _refused("the token has no jku header and no jwks_url is configured for "
                               "its issuer (cds.clients)")  # fmt: skip
            return self.jwks_url
        if not isinstance(jku, str):
            raise _refused("the token's jku header is not a URL")
        wanted = jku.rstrip("/")
        allowed = self.jku | ({self.jwks_url} if self.jwks_url else set())
        if wanted not in allowed:
            raise _refused("the token's jku is not on its issuer's allow-list (cds.clients.jku)")
        return wanted


class ReplayCache:
    """`(issuer, jti)` pairs until their token expires; at most `capacity` at once."""

    def __init__(self, capacity: int, clock: Callable[[], float] = time.time) -> None:
        self._capacity = capacity
        self._clock = clock
        self._until: dict[tuple[str, str], float] = {}
        self._by_expiry: list[tuple[float, tuple[str, str]]] = []

    def __len__(self) -> int:
        return len(self._until)

    def remember(self, issuer: str, jti: str, until: float) -> None:
        """Record a token; ApiError 401 for one seen before, 503 when the cache is full of
        tokens that have not expired (refusing is safe, forgetting one would allow a replay)."""
        now = self._clock()
        self._expire(now)
        key = (issuer, jti)
        if key in self._until:
            raise _refused("the token's jti was used before (a replayed token); send a new one")
        if len(self._until) >= self._capacity:
            logger.warning("CDS Hooks replay cache full (%d tokens); raise "
                           "cds.replay_cache_size", self._capacity)  # fmt: skip
            raise ApiError(503, "transient", "too many recent calls to check for replays; retry")
        self._until[key] = until
        heapq.heappush(self._by_expiry, (until, key))

    def _expire(self, now: float) -> None:
        while self._by_expiry and self._by_expiry[0][0] <= now:
            _, key = heapq.heappop(self._by_expiry)
            self._until.pop(key, None)


class Replays(Protocol):
    def remember(self, issuer: str, jti: str, until: float) -> None: ...


@dataclass(frozen=True)
class SeenToken:
    expires: float


class StoredReplays:
    """`(issuer, jti)` pairs until their token expires, in the database: a token replayed to
    another API replica is refused too (`ReplayCache` sees one process only)."""

    def __init__(self, store: Callable[[], Store], capacity: int = 100_000) -> None:
        self._seen = ExpiringStore("cds-jti", SeenToken, store)
        self._capacity = capacity

    def remember(self, issuer: str, jti: str, until: float) -> None:
        """As `ReplayCache.remember`: 401 for a token seen before, 503 when `capacity` tokens
        that have not expired are kept (refusing is safe, forgetting one would not be)."""
        if len(self._seen) >= self._capacity:
            logger.warning("CDS Hooks replay record full (%d tokens); raise "
                           "cds.replay_cache_size", self._capacity)  # fmt: skip
            raise ApiError(503, "transient", "too many recent calls to check for replays; retry")
        if not self._seen.add_once(SeenToken(until), f"{issuer}\n{jti}"):
            raise _refused("the token's jti was used before (a replayed token); send a new one")


def _refused(why: str) -> ApiError:
    return ApiError(401, "login", f"CDS Client not trusted: {why}")


class ClientVerifier:
    """Checks the JWT of each CDS Hooks call (module docstring)."""

    def __init__(
        self,
        clients: Sequence[TrustedClient],
        jwks: JwksCache,
        *,
        algorithms: Sequence[str] = ALGORITHMS,
        max_lifetime_s: int = 3600,
        replay_cache_size: int = 100_000,
        clock: Callable[[], float] = time.time,
        replays: Replays | None = None,
    ) -> None:
        self._clients = {c.issuer: c for c in clients}
        self._jwks = jwks
        self._algorithms = list(algorithms)
        self._max_lifetime_s = max_lifetime_s
        self._clock = clock
        # Shared by the API's replicas where given (StoredReplays), else this process's own.
        self._seen: Replays = replays or ReplayCache(replay_cache_size, clock)

    async def verify(self, authorization: str | None, audience: str) -> dict[str, Any]:
        """The verified claims of the call's JWT, for a call to `audience` (the full URL of
        the endpoint called); ApiError otherwise."""
        if not authorization or not authorization.lower().startswith("bearer "):
            raise ApiError(401, "login", "missing bearer token (Authorization: Bearer <JWT>)")
        token = authorization.split(" ", 1)[1].strip()
        header, unverified = _peek(token)
        issuer = unverified.get("iss")
        client = self._clients.get(issuer) if isinstance(issuer, str) else None
        if client is None:
            raise _refused("the token's iss is not a configured CDS client (cds.clients)")
        url = client.key_url(header.get("jku"))
        claims = await self._verified(token, url)
        now = self._clock()
        try:
            JWTClaimsRegistry(
                now=int(now),
                leeway=LEEWAY_S,
                iss={"essential": True, "value": client.issuer},
                aud={"essential": True, "value": audience},
                exp={"essential": True},
                iat={"essential": True},
                jti={"essential": True},
            ).validate(claims)
        except JoseError as exc:
            raise _refused(f"{exc} (this endpoint's aud is {audience})") from exc
        if claims["exp"] - claims["iat"] > self._max_lifetime_s + LEEWAY_S:
            raise _refused(f"it lives over {self._max_lifetime_s} s (exp - iat; "
                           "cds.max_token_lifetime_s)")  # fmt: skip
        self._seen.remember(client.issuer, claims["jti"], claims["exp"] + LEEWAY_S)
        return claims

    async def _verified(self, token: str, url: str) -> dict[str, Any]:
        """The token's claims once its signature checks against the key set at `url` (fetched
        again once when the token's kid is not in the cached copy: the EHR rotated keys)."""
        for refresh in (False, True):
            keys = await self._keys(url, refresh)
            try:
                decoded = jwt.decode(token, keys, algorithms=self._algorithms)
            except InvalidKeyIdError as exc:
                if not refresh:
                    continue
                raise _refused("no key in its issuer's JWK Set has the token's kid") from exc
            except (JoseError, ValueError) as exc:
                raise _refused(f"bad signature or algorithm ({type(exc).__name__}; accepted: "
                               f"{', '.join(self._algorithms)})") from exc  # fmt: skip
            return decoded.claims
        raise AssertionError("unreachable")  # pragma: no cover

    async def _keys(self, url: str, refresh: bool) -> KeySet:
        try:
            return await self._jwks.get(url, refresh=refresh)
        except JwksUnavailable as exc:
            logger.warning("CDS Client keys unavailable: %s", exc)
            raise ApiError(503, "transient", "the CDS Client's JWK Set cannot be fetched now; "
                           "retry") from exc  # fmt: skip


def _peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims before verification: only to choose the issuer's keys."""
    if len(token) > MAX_TOKEN_CHARS:
        raise _refused(f"the bearer token is over {MAX_TOKEN_CHARS} characters; send the "
                       "CDS Client's signed JWT")  # fmt: skip
    # RecursionError: a hostile token's JSON nested deeper than the interpreter's stack.
    try:
        compact = jws.extract_compact(token.encode("ascii"))
        claims = json.loads(compact.payload)
    except (JoseError, ValueError, UnicodeError, RecursionError) as exc:
        raise _refused("the bearer token is not a signed JWT") from exc
    if not isinstance(claims, dict):
        raise _refused("the bearer token's payload is not a JSON object")
    return dict(compact.headers()), claims
