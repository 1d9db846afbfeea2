"""The dashboard's doors, over the app (TestClient): sessions, CSRF, security headers, and who
may log in; and the clinic drill-down over the samples. The figures and the browser itself:
test_dashboard_browser.py."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from joserfc.jwk import KeySet, RSAKey

from fhir_adapter.api import ApiDeps, create_app
from fhir_adapter.api.security import TokenVerifier, issue_token
from fhir_adapter.store import Store, open_store, resources
from fhir_adapter.web.data import Drill, Filters, tasks
from fhir_adapter.web.sessions import SessionStore
from tests.fhir_adapter.quality.samples import approve_later

ISSUER, AUDIENCE = "https://issuer.test", "https://homework.test/fhir"
KEY = RSAKey.generate_key(2048, parameters={"kid": "web-rsa"})
LOCAL = "http://127.0.0.1:8080"  # plain http on loopback: development cookies
JSON_ROUTES = ["/dashboard/api/filters", "/dashboard/api/report", "/dashboard/api/tasks"]


def token(scopes: str = "system/*.rs", lifetime_s: int = 300, key: Any = KEY) -> str:
    return issue_token(key, ISSUER, AUDIENCE, scopes, subject="quality-lead", lifetime_s=lifetime_s)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Any]:
    store = open_store(f"sqlite:///{tmp_path / 'web.db'}")
    verifier = TokenVerifier(KeySet([KEY]), ISSUER, AUDIENCE)
    yield create_app(ApiDeps(store=store, verifier=verifier))
    store.close()


@pytest.fixture
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app, base_url=LOCAL, follow_redirects=False) as client:
        yield client


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "the form carries a CSRF token"
    return found.group(1)


def log_in(client: TestClient, value: str, csrf: str | None = None, **headers: str) -> Any:
    form = client.get("/dashboard/login")
    data = {"token": value, "csrf": csrf if csrf is not None else csrf_of(form.text)}
    return client.post("/dashboard/login", data=data, headers=headers)


def test_without_a_session_the_page_sends_to_the_login_and_json_is_401(
    client: TestClient,
) -> None:
    page = client.get("/dashboard")
    assert page.status_code == 303 and page.headers["location"] == "/dashboard/login"
    for path in [*JSON_ROUTES, "/dashboard/static/dashboard.js",
                 "/dashboard/static/vendor/chart.umd.min.js"]:  # fmt: skip
        response = client.get(path)
        assert response.status_code == 401, path
        assert response.json()["resourceType"] == "OperationOutcome"
    # A bearer token is not a session: the dashboard's routes take the cookie only.
    with_bearer = client.get(JSON_ROUTES[0], headers={"Authorization": f"Bearer {token()}"})
    assert with_bearer.status_code == 401
    # The login page and its stylesheet are public; nothing else is.
    assert client.get("/dashboard/login").status_code == 200
    assert client.get("/dashboard/static/dashboard.css").status_code == 200
    assert client.get("/dashboard/static/../templates/login.html").status_code in (401, 404)


def test_every_dashboard_response_carries_a_strict_policy(client: TestClient) -> None:
    for response in (client.get("/dashboard/login"), client.get("/dashboard"),
                     client.get(JSON_ROUTES[1])):  # fmt: skip
        csp = response.headers["Content-Security-Policy"]
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["default-src"] == "'self'"
        assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
        assert directives["frame-ancestors"] == "'none'"
        assert "unsafe" not in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Cache-Control"] == "no-store"
    login = client.get("/dashboard/login").text
    assert "<script" not in login and "style=" not in login


def test_login_needs_the_forms_csrf_value_and_our_origin(client: TestClient) -> None:
    assert log_in(client, token(), csrf="").status_code == 403
    assert log_in(client, token(), csrf="forged-value").status_code == 403
    refused = log_in(client, token(), Origin="https://evil.example")
    assert refused.status_code == 403
    assert "expired or was sent from another site" in refused.text
    # A form from another site carries no cookie: the same value alone proves nothing.
    client.cookies.clear()
    assert client.post("/dashboard/login", data={"token": token(), "csrf": "x"}).status_code == 403
    assert client.get("/dashboard").status_code == 303
    assert log_in(client, token(), Origin=LOCAL).status_code == 303


OTHER_KEY = RSAKey.generate_key(2048, parameters={"kid": "web-rsa"})


# Tokens are made when the test runs, not when it is collected: a whole suite can take longer
# than a token lives.
@pytest.mark.parametrize(
    ("make", "status", "message"),
    [
        (lambda: "not-a-jwt", 401, "was not accepted"),
        (lambda: token(lifetime_s=-600), 401, "was not accepted"),
        (lambda: token(key=OTHER_KEY), 401, "not accepted"),
        (lambda: token("system/Task.rs"), 403, "lacks a scope for read on DocumentReference"),
        (lambda: token("system/Task.rs system/DocumentReference.rs"), 403, "read on Observation"),
        (lambda: "", 401, "Paste an access token"),
    ],
    ids=["garbage", "expired", "unknown-key", "task-only", "no-observation", "empty"],
)
def test_a_token_that_cannot_open_the_dashboard_is_refused_with_a_reason(
    client: TestClient, make: Callable[[], str], status: int, message: str
) -> None:
    value = make()
    response = log_in(client, value)
    assert response.status_code == status
    assert message in response.text
    assert 'role="alert"' in response.text
    assert value == "" or value not in response.text  # the token is not echoed back
    assert client.get("/dashboard").status_code == 303


def test_a_token_restricted_to_some_patients_does_not_see_everyones_figures(
    client: TestClient,
) -> None:
    restricted = token("system/Task.rs?patient=Patient/pat-1 system/DocumentReference.rs "
                       "system/Observation.rs")  # fmt: skip
    response = log_in(client, restricted)
    assert response.status_code == 403
    assert "restricted" in response.text


def test_a_session_opens_the_page_and_the_json_and_logout_ends_it(client: TestClient) -> None:
    value = token()
    response = log_in(client, value)
    assert response.status_code == 303 and response.headers["location"] == "/dashboard"
    cookie = next(c for c in response.headers.get_list("set-cookie") if "hwf-session=" in c)
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Secure" not in cookie  # plain http on loopback: development
    assert value not in cookie and all(value not in c for c in client.cookies.values())
    page = client.get("/dashboard")
    assert page.status_code == 200 and "quality-lead" in page.text
    for path in JSON_ROUTES:
        assert client.get(path).status_code == 200, path
    assert client.get("/dashboard/static/dashboard.js").status_code == 200
    assert client.get("/dashboard/login").status_code == 303  # already in
    # Logout needs the session's CSRF token.
    assert client.post("/dashboard/logout", data={}).status_code == 403
    assert client.post("/dashboard/logout", data={"csrf": "wrong"}).status_code == 403
    assert client.get("/dashboard").status_code == 200
    out = client.post("/dashboard/logout", data={"csrf": csrf_of(page.text)})
    assert out.status_code == 303 and out.headers["location"] == "/dashboard/login"
    assert client.get("/dashboard").status_code == 303
    assert client.get(JSON_ROUTES[1]).status_code == 401


def test_a_stolen_session_id_stops_working_at_logout(client: TestClient) -> None:
    log_in(client, token())
    stolen = dict(client.cookies)
    page = client.get("/dashboard")
    client.post("/dashboard/logout", data={"csrf": csrf_of(page.text)})
    client.cookies.clear()
    client.cookies.update(stolen)
    assert client.get(JSON_ROUTES[0]).status_code == 401


def test_over_https_the_cookies_are_secure_host_cookies(app: Any) -> None:
    with TestClient(app, base_url="https://dashboard.example", follow_redirects=False) as client:
        response = log_in(client, token())
        assert response.status_code == 303
        cookie = next(c for c in response.headers.get_list("set-cookie") if "session" in c)
        assert cookie.startswith("__Host-hwf-session=")
        assert "Secure" in cookie and "Path=/" in cookie and "Domain" not in cookie
        assert client.get("/dashboard").status_code == 200
    # A non-loopback host over plain http (behind a TLS proxy) still gets Secure cookies.
    with TestClient(app, base_url="http://dashboard.example", follow_redirects=False) as client:
        form = client.get("/dashboard/login")
        assert "Secure" in form.headers["set-cookie"]


def test_bad_filters_are_a_400_that_says_which(client: TestClient) -> None:
    log_in(client, token())
    for query, word in [("from=2025-13-01", "from"), ("clinic=Patient/x", "clinic"),
                        ("practitioner=Practitioner/a b", "practitioner"),
                        ("from=2025-03-01&to=2025-02-01", "period")]:  # fmt: skip
        response = client.get(f"{JSON_ROUTES[1]}?{query}")
        assert response.status_code == 400, query
        assert word in response.json()["issue"][0]["diagnostics"]
    assert client.get(f"{JSON_ROUTES[2]}?status=done").status_code == 400
    assert client.get(f"{JSON_ROUTES[2]}?category=sleep").status_code == 400
    assert client.get(f"{JSON_ROUTES[2]}?month=2025-2").status_code == 400


@pytest.mark.parametrize(
    "query",
    ["from=0001-01-01", "to=9999-12-31", "from=0001-01-01&to=9999-12-31&clinic=Organization/x"],
)
def test_a_period_at_the_calendars_edge_is_answered(client: TestClient, query: str) -> None:
    # The day's margin around the period once overflowed past year 1 or 9999 (a 500).
    log_in(client, token())
    for path in JSON_ROUTES[1:]:
        response = client.get(f"{path}?{query}")
        assert response.status_code == 200, (path, response.text)


def test_sessions_end_with_their_token_and_are_bounded(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 's.sqlite3'}")
    sessions = SessionStore(lambda: store, max_sessions=2)
    short, _ = sessions.start("a", time.time() - 1)
    assert sessions.get(short) is None  # its token has expired
    first, _ = sessions.start("b", time.time() + 60)
    second, _ = sessions.start("c", time.time() + 120)
    third, _ = sessions.start("d", time.time() + 180)
    assert len(sessions) == 2
    assert sessions.get(first) is None  # the one expiring soonest made room
    assert sessions.get(second) is not None and sessions.get(third) is not None
    assert sessions.get("not-an-id") is None and sessions.get(None) is None
    # Another process on the same database (a replica) sees the same sessions.
    assert SessionStore(lambda: store).get(second) == sessions.get(second)
    store.close()


def test_the_clinic_drill_down_keeps_a_session_approved_weeks_later(sample_store: Store) -> None:
    # Approval re-dates the note; the clinic is still read from it for the session's Tasks.
    february = Filters(date(2025, 2, 1), date(2025, 2, 28), clinic="Organization/clinic-1")
    before = tasks(sample_store, february, Drill())
    with sample_store.session() as session:
        drafts, _ = resources.search(session, resources.Query("Task", status=["draft"], count=500))
    assert before["total"] == len(drafts) > 0  # every sample session was held at clinic-1
    encounter = min(t["encounter"]["reference"] for t in drafts)
    approve_later(sample_store, encounter, "2025-03-20T09:00:00Z")
    assert tasks(sample_store, february, Drill()) == before
