"""Key generation, loading, the JWK Set document and route, and `homework-fhir keys`."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import KeySet
from typer.testing import CliRunner

from fhir_adapter.cli import app as cli_app
from fhir_adapter.ehr.jwks import JWKS_PATH, jwks_document, jwks_router
from fhir_adapter.ehr.keys import (
    Algorithm,
    KeyFileError,
    generate_key_pair,
    load_signing_key,
    public_jwk,
)
from fhir_adapter.settings import Settings, SettingsError, load_settings


@pytest.mark.parametrize(
    ("algorithm", "kty", "extra"), [("RS384", "RSA", "n"), ("ES384", "EC", "crv")]
)
def test_generated_pair_signs_and_verifies(
    tmp_path: Path, algorithm: Algorithm, kty: str, extra: str
) -> None:
    files = generate_key_pair(algorithm, tmp_path)
    assert stat.S_IMODE(files.private_key_file.stat().st_mode) == 0o600
    assert files.private_key_file.name == f"{files.kid}.private.pem"
    jwk = public_jwk(files.public_key_file, algorithm, files.kid)
    assert jwk["kty"] == kty and extra in jwk and jwk["alg"] == algorithm
    assert "d" not in jwk  # public half only
    if kty == "EC":
        assert jwk["crv"] == "P-384"
    # The public JWK from the private PEM is the same as from the public PEM.
    assert public_jwk(files.private_key_file, algorithm, files.kid) == jwk

    signing = load_signing_key(files.private_key_file, algorithm, files.kid)
    token = jwt.encode(
        {"alg": algorithm, "kid": files.kid}, {"iss": "me"}, signing, algorithms=[algorithm]
    )
    verified = jwt.decode(token, KeySet.import_key_set({"keys": [jwk]}), algorithms=[algorithm])
    assert verified.claims == {"iss": "me"}
    assert verified.header["kid"] == files.kid


def test_default_kid_is_the_thumbprint_and_files_are_never_overwritten(tmp_path: Path) -> None:
    first = generate_key_pair("ES384", tmp_path)
    second = generate_key_pair("ES384", tmp_path)
    assert first.kid != second.kid  # a thumbprint per key
    before = first.private_key_file.read_bytes()
    generate_key_pair("RS384", tmp_path, "fixed")
    with pytest.raises(KeyFileError, match="already exists"):
        generate_key_pair("RS384", tmp_path, "fixed")
    assert first.private_key_file.read_bytes() == before


def test_key_of_the_wrong_type_is_refused_with_the_fix(tmp_path: Path) -> None:
    ec_key = generate_key_pair("ES384", tmp_path, "ec").private_key_file
    rsa_key = generate_key_pair("RS384", tmp_path, "rsa").private_key_file
    with pytest.raises(KeyFileError, match="not an RSA key; RS384 needs one"):
        load_signing_key(ec_key, "RS384", "ec")
    with pytest.raises(KeyFileError, match="not an EC key; ES384 needs a P-384 key"):
        load_signing_key(rsa_key, "ES384", "rsa")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    with pytest.raises(KeyFileError, match="not an unencrypted private key in PEM format"):
        load_signing_key(garbage, "RS384", "x")
    with pytest.raises(KeyFileError, match="cannot read key file"):
        load_signing_key(tmp_path / "missing.pem", "RS384", "x")
    # A public PEM cannot sign.
    with pytest.raises(KeyFileError, match="private key"):
        load_signing_key(tmp_path / "rsa.public.pem", "RS384", "rsa")


def _settings_with_keys(tmp_path: Path) -> tuple[Settings, dict[str, Path]]:
    es = generate_key_pair("ES384", tmp_path, "clinic-2025")
    rs = generate_key_pair("RS384", tmp_path, "store-2025")
    nxt = generate_key_pair("ES384", tmp_path, "clinic-2026")

    def backend(key: Path, kid: str, alg: str) -> dict[str, object]:
        return {
            "type": "smart-backend",
            "client_id": "app",
            "private_key_file": str(key),
            "kid": kid,
            "algorithm": alg,
            "scopes": "system/Encounter.rs",
        }

    settings = load_settings(
        environment="development",
        api={"auth": {"mode": "dev-embedded"}},
        ehr={
            "clinic": {
                "base_url": "https://ehr.example.org/fhir",
                "auth": backend(es.private_key_file, "clinic-2025", "ES384"),
                "write": {
                    "care_plan_store": {
                        "base_url": "https://store.example.org/fhir",
                        "auth": backend(rs.private_key_file, "store-2025", "RS384"),
                    }
                },
            },
            # The same key used by a second connection appears once.
            "other": {
                "base_url": "https://ehr2.example.org/fhir",
                "auth": backend(es.private_key_file, "clinic-2025", "ES384"),
            },
        },
        published_keys=[
            {"file": str(nxt.public_key_file), "kid": "clinic-2026", "algorithm": "ES384"}
        ],
    )
    return settings, {"es": es.private_key_file, "rs": rs.private_key_file}


def test_jwks_document_lists_every_kid_once(tmp_path: Path) -> None:
    settings, _ = _settings_with_keys(tmp_path)
    document = jwks_document(settings)
    kids = [k["kid"] for k in document["keys"]]
    assert kids == ["clinic-2025", "store-2025", "clinic-2026"]
    assert {k["alg"] for k in document["keys"]} == {"ES384", "RS384"}
    assert all("d" not in k and "p" not in k for k in document["keys"])


def test_jwks_document_refuses_one_kid_for_two_keys(tmp_path: Path) -> None:
    a = generate_key_pair("ES384", tmp_path, "a")
    b = generate_key_pair("ES384", tmp_path, "b")
    settings = load_settings(
        environment="development",
        api={"auth": {"mode": "dev-embedded"}},
        published_keys=[
            {"file": str(a.public_key_file), "kid": "same", "algorithm": "ES384"},
            {"file": str(b.public_key_file), "kid": "same", "algorithm": "ES384"},
        ],
    )
    with pytest.raises(SettingsError, match=r"published_keys\[1\]: kid 'same' is already used"):
        jwks_document(settings)


def test_jwks_route_is_public_and_cacheable(tmp_path: Path) -> None:
    settings, _ = _settings_with_keys(tmp_path)
    api = FastAPI()
    api.include_router(jwks_router(settings))
    response = TestClient(api).get(JWKS_PATH)
    assert response.status_code == 200
    assert response.json() == jwks_document(settings)
    assert response.headers["cache-control"] == "public, max-age=3600"


def test_cli_keys_generate(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        cli_app, ["keys", "generate", "--alg", "ES384", "--out", str(tmp_path), "--kid", "k1"]
    )
    assert result.exit_code == 0, result.output
    assert "kid: k1" in result.output
    start = result.output.index("{")
    end = result.output.index("For the connection")
    jwks = json.loads(result.output[start:end])
    assert jwks == {"keys": [public_jwk(tmp_path / "k1.public.pem", "ES384", "k1")]}
    assert 'algorithm = "ES384"' in result.output

    again = runner.invoke(
        cli_app, ["keys", "generate", "--alg", "ES384", "--out", str(tmp_path), "--kid", "k1"]
    )
    assert again.exit_code == 2
    assert "already exists" in again.output
    assert "Traceback" not in again.output

    a_file = tmp_path / "k1.public.pem"
    not_dir = runner.invoke(cli_app, ["keys", "generate", "--out", str(a_file)])
    assert not_dir.exit_code == 2
    assert "is a file; give a directory" in not_dir.output
