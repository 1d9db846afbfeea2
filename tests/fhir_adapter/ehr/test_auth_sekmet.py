"""SMART Backend Services and client-secret auth against a real FHIR server (sekmet-fhir)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from fhir_adapter.ehr.auth import ASSERTION_TYPE, SmartBackendAuth, utc_now
from fhir_adapter.ehr.client import FhirClient
from fhir_adapter.ehr.errors import AuthError, FatalFhirError
from fhir_adapter.ehr.keys import generate_key_pair
from fhir_adapter.settings import FhirEndpoint
from fhir_adapter.settings import SmartBackendAuth as SmartSettings
from tests.fhir_adapter.sekmet_server import (
    TEST_JWKS_URL,
    SekmetServer,
    backend_client,
    secret_client,
    start_sekmet,
)

pytestmark = pytest.mark.integration

PATIENT = {"resourceType": "Patient", "name": [{"family": "Auth"}]}


class Clock:
    """A clock the test moves; token freshness is decided with it."""

    def __init__(self) -> None:
        self.now = utc_now()

    def __call__(self) -> datetime:
        return self.now


class TokenRequests:
    """Counts what went to the token endpoint and discovery (an httpx transport wrapper)."""

    def __init__(self) -> None:
        self.token = 0
        self.discovery = 0
        self.token_forms: list[dict[str, str]] = []
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/auth/token"):
            self.token += 1
            self.token_forms.append(dict(httpx.QueryParams(request.content.decode())))
        if request.url.path.endswith("/.well-known/smart-configuration"):
            self.discovery += 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _client(endpoint: FhirEndpoint, clock: Clock | None = None) -> tuple[FhirClient, TokenRequests]:
    counter = TokenRequests()
    client = FhirClient(endpoint, transport=counter, clock=clock or utc_now)  # type: ignore[arg-type]
    return client, counter


@pytest.mark.parametrize("name", ["rs384", "es384", "rotated", "secret"])
async def test_token_obtained_and_used(sekmet_server: SekmetServer, name: str) -> None:
    fhir, counter = _client(sekmet_server.endpoint(name))
    async with fhir:
        created = await fhir.create(PATIENT)
        again = await fhir.read("Patient", created["id"])
    assert again["id"] == created["id"]
    assert counter.discovery == 1  # token endpoint found via .well-known, once
    assert counter.token == 1  # and the token reused for the second request
    auth = fhir.auth
    assert isinstance(auth, SmartBackendAuth) == (name != "secret")
    assert auth.token_endpoint == sekmet_server.token_endpoint  # type: ignore[attr-defined]
    token = auth.token  # type: ignore[attr-defined]
    assert token.scope == "system/*.cruds"
    assert token.expires_at.tzinfo is not None


async def test_client_assertion_sent_to_the_token_endpoint(sekmet_server: SekmetServer) -> None:
    fhir, counter = _client(sekmet_server.endpoint("es384", scopes="system/Patient.rs"))
    async with fhir:
        await fhir.search("Patient", {"_count": "1"}).__anext__()
        await fhir.search("Patient", {"_count": "1"}).__anext__()
    [form] = counter.token_forms  # one exchange, accepted by the server
    assert form["grant_type"] == "client_credentials"
    assert form["client_assertion_type"] == ASSERTION_TYPE
    assert form["scope"] == "system/Patient.rs"
    client = sekmet_server.clients["es384"]
    registered = KeySet.import_key_set(dict(client.jwks or {}))  # type: ignore[arg-type]
    token = jwt.decode(form["client_assertion"], registered, algorithms=["ES384"])
    assert token.header == {
        "alg": "ES384",
        "kid": client.kid,
        "typ": "JWT",
        "jku": TEST_JWKS_URL,
    }
    claims = token.claims
    assert claims["iss"] == claims["sub"] == client.client_id
    assert claims["aud"] == sekmet_server.token_endpoint
    assert 0 < claims["exp"] - time.time() <= 300
    assert len(claims["jti"]) >= 32


def test_each_assertion_has_a_new_jti(sekmet_server: SekmetServer) -> None:
    client = sekmet_server.clients["rs384"]
    assert client.private_key_file and client.kid
    auth = SmartBackendAuth(
        sekmet_server.base_url,
        client_id=client.client_id,
        private_key_file=client.private_key_file,
        kid=client.kid,
        algorithm="RS384",
        scopes=["system/Patient.rs"],
    )
    registered = KeySet.import_key_set(dict(client.jwks or {}))  # type: ignore[arg-type]
    jtis = {
        jwt.decode(
            auth.client_assertion("https://t.example/token"), registered, algorithms=["RS384"]
        ).claims["jti"]
        for _ in range(5)
    }
    assert len(jtis) == 5


async def test_token_cached_then_refreshed_before_expiry(sekmet_server: SekmetServer) -> None:
    clock = Clock()
    fhir, counter = _client(sekmet_server.endpoint("es384"), clock)
    async with fhir:
        patient = await fhir.create(PATIENT)
        first = fhir.auth.token  # type: ignore[attr-defined]
        lifetime = sekmet_server.token_lifetime_s
        assert first.expires_at - clock.now == timedelta(seconds=lifetime)

        clock.now += timedelta(seconds=lifetime - 90)  # still outside the refresh margin
        await fhir.read("Patient", patient["id"])
        assert counter.token == 1
        assert fhir.auth.token is first  # type: ignore[attr-defined]

        clock.now += timedelta(seconds=40)  # 50 s left: inside the 60 s margin
        await fhir.read("Patient", patient["id"])
        assert counter.token == 2
        second = fhir.auth.token  # type: ignore[attr-defined]
        assert second.access_token != first.access_token
        assert second.expires_at > first.expires_at
        assert counter.discovery == 1  # the endpoint is not discovered again


async def test_concurrent_requests_share_one_token_request(sekmet_server: SekmetServer) -> None:
    fhir, counter = _client(sekmet_server.endpoint("rs384"))
    async with fhir:
        await asyncio.gather(
            *(fhir.search("Patient", {"_count": "1"}).__anext__() for _ in range(6))
        )
    assert counter.token == 1  # the lock makes the other five wait for the first token


@pytest.fixture(scope="module")
def short_token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SekmetServer]:
    """A server whose tokens live 3 s, for the 401 path (our cache clock is frozen).

    Long enough that the retried request, sent with the fresh token, lands before that token
    expires too, even on a loaded CI machine (1 s was not: it failed once there)."""
    workdir = tmp_path_factory.mktemp("sekmet-short")
    clients = [
        backend_client(workdir / "keys", "short", "RS384"),
        secret_client("s", "short-secret"),
    ]
    with start_sekmet(workdir, clients=clients, token_lifetime_s=3) as server:
        yield server


async def test_expired_token_401_reauthenticates_once_and_retries(
    short_token_server: SekmetServer,
) -> None:
    clock = Clock()  # never moves: we believe the token is fresh, the server does not
    fhir, counter = _client(short_token_server.endpoint("short"), clock)
    async with fhir:
        patient = await fhir.create(PATIENT)
        first = fhir.auth.token  # type: ignore[attr-defined]
        await asyncio.sleep(3.5)
        read = await fhir.read("Patient", patient["id"])  # 401 expired -> new token -> 200
    assert read["id"] == patient["id"]
    assert counter.token == 2
    assert fhir.auth.token.access_token != first.access_token  # type: ignore[attr-defined]


async def test_unregistered_key_is_an_auth_error(
    sekmet_server: SekmetServer, tmp_path: Path
) -> None:
    stranger = generate_key_pair("RS384", tmp_path, "stranger")
    registered = sekmet_server.clients["rs384"]
    endpoint = FhirEndpoint(
        base_url=sekmet_server.base_url,
        auth=SmartSettings(
            type="smart-backend",
            client_id=registered.client_id,
            private_key_file=stranger.private_key_file,
            kid="stranger",
            algorithm="RS384",
            scopes=["system/Patient.rs"],
        ),
    )
    fhir, counter = _client(endpoint)
    async with fhir:
        with pytest.raises(AuthError) as info:
            await fhir.read("Patient", "x")
    assert info.value.status == 401
    assert "invalid_client" in str(info.value)
    assert "check the client id, key/secret" in str(info.value)
    assert counter.token == 1  # a refused assertion is not retried


async def test_scope_not_registered_is_an_auth_error(sekmet_server: SekmetServer) -> None:
    endpoint = sekmet_server.endpoint("readonly", scopes="system/Patient.c")
    async with FhirClient(endpoint) as fhir:
        with pytest.raises(AuthError, match="invalid_scope"):
            await fhir.create(PATIENT)


async def test_write_with_read_only_token_is_fatal_403_with_operation_outcome(
    sekmet_server: SekmetServer,
) -> None:
    async with FhirClient(sekmet_server.endpoint("readonly")) as fhir:
        with pytest.raises(FatalFhirError) as info:
            await fhir.create(PATIENT)
    error = info.value
    assert error.status == 403
    assert error.outcome is not None
    assert error.outcome.issue[0].code == "forbidden"
    assert "scopes or the app's registration" in str(error)


async def test_wrong_client_secret_is_an_auth_error(sekmet_server: SekmetServer) -> None:
    wrong = dataclasses.replace(sekmet_server.clients["secret"], client_secret="not-the-secret")
    endpoint = FhirEndpoint(base_url=sekmet_server.base_url, auth=wrong.auth())
    async with FhirClient(endpoint) as fhir:
        with pytest.raises(AuthError, match="401: invalid_client"):
            await fhir.read("Patient", "x")
