"""Authentication to FHIR servers, as `httpx.Auth` flows.

- `SmartBackendAuth`: SMART Backend Services. Finds the token endpoint in
  `{base}/.well-known/smart-configuration` (unless configured), signs a client assertion
  (RS384 or ES384, header `kid`/`typ`, claims iss = sub = client_id, aud = token endpoint,
  random `jti`, `exp` within 5 minutes) and trades it for an access token
  (`grant_type=client_credentials`, explicit scopes).
- `ClientSecretAuth`: the same token exchange with HTTP Basic client credentials.
- `NoAuth` (httpx's own no-op `Auth`) for servers without auth.

The token is cached until shortly before `expires_in` runs out, refreshed under an asyncio
lock (one refresh however many requests are waiting), and on a 401 the flow fetches a new
token once and resends the request once. The token requests go through the same
`httpx.AsyncClient` (they are yielded from the flow), so they share its limits, timeouts and
the caller's retries.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import time
from collections.abc import AsyncGenerator, Callable, Generator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import httpx
from joserfc import jwt
from joserfc.errors import JoseError

from fhir_adapter.ehr.errors import AuthError, TemporaryFhirError
from fhir_adapter.ehr.keys import Algorithm, KeyFileError, SigningKey, load_signing_key
from fhir_adapter.settings import ClientSecretAuth as ClientSecretSettings
from fhir_adapter.settings import FhirEndpoint
from fhir_adapter.settings import SmartBackendAuth as SmartBackendSettings

__all__ = [
    "ASSERTION_TYPE",
    "ClientSecretAuth",
    "Clock",
    "SmartBackendAuth",
    "Token",
    "build_auth",
    "utc_now",
]

log = logging.getLogger(__name__)

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# SMART caps the assertion's lifetime at 5 minutes; 4 leaves room for clock skew.
ASSERTION_LIFETIME_S = 240
# SMART recommends 5-minute access tokens; assume that when a server omits `expires_in`.
DEFAULT_TOKEN_LIFETIME = timedelta(seconds=300)
# Refresh this long before expiry so a token never runs out mid-request (capped at half the
# lifetime, so that short-lived tokens are still used).
REFRESH_MARGIN = timedelta(seconds=60)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Token:
    access_token: str
    expires_at: datetime  # timezone-aware
    refresh_at: datetime  # when we stop using it and fetch the next one
    scope: str

    def fresh(self, now: datetime) -> bool:
        return now < self.refresh_at


class _TokenAuth(httpx.Auth):
    """A bearer token from an OAuth token endpoint, cached, refreshed, retried once on 401."""

    requires_response_body = False

    def __init__(
        self,
        base_url: str,
        token_endpoint: str | None,
        scopes: Sequence[str],
        clock: Clock = utc_now,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._token_endpoint = token_endpoint
        self._scopes = tuple(scopes)
        self._clock = clock
        self._token: Token | None = None
        self._lock = asyncio.Lock()

    @property
    def token(self) -> Token | None:
        """The cached token (None before the first request)."""
        return self._token

    @property
    def token_endpoint(self) -> str | None:
        """The token endpoint, once configured or discovered."""
        return self._token_endpoint

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        raise RuntimeError("FHIR auth flows need an httpx.AsyncClient")
        yield request  # pragma: no cover - makes this a generator

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        async with self._lock:
            if self._token is None or not self._token.fresh(self._clock()):
                if self._token_endpoint is None:
                    response = yield self._discovery_request()
                    self._token_endpoint = await self._read_discovery(response)
                response = yield self._token_request(self._token_endpoint)
                self._token = await self._read_token(response)
            used = self._token
        request.headers["Authorization"] = f"Bearer {used.access_token}"
        response = yield request
        if response.status_code != 401:
            return
        # The server no longer accepts the token (revoked, expired early, clocks apart):
        # fetch a new one, unless a concurrent request already did, and resend once.
        log.info("401 from %s %s: fetching a new token", request.method, request.url.path)
        async with self._lock:
            if self._token is used:
                assert self._token_endpoint is not None
                response = yield self._token_request(self._token_endpoint)
                self._token = await self._read_token(response)
            used = self._token
        request.headers["Authorization"] = f"Bearer {used.access_token}"
        yield request

    # -- token endpoint discovery and exchange

    def _discovery_request(self) -> httpx.Request:
        return httpx.Request(
            "GET",
            f"{self._base_url}/.well-known/smart-configuration",
            headers={"Accept": "application/json"},
        )

    async def _read_discovery(self, response: httpx.Response) -> str:
        await response.aread()
        where = f"{self._base_url}/.well-known/smart-configuration"
        _raise_for_token_status(response, f"discovery at {where}")
        try:
            endpoint = response.json()["token_endpoint"]
        except (ValueError, KeyError, TypeError) as exc:
            raise AuthError(
                f"{where} names no token_endpoint; set auth.token_endpoint for this connection",
                status=response.status_code,
            ) from exc
        if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
            raise AuthError(f"{where} gave an unusable token_endpoint; set auth.token_endpoint")
        return endpoint

    def _token_request(self, token_endpoint: str) -> httpx.Request:
        form = {"grant_type": "client_credentials", **self._credentials_form(token_endpoint)}
        if self._scopes:
            form["scope"] = " ".join(self._scopes)
        return httpx.Request(
            "POST",
            token_endpoint,
            data=form,
            headers={"Accept": "application/json", **self._credentials_headers()},
        )

    async def _read_token(self, response: httpx.Response) -> Token:
        await response.aread()
        _raise_for_token_status(response, f"token endpoint {self._token_endpoint}")
        try:
            body = response.json()
            access_token = body["access_token"]
            token_type = str(body.get("token_type", "bearer"))
        except (ValueError, KeyError, TypeError) as exc:
            raise AuthError(
                f"token endpoint {self._token_endpoint} answered without an access_token",
                status=response.status_code,
            ) from exc
        if not isinstance(access_token, str) or token_type.lower() != "bearer":
            raise AuthError(
                f"token endpoint {self._token_endpoint} gave a {token_type!r} token; "
                "only bearer tokens are supported"
            )
        lifetime = DEFAULT_TOKEN_LIFETIME
        expires_in = body.get("expires_in")
        if isinstance(expires_in, int | float) and expires_in > 0:
            lifetime = timedelta(seconds=float(expires_in))
        now = self._clock()
        margin = min(REFRESH_MARGIN, lifetime / 2)
        scope = str(body.get("scope", " ".join(self._scopes)))
        missing = sorted(set(self._scopes) - set(scope.split()))
        if missing:
            # Servers may grant fewer scopes than asked; requests needing them will get 403.
            log.warning("token endpoint did not grant scopes %s", " ".join(missing))
        return Token(access_token, now + lifetime, now + lifetime - margin, scope)

    # -- how the client proves who it is (subclasses)

    def _credentials_form(self, token_endpoint: str) -> dict[str, str]:
        return {}

    def _credentials_headers(self) -> dict[str, str]:
        return {}


def _raise_for_token_status(response: httpx.Response, what: str) -> None:
    status = response.status_code
    if status < 400:
        return
    if status in (408, 429) or status >= 500:
        raise TemporaryFhirError(f"{what} answered {status}; will retry", status=status)
    detail = ""
    try:
        body = response.json()
        if isinstance(body, dict) and body.get("error"):
            # OAuth errors (RFC 6749 5.2) carry no PHI: error code and description only.
            detail = f": {body['error']}"
            if body.get("error_description"):
                detail += f" ({body['error_description']})"
    except ValueError:
        pass
    raise AuthError(
        f"{what} refused us with {status}{detail}; check the client id, key/secret, "
        "registered scopes and token endpoint of this connection",
        status=status,
    )


def sign_client_assertion(
    key: SigningKey,
    algorithm: Algorithm,
    kid: str,
    client_id: str,
    audience: str,
    jwks_url: str | None = None,
) -> str:
    """A SMART client assertion (private_key_jwt, RFC 7523) for `audience`, the token
    endpoint: iss = sub = client_id, a fresh `jti`, `exp` within 5 minutes (SMART's limit,
    which Epic enforces), `kid` and, where our JWK Set URL is registered, `jku`. Used by the
    backend services token request and by the clinician app's code exchange."""
    # Wall-clock time, not an injectable cache clock: the token server checks these.
    now = int(time.time())
    header: dict[str, Any] = {"alg": algorithm, "kid": kid, "typ": "JWT"}
    if jwks_url:
        header["jku"] = jwks_url
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": secrets.token_urlsafe(32),
        "iat": now,
        "exp": now + ASSERTION_LIFETIME_S,
    }
    try:
        return jwt.encode(header, claims, key, algorithms=[algorithm])
    except JoseError as exc:
        raise AuthError(f"cannot sign the client assertion: {exc}") from exc


class SmartBackendAuth(_TokenAuth):
    """SMART Backend Services (asymmetric client authentication)."""

    def __init__(
        self,
        base_url: str,
        *,
        client_id: str,
        private_key_file: Path,
        kid: str,
        algorithm: Algorithm,
        scopes: Sequence[str],
        token_endpoint: str | None = None,
        jwks_url: str | None = None,
        clock: Clock = utc_now,
    ) -> None:
        super().__init__(base_url, token_endpoint, scopes, clock)
        try:
            # Loaded up front so that a bad key fails at start-up, not on the first poll.
            self._key = load_signing_key(private_key_file, algorithm, kid)
        except KeyFileError as exc:
            raise AuthError(f"cannot use the private key for client {client_id}: {exc}") from exc
        self._client_id = client_id
        self._kid = kid
        self._algorithm = algorithm
        self._jwks_url = jwks_url

    def client_assertion(self, audience: str) -> str:
        """A freshly signed client assertion for `audience` (the token endpoint)."""
        return sign_client_assertion(
            self._key, self._algorithm, self._kid, self._client_id, audience, self._jwks_url
        )

    def _credentials_form(self, token_endpoint: str) -> dict[str, str]:
        return {
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.client_assertion(token_endpoint),
        }


class ClientSecretAuth(_TokenAuth):
    """OAuth client credentials with a shared secret (`client_secret_basic`)."""

    def __init__(
        self,
        base_url: str,
        *,
        client_id: str,
        client_secret: str,
        scopes: Sequence[str] = (),
        token_endpoint: str | None = None,
        clock: Clock = utc_now,
    ) -> None:
        super().__init__(base_url, token_endpoint, scopes, clock)
        # RFC 6749 2.3.1: form-encode id and secret before Basic-encoding them.
        pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}"
        self._basic = base64.b64encode(pair.encode()).decode()

    def _credentials_headers(self) -> dict[str, str]:
        return {"Authorization": f"Basic {self._basic}"}


def build_auth(endpoint: FhirEndpoint, *, clock: Clock = utc_now) -> httpx.Auth:
    """The auth flow for a `FhirEndpoint` from the settings."""
    auth = endpoint.auth
    if isinstance(auth, SmartBackendSettings):
        return SmartBackendAuth(
            endpoint.base_url,
            client_id=auth.client_id,
            private_key_file=auth.private_key_file,
            kid=auth.kid,
            algorithm=auth.algorithm,
            scopes=auth.scopes,
            token_endpoint=auth.token_endpoint,
            jwks_url=auth.jwks_url,
            clock=clock,
        )
    if isinstance(auth, ClientSecretSettings):
        return ClientSecretAuth(
            endpoint.base_url,
            client_id=auth.client_id,
            client_secret=auth.client_secret.get_secret_value(),
            scopes=auth.scopes,
            token_endpoint=auth.token_endpoint,
            clock=clock,
        )
    return httpx.Auth()
