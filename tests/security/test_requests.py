"""Malformed and hostile requests: every one is a 4xx OperationOutcome naming the problem
(never a 500), on SQLite and PostgreSQL; limits hold before anything is parsed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from joserfc.jwk import ECKey

from fhir_adapter.api.bundle import MAX_DEPTH
from fhir_adapter.api.search import MAX_CONDITIONS, MAX_VALUES
from fhir_adapter.pipeline.staging import stage
from fhir_adapter.pipeline.steps import Step
from fhir_adapter.service import dev_token, token_verifier
from fhir_adapter.settings import ApiAuthSettings, ApiSettings, SettingsError, load_settings
from fhir_adapter.store import open_store
from tests.security.support import EC_KEY, MAX_BODY, bearer, signed

WRITER = "system/Bundle.c"


def outcome(response: Any, status: int) -> str:
    """The diagnostics of the OperationOutcome `response` must be, with `status`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    return str(body["issue"][0]["diagnostics"])


def bundle(*resources: dict[str, Any], kind: str = "transaction") -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [{"resource": r, "request": {"method": "PUT", "url": "x"}} for r in resources],
    }


def encounter(**fields: Any) -> dict[str, Any]:
    return {"resourceType": "Encounter", "id": "e1", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                      "code": "AMB"}, "subject": {"reference": "Patient/p1"}, **fields}  # fmt: skip


# ---------------------------------------------------------------- body limits


def test_a_body_over_the_limit_is_refused_before_it_is_read(client: TestClient) -> None:
    big = b" " * (MAX_BODY + 1)
    for headers in ({}, bearer(WRITER)):  # with a token or without: nothing is parsed
        assert "api.max_body_bytes" in outcome(client.post("/ingest", content=big,
                                                           headers=headers), 413)  # fmt: skip


def test_a_streamed_body_is_cut_at_the_limit(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(8):
            yield b" " * (MAX_BODY // 4)

    outcome(client.post("/ingest", content=chunks(), headers=bearer(WRITER)), 413)


def test_the_token_is_checked_before_the_body(client: TestClient) -> None:
    # Not JSON: a 400 would mean the body was parsed for a caller with no token.
    outcome(client.post("/ingest", content=b"{not json"), 401)
    outcome(client.post("/ingest", content=b"{not json", headers=bearer("system/*.rs")), 403)


# ---------------------------------------------------------------- ingest bodies


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b"{not json", "not JSON"),
        (b"[]", "FHIR Bundle"),
        (json.dumps({"resourceType": "Patient"}).encode(), "FHIR Bundle"),
        (json.dumps({"resourceType": "Bundle", "type": "searchset"}).encode(), "type"),
        (json.dumps({"resourceType": "Bundle", "type": "batch", "entry": 5}).encode(), "entry"),
        (json.dumps(bundle(encounter(period={"start": "yesterday"}))).encode(), "entry[0]"),
        (json.dumps(bundle(encounter(id={"an": "object"}))).encode(), "entry[0]"),
        (json.dumps(bundle({"resourceType": "Nope", "id": "x"})).encode(), "entry[0]"),
        (
            json.dumps(bundle(encounter(subject={"reference": "Patient/" + "p" * 300}))).encode(),
            "entry[0]: subject.reference",
        ),
        (
            json.dumps(
                bundle(
                    {
                        "resourceType": "DocumentReference",
                        "status": "current",
                        "content": [{"attachment": None}],
                    }
                )
            ).encode(),
            "entry[0]",
        ),
        (
            json.dumps(
                bundle(
                    {
                        "resourceType": "DocumentReference",
                        "status": "current",
                        "content": [{"attachment": {"url": 5}}],
                    }
                )
            ).encode(),
            "entry[0]",
        ),
        (
            b'{"resourceType": "Bundle", "type": "batch", "entry": ' + b"[" * 50_000,
            "nested too deeply",
        ),
    ],
    ids=[
        "not-json",
        "array",
        "patient",
        "searchset",
        "entry-5",
        "bad-period",
        "object-id",
        "unknown-type",
        "long-reference",
        "null-attachment",
        "numeric-url",
        "deep-nesting",
    ],
)
def test_malformed_ingest_bodies_are_400s_naming_the_problem(
    client: TestClient, body: bytes, where: str
) -> None:
    assert where in outcome(client.post("/ingest", content=body, headers=bearer(WRITER)), 400)


def nested_answers(levels: int) -> dict[str, Any]:
    """A QuestionnaireResponse whose item groups nest `levels` deep: 4 + 2 * levels deep in
    an ingest Bundle."""
    item: dict[str, Any] = {"linkId": "q"}
    for _ in range(levels - 1):
        item = {"linkId": "q", "item": [item]}
    return {"resourceType": "QuestionnaireResponse", "status": "completed", "item": [item]}


def test_a_deeply_nested_body_is_refused_before_it_is_parsed(client: TestClient) -> None:
    # ijson's prefixes would take memory with the square of the depth (18 GB at 200 KB).
    arrays = b"[" * 200 + b"]" * 200
    deep = b'{"resourceType": "Bundle", "type": "batch", "entry": [{"resource": %s}]}' % arrays
    assert "nested too deeply" in outcome(client.post("/ingest", content=deep,
                                                      headers=bearer(WRITER)), 400)  # fmt: skip
    levels = (MAX_DEPTH - 4) // 2
    over = client.post("/ingest", json=bundle(nested_answers(levels + 1)), headers=bearer(WRITER))
    assert "nested too deeply" in outcome(over, 400)
    # At the limit, a valid resource nested as deep is accepted.
    at = client.post("/ingest", json=bundle(nested_answers(levels)), headers=bearer(WRITER))
    assert at.status_code == 202, at.text


def test_a_valid_bundle_with_dates_at_the_calendars_edges_is_accepted(client: TestClient) -> None:
    edges = encounter(period={"start": "0001-01-01T00:00:00+14:00",
                              "end": "9999-12-31T23:59:59-05:00"})  # fmt: skip
    accepted = client.post("/ingest", json=bundle(edges), headers=bearer(WRITER))
    assert accepted.status_code == 202, accepted.text


def test_the_ingest_403_names_the_scope_the_readme_names(client: TestClient) -> None:
    assert "system/Bundle.write" in outcome(
        client.post("/ingest", json=bundle(), headers=bearer("system/*.rs")), 403
    )


# ---------------------------------------------------------------- search and read


@pytest.mark.parametrize(
    "url",
    [
        "/fhir/Task?_id=" + "x" * 65,
        "/fhir/Task/" + "x" * 65,
        "/fhir/Task/not%20an%20id",
        "/fhir/Task?patient=Patient/" + "x" * 300,
        "/fhir/Task?patient=a/b/c",
        "/fhir/Task?status=" + "s" * 300,
        "/fhir/Task?code=" + "c" * 300,
        "/fhir/Task?identifier=|",
        "/fhir/Task?patient=%00",
        "/fhir/Task/a0%00",
        "/fhir/Task?business-status=reviewed%00",
        "/fhir/Task?authored-on=0000-01-01",
        "/fhir/Task?authored-on=2026-02-30",
        "/fhir/Task?authored-on=2026-03-01T25:00:00Z",
        "/fhir/Task?authored-on=ge2026-03-01T10:00:00%2B15:00",
        "/fhir/Task?authored-on=20260301",
        "/fhir/Task?_count=-1",
        "/fhir/Task?_offset=abc",
    ],
)
def test_malformed_searches_and_reads_are_400s(client: TestClient, url: str) -> None:
    outcome(client.get(url, headers=bearer()), 400)


@pytest.mark.parametrize(
    "value",
    [
        "ge9999-12-31T23:59:59-05:00",
        "le0001-01-01T00:00:00%2B14:00",
        "lt9999",
        "gt0001-01-01",
        "eq9999-12-31T23:59:59.999999999%2B14:00",
        "le0001-01-01T00:00:00+14:00",
    ],  # unencoded: + arrives as a space
)
def test_search_dates_at_the_calendars_edges(client: TestClient, value: str) -> None:
    found = client.get(f"/fhir/Task?authored-on={value}", headers=bearer())
    assert found.status_code == 200, found.text
    expected = {"lt9999": 6, "gt0001-01-01": 6}.get(value, 0)
    assert found.json()["total"] == expected


def test_a_repeated_parameter_means_and(client: TestClient) -> None:
    def total(query: str) -> int:
        found = client.get(f"/fhir/Task?{query}", headers=bearer())
        assert found.status_code == 200, found.text
        return int(found.json()["total"])

    assert total("business-status=reviewed,awaiting-review") == 6  # either
    assert total("business-status=reviewed&business-status=awaiting-review") == 0  # both
    assert total("patient=Patient/p1&patient=Patient/p2") == 0
    assert total("patient=Patient/p1&patient=p1") == 4
    assert total("patient=Patient/p1&business-status=reviewed") == 1
    assert total("authored-on=ge2026-03-02&authored-on=lt2026-04-01") == 3  # a range


def too_costly(response: Any) -> str:
    diagnostics = outcome(response, 400)
    assert response.json()["issue"][0]["code"] == "too-costly"
    return diagnostics


def test_a_search_with_too_many_values_or_conditions_is_too_costly(client: TestClient) -> None:
    def codes(n: int) -> str:
        return "code=" + ",".join(f"c{i}" for i in range(n))

    def repeated(condition: str, n: int) -> str:
        return "&".join([condition] * n)

    # Each value and repeat is a term of the SQL: 1,100 of them (600 dates) failed in SQLite
    # (expression tree over 1000 deep, a 500).
    for query in (codes(1100), codes(MAX_VALUES + 1)):
        assert "comma-separated" in too_costly(client.get(f"/fhir/Task?{query}",
                                                          headers=bearer()))  # fmt: skip
    half = ",".join(["reviewed"] * (MAX_CONDITIONS // 2 + 1))
    for query in (
        repeated("status=draft", 1100),
        repeated("authored-on=ge2020", 600),
        repeated("status=draft", MAX_CONDITIONS + 1),
        repeated(f"business-status={half}", 2),  # values and repeats add up
    ):
        assert "split the search" in too_costly(client.get(f"/fhir/Task?{query}",
                                                           headers=bearer()))  # fmt: skip
    # At the limits, the searches run.
    at_limit = [
        codes(MAX_VALUES - 1) + ",journal",
        repeated("status=draft", MAX_CONDITIONS),
        repeated("authored-on=ge2020", MAX_CONDITIONS),
        repeated("business-status=reviewed", MAX_CONDITIONS),
    ]
    totals = [6, 6, 6, 3]
    for query, expected in zip(at_limit, totals, strict=True):
        found = client.get(f"/fhir/Task?{query}", headers=bearer())
        assert found.status_code == 200, found.text
        assert found.json()["total"] == expected, query


def test_a_wrong_method_is_405_with_allow(client: TestClient) -> None:
    response = client.delete("/fhir/Task", headers=bearer())
    outcome(response, 405)
    assert "GET" in response.headers["allow"]


# ---------------------------------------------------------------- what needs which token


def test_only_health_checks_are_public(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    for path in ("/openapi.json", "/fhir/metadata", "/model-card", "/metrics"):
        outcome(client.get(path), 401)
    for path in ("/docs", "/redoc"):
        assert client.get(path).status_code == 404


@pytest.mark.parametrize("path", ["/openapi.json", "/fhir/metadata", "/model-card"])
@pytest.mark.parametrize("scopes", ["openid fhirUser", "patient/Task.read", "user/*.rs"])
def test_routes_without_a_resource_need_a_system_scope(
    client: TestClient, path: str, scopes: str
) -> None:
    outcome(client.get(path, headers=bearer(scopes)), 403)
    assert client.get(path, headers=bearer("system/Task.rs")).status_code == 200


def test_the_openapi_document_declares_fhir_json_and_the_errors(client: TestClient) -> None:
    document = client.get("/openapi.json", headers=bearer()).json()
    search = document["paths"]["/fhir/{resource_type}"]["get"]["responses"]
    assert {"200", "400", "401", "403", "404"} <= set(search)
    assert "application/fhir+json" in search["200"]["content"]
    assert "application/fhir+json" in search["400"]["content"]
    ingest = document["paths"]["/ingest"]["post"]
    assert "application/fhir+json" in ingest["requestBody"]["content"]
    assert {"202", "413"} <= set(ingest["responses"])


# ---------------------------------------------------------------- tokens


def test_a_token_living_longer_than_the_maximum_is_refused(client: TestClient) -> None:
    now = int(time.time())
    ten_years = signed({"scope": "system/*.rs", "iat": now, "exp": now + 10 * 365 * 86400})
    assert "lifetime" in outcome(client.get("/fhir/Task", headers=ten_years), 401)
    no_iat = signed({"scope": "system/*.rs", "exp": now + 86400, "iat": None})
    outcome(client.get("/fhir/Task", headers=no_iat), 401)
    assert client.get("/fhir/Task", headers=bearer(lifetime_s=3600)).status_code == 200


def test_rs256_is_refused_unless_configured(client: TestClient) -> None:
    now = int(time.time())
    rs256 = signed({"scope": "system/*.rs", "exp": now + 300}, alg="RS256")
    outcome(client.get("/fhir/Task", headers=rs256), 401)
    rs384 = signed({"scope": "system/*.rs", "exp": now + 300}, alg="RS384")
    assert client.get("/fhir/Task", headers=rs384).status_code == 200


def test_an_es384_public_key_file_verifies_and_a_bad_one_is_a_settings_error(
    tmp_path: Path,
) -> None:
    pem = tmp_path / "ec.pem"
    pem.write_bytes(ECKey.import_key(EC_KEY.as_dict(private=False)).as_pem(private=False))
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")

    def settings(path: Path) -> Any:
        auth = ApiAuthSettings(issuer="https://i", audience="https://a", public_key_file=path)
        return load_settings(environment="development", data_dir=tmp_path,
                             api=ApiSettings(auth=auth))  # fmt: skip

    assert token_verifier(settings(pem)).keys.keys
    with pytest.raises(SettingsError, match="no RSA or EC"):
        token_verifier(settings(junk))


# ---------------------------------------------------------------- staging what EHRs send


def test_staging_survives_ids_and_references_outside_the_grammar(database_url: str) -> None:
    """What a poll or a push stages is bounded by FHIR's grammar, not by the database's column
    widths: a 300-character reference links nothing, a 200-character id is not staged."""
    store = open_store(database_url)
    long_ref = {"reference": "Patient/" + "p" * 300}
    resources = [
        {"resourceType": "Encounter", "id": "e-ok", "status": "finished", "subject": long_ref},
        {"resourceType": "DocumentReference", "id": "d" * 200, "status": "current"},
        {"resourceType": "Observation", "id": "o1", "status": "final",
         "encounter": {"reference": "Encounter/" + "e" * 300}, "subject": long_ref},
    ]  # fmt: skip
    try:
        with store.session() as session:
            summary = stage(session, "local", resources, Step.DETECT)
        assert summary.ignored_types == {"DocumentReference": 1}
        assert summary.encounters == []  # no subject it can use: not registered
        assert summary.unlinked == 1
    finally:
        store.close()


def test_development_tokens_live_no_longer_than_the_api_accepts(tmp_path: Path) -> None:
    """`homework-fhir token` and the demo mint tokens the same server accepts (the demo's
    8-hour token was refused once lifetimes were bounded)."""
    auth = ApiAuthSettings(mode="dev-embedded")
    settings = load_settings(environment="development", data_dir=tmp_path,
                             api=ApiSettings(auth=auth))  # fmt: skip
    verifier = token_verifier(settings)
    assert verifier.claims(f"Bearer {dev_token(settings)}")["scope"] == "system/*.read"
    with pytest.raises(SettingsError, match="max_token_lifetime_s"):
        dev_token(settings, lifetime_s=8 * 3600)
