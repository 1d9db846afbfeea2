"""The API over a real store: authentication, scopes, FHIR search and read, errors as OO."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome
from joserfc.jwk import ECKey, KeySet, RSAKey

from fhir_adapter.api import ApiDeps, create_app
from fhir_adapter.api.security import TokenVerifier, issue_token, scope_allows
from fhir_adapter.metrics import exposition
from fhir_adapter.store import open_store, resources

ISSUER, AUDIENCE = "https://issuer.test", "https://homework.test/fhir"
SID = "https://homework-fhir.org/fhir/sid/task"
KEY = RSAKey.generate_key(2048, parameters={"kid": "test-rsa"})
EC_KEY = ECKey.generate_key("P-384", parameters={"kid": "test-ec"})


def task(value: str, patient: str, status: str, authored: str) -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "identifier": [{"system": SID, "value": value}],
        "status": "draft",
        "intent": "proposal",
        "for": {"reference": patient},
        "code": {"coding": [{"system": "urn:hw", "code": "journal"}]},
        "businessStatus": {"coding": [{"code": status}]},
        "authoredOn": authored,
    }


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    store = open_store(f"sqlite:///{tmp_path / 'api.db'}")
    with store.session() as s:
        for i in range(5):
            resources.put(s, task(f"t{i}", "Patient/p1", "awaiting-review", f"2026-03-0{i + 1}"))
        resources.put(s, task("r1", "Patient/p2", "reviewed", "2026-04-01"))
    verifier = TokenVerifier(KeySet([KEY, EC_KEY]), ISSUER, AUDIENCE)
    deps = ApiDeps(store=store, verifier=verifier, metrics=lambda: exposition(store))
    with TestClient(create_app(deps)) as client:
        yield client
    store.close()


def auth(scopes: str = "system/*.read", key: Any = KEY, **kw: Any) -> dict[str, str]:
    token = issue_token(
        key,
        kw.get("iss", ISSUER),
        kw.get("aud", AUDIENCE),
        scopes,
        lifetime_s=kw.get("lifetime", 300),
    )
    return {"Authorization": f"Bearer {token}"}


def test_health_checks_need_no_token(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["database"] == "ok"


def test_a_failed_readiness_check_names_no_host(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # /readyz is public: a check's message (here the model server's URL) stays in the log.
    async def model() -> None:
        raise ConnectionError("cannot reach http://model.internal:8001/v1/models")

    store = open_store(f"sqlite:///{tmp_path / 'ready.db'}")
    verifier = TokenVerifier(KeySet([KEY]), ISSUER, AUDIENCE)
    deps = ApiDeps(store=store, verifier=verifier, readiness=[("model", model)])
    with TestClient(create_app(deps)) as client:
        ready = client.get("/readyz")
    store.close()
    assert ready.status_code == 503
    assert ready.json()["checks"] == {
        "database": "ok",
        "model": "unavailable: ConnectionError; see the server log",
    }
    assert "model.internal" not in ready.text
    assert "model.internal" in caplog.text and "readiness check model failed" in caplog.text


def test_an_outage_logs_its_traceback_once_and_its_recovery(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Probes come every few seconds: one traceback per outage, not one per probe.
    down = [True]

    async def model() -> None:
        if down[0]:
            raise ConnectionError("model server unreachable")

    store = open_store(f"sqlite:///{tmp_path / 'ready.db'}")
    verifier = TokenVerifier(KeySet([KEY]), ISSUER, AUDIENCE)
    deps = ApiDeps(store=store, verifier=verifier, readiness=[("model", model)])
    with TestClient(create_app(deps)) as client:
        codes = [client.get("/readyz").status_code for _ in range(3)]
        down[0] = False
        codes.append(client.get("/readyz").status_code)
        down[0] = True
        codes.append(client.get("/readyz").status_code)
    store.close()
    assert codes == [503, 503, 503, 200, 503]
    records = [r for r in caplog.records if "readiness check model" in r.getMessage()]
    assert [(r.getMessage(), r.exc_info is not None) for r in records if r.levelno >= 30] == [
        ("readiness check model failed", True),
        ("readiness check model recovered", False),
        ("readiness check model failed", True),
    ]


@pytest.mark.parametrize("path", ["/fhir/metadata", "/fhir/Task", "/fhir/Task/x"])
def test_every_other_route_needs_a_token(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    OperationOutcome.model_validate(response.json())


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer not-a-jwt"},
        auth(iss="https://someone-else"),
        auth(aud="https://other-audience"),
        auth(lifetime=-3600),
    ],
    ids=["garbage", "wrong-issuer", "wrong-audience", "expired"],
)
def test_bad_tokens_are_refused(client: TestClient, headers: dict[str, str]) -> None:
    assert client.get("/fhir/Task", headers=headers).status_code == 401


def test_a_token_signed_by_an_unknown_key_is_refused(client: TestClient) -> None:
    stranger = RSAKey.generate_key(2048, parameters={"kid": "test-rsa"})
    assert client.get("/fhir/Task", headers=auth(key=stranger)).status_code == 401


def test_scopes_are_enforced(client: TestClient) -> None:
    assert client.get("/fhir/Task", headers=auth("system/Task.rs")).status_code == 200
    assert client.get("/fhir/Task", headers=auth("system/Task.read", key=EC_KEY)).status_code == 200
    denied = client.get("/fhir/Task", headers=auth("system/CarePlan.read"))
    assert denied.status_code == 403
    assert "system/Task.rs" in denied.json()["issue"][0]["diagnostics"]
    assert client.post("/ingest", json={}, headers=auth("system/*.read")).status_code == 403


def test_scope_grammar() -> None:
    assert scope_allows("system/*.cruds", "Task", "write")
    assert scope_allows("system/Task.rs?business-status=reviewed", "Task", "read")
    assert not scope_allows("patient/Task.read", "Task", "read")
    assert not scope_allows("system/Task.c", "Task", "read")
    assert not scope_allows("system/Task.xyz", "Task", "read")


def test_metadata_is_a_valid_capability_statement(client: TestClient) -> None:
    response = client.get("/fhir/metadata", headers=auth())
    statement = CapabilityStatement.model_validate(response.json())
    types = {r.type for r in statement.rest[0].resource}
    assert {
        "CarePlan",
        "Task",
        "Provenance",
        "Observation",
        "DocumentReference",
        "Communication",
        "Device",
    } <= types


def test_search_filters_and_pages(client: TestClient) -> None:
    headers = auth()
    page = client.get(
        "/fhir/Task?patient=p1&business-status=awaiting-review&_count=2", headers=headers
    )
    bundle = Bundle.model_validate(page.json())
    assert bundle.total == 5 and len(bundle.entry) == 2
    seen = [e.resource.identifier[0].value for e in bundle.entry]
    next_url = next(link.url for link in bundle.link if link.relation == "next")
    while next_url:
        body = client.get(next_url, headers=headers).json()
        seen += [e["resource"]["identifier"][0]["value"] for e in body["entry"]]
        next_url = next((lk["url"] for lk in body["link"] if lk["relation"] == "next"), None)
    assert sorted(seen) == [f"t{i}" for i in range(5)]
    reviewed = client.get("/fhir/Task?business-status=reviewed", headers=headers).json()
    assert [e["resource"]["for"]["reference"] for e in reviewed["entry"]] == ["Patient/p2"]
    dated = client.get(
        "/fhir/Task?authored-on=ge2026-03-04&authored-on=lt2026-04-01", headers=headers
    )
    assert dated.json()["total"] == 2
    coded = client.get("/fhir/Task?code=urn:hw|journal&subject=Patient/p2", headers=headers)
    assert coded.json()["total"] == 1
    by_id = client.get(f"/fhir/Task?identifier={SID}|t3", headers=headers).json()
    assert by_id["total"] == 1


def test_read_and_history(client: TestClient) -> None:
    headers = auth()
    first = client.get("/fhir/Task?identifier=t0", headers=headers).json()["entry"][0]["resource"]
    read = client.get(f"/fhir/Task/{first['id']}", headers=headers)
    assert read.status_code == 200 and read.headers["ETag"] == 'W/"1"'
    history = client.get(f"/fhir/Task/{first['id']}/_history", headers=headers).json()
    assert history["type"] == "history" and history["total"] == 1


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/fhir/Task?colour=blue", 400),
        ("/fhir/Task?authored-on=yesterday", 400),
        ("/fhir/Task?_count=-1", 400),
        ("/fhir/Patient", 404),
        ("/fhir/Task/does-not-exist", 404),
    ],
)
def test_errors_are_operation_outcomes(client: TestClient, path: str, status: int) -> None:
    response = client.get(path, headers=auth())
    assert response.status_code == status
    outcome = OperationOutcome.model_validate(response.json())
    assert outcome.issue[0].diagnostics


def test_ingest_refuses_what_is_not_a_bundle(client: TestClient) -> None:
    headers = auth("system/Bundle.write")
    assert (
        client.post("/ingest", json={"resourceType": "Patient"}, headers=headers).status_code == 501
    )


def test_metrics_need_a_token_and_count_what_waits(client: TestClient, tmp_path: Path) -> None:
    assert client.get("/metrics").status_code == 401
    page = client.get("/metrics", headers=auth())
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/plain")
    text = page.text
    # This process's histograms are declared; the store's gauges are read at scrape time.
    assert "# TYPE homework_step_seconds histogram" in text
    assert "# TYPE homework_encounters gauge" in text
    assert "homework_writes_queued" in text


def test_serve_refuses_a_port_out_of_range(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from fhir_adapter.cli import app

    # 70000 used to be served as 70000 % 65536 = 4464 without a word. Production settings
    # without keys stop `serve` before it listens, should the range check be missing.
    monkeypatch.setenv("HOMEWORK_FHIR_ENVIRONMENT", "production")
    for port in ("70000", "0"):
        result = CliRunner().invoke(app, ["serve", "--port", port])
        assert result.exit_code == 2
        assert "Invalid value for '--port'" in result.stderr
