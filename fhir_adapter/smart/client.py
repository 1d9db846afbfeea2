"""SMART App Launch 2.x, the client side: discovery, the authorization request, the code
exchange and the id_token, with authlib (OAuth 2.0 client, PKCE) and joserfc (JOSE).

    SmartApp.connection_for(iss)   the configured EHR connection whose base_url is `iss`;
                                   any other iss is refused (we never talk to an unknown server)
    SmartApp.discover(conn)        {iss}/.well-known/smart-configuration (cached for an hour),
                                   or the connection's `smart_app.configuration_url` where the
                                   FHIR base does not publish it
    SmartApp.authorization_url()   response_type=code, S256 code challenge, state, nonce, aud=iss
                                   and, for an EHR launch, `launch`
    SmartApp.exchange()            the code (+ code_verifier) for tokens: client_secret_basic
                                   or private_key_jwt
    SmartApp.verify_id_token()     signature against the issuer's JWKS, iss, aud, exp, nonce
    SmartApp.read()                GET a resource from the EHR with the clinician's token
    SmartApp.fetch_attachment()    an Attachment.url's content, likewise (same origin only)

One `httpx.AsyncClient` for discovery, JWKS and FHIR reads, and one authlib client per EHR
connection for the token endpoint, both opened once per process and closed by `aclose()`.
Tokens are never logged: errors name the step and the HTTP status only.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from authlib.integrations.base_client import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oauth2.rfc6749.errors import OAuth2Error
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from fhir_adapter.ehr.auth import sign_client_assertion
from fhir_adapter.ehr.client import MAX_ATTACHMENT_BYTES, Attachment
from fhir_adapter.ehr.keys import Algorithm, KeyFileError, SigningKey, load_signing_key
from fhir_adapter.settings import EhrConnection, SmartAppClient
from fhir_adapter.smart.errors import LaunchError

logger = logging.getLogger(__name__)

# How long a discovered configuration and JWKS are reused (an EHR rotating keys is seen within it,
# and on an unknown kid the JWKS is read again at once).
DISCOVERY_TTL_S = 3600
# Algorithms an id_token may be signed with: SMART's RS384/ES384, and RS256/ES256 which OIDC
# providers (Epic among them) use for id_tokens.
ID_TOKEN_ALGORITHMS = ["RS384", "ES384", "RS256", "ES256"]
# Leeway for clocks that differ between us and the EHR.
CLOCK_SKEW_S = 60
TIMEOUT = httpx.Timeout(15.0)


@dataclass(frozen=True)
class SmartConfiguration:
    authorization_endpoint: str
    token_endpoint: str
    issuer: str | None
    jwks_uri: str | None
    capabilities: tuple[str, ...] = ()
    fetched: float = field(default_factory=time.time)


def _same_url(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


class _ClientAssertion(PrivateKeyJWT):  # type: ignore[misc]
    """authlib's private_key_jwt client authentication, signing SMART's assertion (5-minute
    `exp`, fresh `jti`, RS384 or ES384 key with its `kid`) as our backend services token
    request does: authlib's own signs an hour-long assertion and reads RSA keys only."""

    def __init__(self, key: SigningKey, algorithm: Algorithm, kid: str) -> None:
        super().__init__(alg=algorithm, headers={"kid": kid})
        self._key, self._algorithm, self._kid = key, algorithm, kid

    def sign(self, auth: Any, token_endpoint: str) -> str:
        return sign_client_assertion(
            self._key, self._algorithm, self._kid, auth.client_id, token_endpoint
        )


class SmartApp:
    """The SMART launches this process can make, over the EHR connections with a `smart_app`."""

    def __init__(
        self,
        connections: Mapping[str, EhrConnection],
        transport: httpx.AsyncBaseTransport | None = None,
        oauth_transport: Any = None,
    ) -> None:
        """`transport` carries discovery, JWKS and FHIR reads (httpx); `oauth_transport` the
        token requests of authlib's client, which runs on httpx2 where installed (authlib >=
        1.7), else httpx: tests pass ASGI transports of each."""
        self.connections = {n: c for n, c in connections.items() if c.smart_app is not None}
        self._oauth_transport = oauth_transport
        self.http = httpx.AsyncClient(timeout=TIMEOUT, transport=transport)
        self._config: dict[str, SmartConfiguration] = {}
        self._jwks: dict[str, tuple[float, KeySet]] = {}
        self._oauth: dict[str, AsyncOAuth2Client] = {}
        self._lock = asyncio.Lock()

    def connection_for(self, iss: str | None) -> EhrConnection:
        """The connection whose FHIR base is `iss`; without `iss`, the standalone default."""
        if not self.connections:
            raise LaunchError(404, "This service has no EHR connection set up for app launch.")
        if iss:
            for conn in self.connections.values():
                if _same_url(conn.base_url, iss):
                    return conn
            raise LaunchError(
                400,
                "This app was launched from an EHR it is not registered with. Ask your "
                "administrator to add it (ehr.NAME.base_url and ehr.NAME.smart_app).",
            )
        chosen = [c for c in self.connections.values() if self._app(c).standalone_default]
        if not chosen and len(self.connections) == 1:
            chosen = list(self.connections.values())
        if len(chosen) != 1:
            raise LaunchError(
                400,
                "Launch this app from your EHR, or add ?iss= with your EHR's FHIR address.",
            )
        return chosen[0]

    @staticmethod
    def _app(conn: EhrConnection) -> SmartAppClient:
        if conn.smart_app is None:  # connections without one are never kept
            raise LaunchError(404, f"EHR connection {conn.name} has no smart_app")
        return conn.smart_app

    async def _json(self, url: str, what: str) -> dict[str, Any]:
        try:
            response = await self.http.get(url, headers={"Accept": "application/json"})
            response.raise_for_status()
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            logger.warning("SMART %s from %s failed: %s", what, url, type(exc).__name__)
            raise LaunchError(502, f"The EHR did not answer the {what} request.") from exc
        if not isinstance(body, dict):
            raise LaunchError(502, f"The EHR's {what} is not a JSON object.")
        return body

    async def discover(self, conn: EhrConnection) -> SmartConfiguration:
        cached = self._config.get(conn.name)
        if cached is not None and time.time() - cached.fetched < DISCOVERY_TTL_S:
            return cached
        where = self._app(conn).configuration_url
        body = await self._json(
            where or f"{conn.base_url}/.well-known/smart-configuration", "discovery"
        )
        try:
            authorize = str(body["authorization_endpoint"])
            token = str(body["token_endpoint"])
        except KeyError as exc:
            raise LaunchError(502, f"The EHR's SMART configuration lacks {exc}.") from None
        methods = body.get("code_challenge_methods_supported")
        if methods is not None and "S256" not in methods:
            raise LaunchError(502, "The EHR does not support PKCE with S256, which we require.")
        issuer, jwks_uri = body.get("issuer"), body.get("jwks_uri")
        if issuer and not jwks_uri:  # SMART 2 requires both; some servers publish OIDC only
            oidc = await self._json(
                f"{str(issuer).rstrip('/')}/.well-known/openid-configuration", "OpenID discovery"
            )
            jwks_uri = oidc.get("jwks_uri")
        found = SmartConfiguration(
            authorization_endpoint=authorize,
            token_endpoint=token,
            issuer=str(issuer) if issuer else None,
            jwks_uri=str(jwks_uri) if jwks_uri else None,
            capabilities=tuple(str(c) for c in body.get("capabilities", [])),
        )
        self._config[conn.name] = found
        return found

    async def _client(self, conn: EhrConnection, config: SmartConfiguration) -> AsyncOAuth2Client:
        async with self._lock:
            client = self._oauth.get(conn.name)
            if client is None:
                app = self._app(conn)
                kwargs: dict[str, Any] = {
                    "scope": " ".join(app.scopes),
                    "redirect_uri": app.redirect_uri,
                    "code_challenge_method": "S256",
                    "timeout": TIMEOUT.read,
                    "transport": self._oauth_transport,
                }
                if app.private_key_file is not None and app.kid:
                    try:
                        key = load_signing_key(app.private_key_file, app.algorithm, app.kid)
                    except KeyFileError as exc:
                        logger.warning("SMART app key of %s unusable: %s", conn.name, exc)
                        raise LaunchError(
                            500,
                            "The app's signing key cannot be read; ask your administrator "
                            "(ehr.NAME.smart_app).",
                        ) from exc
                    client = AsyncOAuth2Client(
                        app.client_id,
                        None,
                        token_endpoint_auth_method=_ClientAssertion(key, app.algorithm, app.kid),
                        **kwargs,
                    )
                else:
                    secret = app.client_secret.get_secret_value() if app.client_secret else None
                    client = AsyncOAuth2Client(
                        app.client_id,
                        secret,
                        token_endpoint_auth_method="client_secret_basic",  # noqa: S106 (a method name)
                        **kwargs,
                    )
                self._oauth[conn.name] = client
            return client

    async def authorization_url(
        self,
        conn: EhrConnection,
        config: SmartConfiguration,
        *,
        state: str,
        nonce: str,
        code_verifier: str,
        launch: str | None,
    ) -> str:
        client = await self._client(conn, config)
        extra = {"aud": conn.base_url, "nonce": nonce}
        if launch:
            extra["launch"] = launch
        url, _ = client.create_authorization_url(
            config.authorization_endpoint, state=state, code_verifier=code_verifier, **extra
        )
        return str(url)

    async def exchange(
        self, conn: EhrConnection, config: SmartConfiguration, code: str, code_verifier: str
    ) -> dict[str, Any]:
        """The token response for `code`; LaunchError when the EHR refuses it."""
        client = await self._client(conn, config)
        try:
            token = await client.fetch_token(
                config.token_endpoint,
                grant_type="authorization_code",
                code=code,
                code_verifier=code_verifier,
                redirect_uri=self._app(conn).redirect_uri,
            )
        except (OAuth2Error, OAuthError) as exc:  # the EHR's error response (invalid_grant, ...)
            logger.info("SMART code exchange refused by %s: %s", conn.name, exc.error)
            raise LaunchError(
                400, f"The EHR refused the sign-in ({exc.error}); launch the app again."
            ) from exc
        except Exception as exc:  # the HTTP errors of httpx or httpx2, whichever authlib uses
            logger.warning("SMART code exchange with %s failed: %s", conn.name, type(exc).__name__)
            raise LaunchError(502, "The EHR's token endpoint did not answer.") from exc
        # The client is shared by every launch of this connection: it must not keep a user's
        # token (we use the one returned, from the server-side session).
        client.token = None
        return dict(token)

    async def _keys(self, uri: str, refresh: bool = False) -> KeySet:
        cached = self._jwks.get(uri)
        if cached is not None and not refresh and time.time() - cached[0] < DISCOVERY_TTL_S:
            return cached[1]
        try:
            keys = KeySet.import_key_set(await self._json(uri, "JWKS"))  # type: ignore[arg-type]
        except (JoseError, ValueError, TypeError) as exc:
            raise LaunchError(502, "The EHR's signing keys (JWKS) cannot be read.") from exc
        self._jwks[uri] = (time.time(), keys)
        return keys

    async def verify_id_token(
        self, conn: EhrConnection, config: SmartConfiguration, id_token: Any, nonce: str
    ) -> dict[str, Any]:
        """The id_token's claims once its signature (issuer's JWKS), iss, aud, exp, iat and
        nonce hold; LaunchError otherwise."""
        if not isinstance(id_token, str) or not id_token:
            raise LaunchError(400, "The EHR sent no id_token; we need one to know who you are.")
        if not config.issuer or not config.jwks_uri:
            raise LaunchError(502, "The EHR publishes no OpenID issuer or JWKS to verify you by.")
        refused = LaunchError(401, "The EHR's identity token could not be verified.")
        try:
            try:
                token = jwt.decode(
                    id_token, await self._keys(config.jwks_uri), algorithms=ID_TOKEN_ALGORITHMS
                )
            except JoseError:  # perhaps a key rotated since we read the JWKS: once more
                keys = await self._keys(config.jwks_uri, refresh=True)
                token = jwt.decode(id_token, keys, algorithms=ID_TOKEN_ALGORITHMS)
            registry = jwt.JWTClaimsRegistry(
                leeway=CLOCK_SKEW_S,
                iss={"essential": True, "value": config.issuer},
                aud={"essential": True, "value": self._app(conn).client_id},
                exp={"essential": True},
                iat={"essential": True},
                sub={"essential": True},
                nonce={"essential": True, "value": nonce},
            )
            registry.validate(token.claims)
        except (JoseError, ValueError) as exc:
            logger.info("SMART id_token from %s refused: %s", conn.name, type(exc).__name__)
            raise refused from exc
        return dict(token.claims)

    async def read(self, base_url: str, access_token: str, path: str) -> dict[str, Any] | None:
        """GET {base_url}/{path} with the clinician's token; None when the EHR says 404/403."""
        try:
            response = await self.http.get(
                f"{base_url}/{path}",
                headers={"Authorization": f"Bearer {access_token}",
                         "Accept": "application/fhir+json"},
            )  # fmt: skip
        except httpx.HTTPError as exc:
            raise LaunchError(502, "The EHR did not answer.") from exc
        if response.status_code in (401, 403, 404, 410):
            return None
        if response.status_code != 200:
            raise LaunchError(502, f"The EHR answered {response.status_code}.")
        try:
            body = response.json()
        except ValueError as exc:  # a 200 that is not JSON: an SSO or proxy page, not FHIR
            raise LaunchError(
                502, "The EHR answered with a page, not FHIR data; open the app from the EHR again."
            ) from exc
        return body if isinstance(body, dict) else None

    async def fetch_attachment(self, base_url: str, access_token: str, url: str) -> Attachment:
        """An Attachment.url's content (`Binary/123`, relative to the EHR's FHIR base, or
        absolute on the same origin) with the clinician's token; a Binary resource returned
        instead of the raw content is decoded. Another origin is refused: the token would go
        to it. LaunchError says why nothing came back."""
        base = httpx.URL(base_url.rstrip("/") + "/")
        target = httpx.URL(url) if "://" in url else base.join(url)
        if (target.scheme, target.netloc) != (base.scheme, base.netloc):
            raise LaunchError(
                502, "The transcript is kept on another server, which your EHR sign-in does "
                "not reach."
            )  # fmt: skip
        headers = {"Authorization": f"Bearer {access_token}", "Accept": "*/*"}
        try:
            async with self.http.stream("GET", target, headers=headers) as response:
                if response.status_code in (401, 403, 404, 410):
                    raise LaunchError(404, "The EHR did not give us this session's transcript.")
                if response.status_code != 200:
                    raise LaunchError(502, f"The EHR answered {response.status_code}.")
                content = bytearray()
                async for chunk in response.aiter_bytes():
                    content += chunk
                    if len(content) > MAX_ATTACHMENT_BYTES:
                        raise LaunchError(502, "The transcript is too large to show here.")
                content_type = response.headers.get("Content-Type", "application/octet-stream")
        except httpx.HTTPError as exc:
            raise LaunchError(502, "The EHR did not answer.") from exc
        if content_type.split(";")[0].strip() in ("application/fhir+json", "application/json"):
            try:
                body = json.loads(content)
                if isinstance(body, dict) and body.get("resourceType") == "Binary":
                    return Attachment(
                        base64.b64decode(body.get("data") or "", validate=True),
                        str(body.get("contentType") or "application/octet-stream"),
                    )
            except ValueError as exc:
                raise LaunchError(502, "The EHR sent a transcript we cannot read.") from exc
        return Attachment(bytes(content), content_type)

    async def aclose(self) -> None:
        for client in self._oauth.values():
            await client.aclose()
        self._oauth.clear()
        await self.http.aclose()
