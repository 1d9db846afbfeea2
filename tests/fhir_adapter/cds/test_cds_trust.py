"""Trusting CDS Clients: every call carries the EHR's signed JWT, checked against the
configured issuers and their JWK Sets (served over HTTP on loopback)."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey

from fhir_adapter.api.outcome import ApiError
from fhir_adapter.cds.trust import MAX_TOKEN_CHARS, ReplayCache, StoredReplays
from fhir_adapter.store import Store, open_store
from tests.fhir_adapter.cds.support import (
    BASE,
    DISCOVERY,
    ENCOUNTER_START,
    ISS_A,
    ISS_B,
    KEY_A,
    KEY_B,
    PATIENT_VIEW,
    ROGUE,
    JwksServer,
    app_over,
    hook_request,
    public_set,
    seed,
    signed,
)

SERVICE = f"{BASE}/cds-services/{PATIENT_VIEW}"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """SQLite only: trust is decided before the store is read (test_cds_hooks.py runs the
    services on both databases)."""
    opened = open_store(f"sqlite:///{tmp_path / 'cds.db'}")
    seed(opened)
    yield opened
    opened.close()


def post(client: TestClient, headers: dict[str, str], body: Any = None) -> Any:
    body = hook_request(patient="p1") if body is None else body
    return client.post(f"/cds-services/{PATIENT_VIEW}", json=body, headers=headers)


def refused(response: Any, status: int = 401) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/")
    assert response.json()["resourceType"] == "OperationOutcome"
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    diagnostics: str = response.json()["issue"][0]["diagnostics"]
    return diagnostics


def test_a_configured_jwks_url_and_an_allowed_jku_are_both_trusted(
    client: TestClient, server: JwksServer
) -> None:
    assert post(client, signed()).status_code == 200
    b = signed(KEY_B, iss=ISS_B, jku=f"{server.url}/ehr-b/jwks.json")
    assert post(client, b).status_code == 200
    # aud as an array holding the URL, as RFC 7519 allows.
    assert post(client, signed(aud=[SERVICE])).status_code == 200
    # The JWK Set is fetched once and then cached.
    assert server.hits["/ehr-a/jwks.json"] == 1 and server.hits["/ehr-b/jwks.json"] == 1


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({}, "missing bearer token"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "missing bearer token"),
        ({"Authorization": "Bearer not.a.jwt"}, "not a signed JWT"),
        ({"Authorization": "Bearer "}, "not a signed JWT"),
    ],
)
def test_no_jwt_is_401(client: TestClient, headers: dict[str, str], why: str) -> None:
    assert why in refused(post(client, headers))


def test_a_deeply_nested_or_oversized_token_is_401(client: TestClient) -> None:
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    # Past json's recursion limit (RecursionError, once a 500), well under the length cap.
    deep, header = b64(b"[" * 3000), b64(b'{"alg": "RS384", "kid": "ehr-a-1"}')
    for token in (f"{header}.{deep}.c2ln", f"{deep}.{b64(b'{}')}.c2ln"):
        assert "not a signed JWT" in refused(post(client, {"Authorization": f"Bearer {token}"}))
    # Over the cap even when signed by a trusted key; a large token under it still passes.
    assert "characters" in refused(post(client, signed(pad="x" * MAX_TOKEN_CHARS)))
    assert post(client, signed(pad="x" * (MAX_TOKEN_CHARS // 2))).status_code == 200


def test_a_bad_signature_is_401(client: TestClient) -> None:
    # Another key that claims EHR A's kid.
    assert "bad signature" in refused(post(client, signed(ROGUE)))


def test_an_issuer_not_configured_is_401(client: TestClient, server: JwksServer) -> None:
    assert "iss" in refused(post(client, signed(iss="https://ehr-c.test/fhir")))
    refused(post(client, signed(iss=None)))
    refused(post(client, signed(iss=["https://ehr-a.test/api/FHIR/R4"])))
    # B's key with A's issuer: A's keys do not verify it.
    refused(post(client, signed(KEY_B, iss=ISS_A)))
    assert server.hits["/rogue/jwks.json"] == 0


@pytest.mark.parametrize(
    "aud",
    [
        DISCOVERY,
        f"{BASE}/cds-services/{ENCOUNTER_START}",
        "http://testserver/cds-services/homework-drafts-patient-view",  # the Host, not ours
        f"{SERVICE}/",
        [DISCOVERY, f"{BASE}/fhir"],
        None,
    ],
)
def test_a_token_for_another_audience_is_401(client: TestClient, aud: Any) -> None:
    refused(post(client, signed(aud=aud)))


def test_an_expired_or_not_yet_valid_token_is_401(client: TestClient) -> None:
    now = int(time.time())
    assert "expired" in refused(post(client, signed(iat=now - 900, exp=now - 120)))
    refused(post(client, signed(iat=now + 600, exp=now + 900)))  # issued in the future
    refused(post(client, signed(nbf=now + 600)))  # Epic sends nbf


def test_a_token_living_too_long_is_401(client: TestClient) -> None:
    assert "lives over" in refused(post(client, signed(lifetime_s=2 * 3600)))


@pytest.mark.parametrize("claim", ["exp", "iat", "jti"])
def test_a_token_without_exp_iat_or_jti_is_401(client: TestClient, claim: str) -> None:
    assert claim in refused(post(client, signed(**{claim: None})))


def test_a_replayed_jti_is_401(client: TestClient, server: JwksServer) -> None:
    headers = signed()
    assert post(client, headers).status_code == 200
    assert "replayed" in refused(post(client, headers))
    # The same jti in a new token is a replay too.
    jti = str(uuid.uuid4())
    assert post(client, signed(jti=jti)).status_code == 200
    refused(post(client, signed(jti=jti)))
    # Another issuer's jti is its own.
    other = signed(KEY_B, iss=ISS_B, jti=jti, jku=f"{server.url}/ehr-b/jwks.json")
    assert post(client, other).status_code == 200


def test_a_jti_replayed_to_another_replica_is_401(store: Store, server: JwksServer) -> None:
    """Two API processes on one database, as `serve` opens them (the tokens seen kept in the
    store): a token accepted by one is a replay to the other, and a new one goes through."""
    replicas = [app_over(store, server, replays=StoredReplays(lambda: store)) for _ in "ab"]
    with TestClient(replicas[0], base_url=BASE) as one, TestClient(
        replicas[1], base_url=BASE
    ) as two:
        headers = signed()
        assert post(one, headers).status_code == 200
        assert "replayed" in refused(post(two, headers))
        assert "replayed" in refused(post(one, headers))
        assert post(two, signed()).status_code == 200


def test_the_stored_replay_record_is_bounded_and_refuses_rather_than_forgets(
    store: Store,
) -> None:
    replays = StoredReplays(lambda: store, capacity=2)
    replays.remember(ISS_A, "a", time.time() + 60)
    replays.remember(ISS_A, "b", time.time() + 60)
    with pytest.raises(ApiError) as full:
        replays.remember(ISS_A, "c", time.time() + 60)
    assert full.value.status == 503
    # With room (another replica, configured larger): a token seen before is still a replay.
    other = StoredReplays(lambda: store, capacity=10)
    other.remember(ISS_A, "c", time.time() + 60)
    with pytest.raises(ApiError) as replay:
        other.remember(ISS_A, "a", time.time() + 60)
    assert replay.value.status == 401


def test_a_client_without_a_jwks_url_must_name_an_allowed_jku(client: TestClient) -> None:
    assert "no jku" in refused(post(client, signed(KEY_B, iss=ISS_B)))


def test_a_jku_not_on_the_allow_list_is_401_and_never_fetched(
    client: TestClient, server: JwksServer
) -> None:
    rogue = f"{server.url}/rogue/jwks.json"
    assert "allow-list" in refused(post(client, signed(ROGUE, jku=rogue)))
    assert "allow-list" in refused(post(client, signed(KEY_B, iss=ISS_B, jku=rogue)))
    # B's URL named in a token from A: not on A's list either.
    refused(post(client, signed(jku=f"{server.url}/ehr-b/jwks.json")))
    assert server.hits["/rogue/jwks.json"] == 0


def test_a_jku_equal_to_the_configured_jwks_url_is_accepted(
    client: TestClient, server: JwksServer
) -> None:
    assert post(client, signed(jku=f"{server.url}/ehr-a/jwks.json")).status_code == 200


@pytest.mark.parametrize("alg", ["RS256", "PS384"])
def test_algorithms_other_than_rs384_and_es384_are_401(client: TestClient, alg: str) -> None:
    assert "algorithm" in refused(post(client, signed(alg=alg)))


def test_an_hmac_or_unsigned_token_is_401(client: TestClient) -> None:
    secret = OctKey.import_key(b"k" * 48, parameters={"kid": "ehr-a-1"})
    body = {"iss": ISS_A, "aud": SERVICE, "iat": int(time.time()),
            "exp": int(time.time()) + 300, "jti": str(uuid.uuid4())}  # fmt: skip
    hmac = jwt.encode({"alg": "HS384", "kid": "ehr-a-1"}, body, secret, algorithms=["HS384"])
    refused(post(client, {"Authorization": f"Bearer {hmac}"}))
    none = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    refused(post(client, {"Authorization": f"Bearer {none}.{hmac.split('.')[1]}."}))


def test_the_token_is_checked_before_the_body(client: TestClient) -> None:
    response = client.post(f"/cds-services/{PATIENT_VIEW}", content=b"{not json",
                           headers=signed(ROGUE))  # fmt: skip
    refused(response)


def test_a_rotated_key_is_fetched_when_its_kid_appears(store: Store, server: JwksServer) -> None:
    with TestClient(app_over(store, server, min_refresh_s=0)) as client:
        assert post(client, signed()).status_code == 200
        rotated = RSAKey.generate_key(2048, parameters={"kid": "ehr-a-2"})
        server.documents["/ehr-a/jwks.json"] = (200, public_set(KEY_A, rotated))
        assert post(client, signed(rotated)).status_code == 200
        assert server.hits["/ehr-a/jwks.json"] == 2
        # A kid that is in no version of the set: one refetch, then 401.
        stranger = RSAKey.generate_key(2048, parameters={"kid": "ehr-a-9"})
        assert "kid" in refused(post(client, signed(stranger)))
        assert server.hits["/ehr-a/jwks.json"] == 3


def test_unknown_kids_do_not_refetch_more_than_once_a_minute(
    client: TestClient, server: JwksServer
) -> None:
    assert post(client, signed()).status_code == 200
    for i in range(5):
        stranger = RSAKey.generate_key(2048, parameters={"kid": f"x-{i}"})
        refused(post(client, signed(stranger)))
    assert server.hits["/ehr-a/jwks.json"] == 1


@pytest.mark.parametrize(
    "document", [(500, b"{}"), (200, b"<html>"), (200, b'{"keys": [{"kty": "nope"}]}')]
)
def test_a_jwks_that_cannot_be_read_is_503(
    client: TestClient, server: JwksServer, document: tuple[int, bytes]
) -> None:
    server.documents["/ehr-a/jwks.json"] = document
    assert "JWK Set" in refused(post(client, signed()), 503)


def test_the_replay_cache_is_bounded_and_refuses_rather_than_forgets() -> None:
    now = [1000.0]
    cache = ReplayCache(2, clock=lambda: now[0])
    cache.remember("iss", "a", until=1100)
    cache.remember("iss", "b", until=1200)
    with pytest.raises(ApiError) as full:
        cache.remember("iss", "c", until=1300)
    assert full.value.status == 503
    now[0] = 1100.0  # "a" expired: room again, and "a" may not come back (its token expired)
    cache.remember("iss", "c", until=1300)
    assert len(cache) == 2
    with pytest.raises(ApiError) as replay:
        cache.remember("iss", "b", until=1200)
    assert replay.value.status == 401
