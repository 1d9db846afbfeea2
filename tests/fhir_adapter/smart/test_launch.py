"""SMART launch and the review screen over TestClient, against the development EHR
(`fhir_adapter.smart.devserver`, authlib's authorization server) reached through the app's own
ASGI transport, and a store filled by the real pipeline (`homework-fhir demo --no-serve`)."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from authlib.integrations.httpx_client._compat import httpx2 as oauth_http
from fastapi.testclient import TestClient
from joserfc.jwk import KeySet, RSAKey
from sqlalchemy import delete, select

from fhir_adapter.api import ApiDeps, create_app
from fhir_adapter.api.security import TokenVerifier
from fhir_adapter.ehr.jwks import jwks_router
from fhir_adapter.ehr.keys import generate_key_pair, public_jwk
from fhir_adapter.samples import sample_export_dir
from fhir_adapter.settings import EhrConnection, load_settings
from fhir_adapter.smart import SmartApp, routes
from fhir_adapter.smart.devserver import DevClient, DevEhr, dev_ehr_router, encode_launch
from fhir_adapter.store import Store, open_store, resources
from fhir_adapter.store.models import WebSessionRow
from fhir_adapter.store.resources import Query

BASE = "http://127.0.0.1:8080"
ISS = f"{BASE}/dev-ehr/fhir"
SECRET = "a-test-client-secret-that-is-long"
KEY = RSAKey.generate_key(2048, parameters={"kid": "t"})


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    root = tmp_path_factory.mktemp("smart")
    done = subprocess.run(
        [sys.executable, "-c", "from fhir_adapter.cli import main; main()", "demo",
         "--data-dir", str(root), "--no-serve"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    opened = open_store(f"sqlite:///{root / 'demo.sqlite3'}")
    try:
        yield opened
    finally:
        opened.close()


class Tamper(oauth_http.AsyncBaseTransport):  # type: ignore[misc]
    """The app's own ASGI transport for authlib's token requests (httpx2 or httpx, as authlib
    uses); optionally rewrites the token response's id_token, or edits the response (`edit`)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.tamper = False
        self.edit: Callable[[dict[str, Any]], None] | None = None

    async def handle_async_request(self, request: Any) -> Any:
        response = await self.inner.handle_async_request(request)
        if (self.tamper or self.edit) and request.url.path.endswith("/dev-ehr/token"):
            await response.aread()
            body = response.json()
            if self.tamper:
                header, payload, signature = body["id_token"].split(".")
                body["id_token"] = f"{header}.{payload}.{signature[::-1]}"
            if self.edit:
                self.edit(body)
            return oauth_http.Response(200, json=body)
        return response


@dataclass
class App:
    client: TestClient
    transport: Tamper
    ehr: DevEhr


@contextmanager
def serve(store: Store, scopes: list[str] | None = None, **options: Any) -> Iterator[App]:
    """The app and the dev EHR on `store`; `scopes` the app asks for (None: the default),
    `options` for create_app."""
    redirect = f"{BASE}/smart/callback"
    ehr = DevEhr(f"{BASE}/dev-ehr", sample_export_dir(), DevClient("demo", SECRET, redirect))
    conn = EhrConnection(
        name="dev_ehr",
        base_url=ISS,
        smart_app={"client_id": "demo", "client_secret": SECRET, "redirect_uri": redirect,
                   **({"scopes": scopes} if scopes is not None else {})},
    )  # fmt: skip
    deps = ApiDeps(store=store, verifier=TokenVerifier(KeySet([KEY]), "i", "a"))
    made = create_app(deps, public_routers=[dev_ehr_router(ehr)], **options)
    transport = Tamper(oauth_http.ASGITransport(app=made))
    deps.smart = SmartApp(
        {"dev_ehr": conn}, transport=httpx.ASGITransport(app=made), oauth_transport=transport
    )
    with TestClient(made, base_url=BASE) as client:
        yield App(client, transport, ehr)


@pytest.fixture
def app(store: Store) -> Iterator[App]:
    with serve(store) as made:
        yield made


def _field(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]+)"', html)
    assert found, f"no {name} in the page"
    return found.group(1)


def launch(app: App, patient: str = "pat-1", encounter: str | None = "enc-1-3") -> httpx.Response:
    """From the EHR launch URL through sign-in and consent; the callback's response."""
    c = app.client
    context = encode_launch(patient, encounter)
    started = c.get("/smart/launch", params={"iss": ISS, "launch": context}, follow_redirects=False)
    assert started.status_code == 302, started.text
    authorize = started.headers["location"]
    assert authorize.startswith(f"{BASE}/dev-ehr/authorize?")
    assert "code_challenge_method=S256" in authorize and "nonce=" in authorize
    consent = c.get(authorize)
    assert consent.status_code == 200 and "Dr. Amara Okafor" in consent.text
    decided = c.post(
        "/dev-ehr/authorize",
        data={"pending": _field(consent.text, "pending"), "csrf": _field(consent.text, "csrf"),
              "decision": "allow"},
        headers={"origin": BASE}, follow_redirects=False,
    )  # fmt: skip
    assert decided.status_code == 303, decided.text
    callback = decided.headers["location"]
    assert callback.startswith(f"{BASE}/smart/callback?code=")
    return c.get(callback, follow_redirects=False)


def tasks(store: Store, patient: str) -> list[dict[str, Any]]:
    with store.session() as session:
        found, _ = resources.search(session, Query("Task", patient=patient, count=500))
    return found


def test_ehr_launch_to_review_and_evidence(app: App, store: Store) -> None:
    done = launch(app)
    assert done.status_code == 303 and done.headers["location"] == "/smart/review"
    cookie = done.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
    page = app.client.get("/smart/review")
    assert page.status_code == 200, page.text[-800:]
    assert "Content-Security-Policy" in page.headers
    drafted = [t for t in tasks(store, "Patient/pat-1")
               if t["encounter"]["reference"] == "Encounter/enc-1-3"]  # fmt: skip
    assert drafted
    shown = re.findall(r'<li class="draft" data-task="([^"]+)"', page.text)
    assert sorted(shown) == sorted(t["id"] for t in drafted)
    assert page.text.count('class="ai-label"') >= len(drafted)
    assert "Practitioner/prac-1" in page.text  # fhirUser
    assert 'id="trend-data"' in page.text
    # Linked evidence: the quoted turn in its transcript, read from the EHR with the token.
    evidence = app.client.get(f"/smart/review/tasks/{drafted[0]['id']}")
    assert evidence.status_code == 200, evidence.text
    assert 'id="quoted"' in evidence.text
    assert "evidence-problem" not in evidence.text


def _url_only(ehr: DevEhr, document: str, url: str | None = None) -> None:
    """Keep the EHR's transcript `document` as a Binary the DocumentReference points to (as
    Epic and Oracle Health do), instead of inline data."""
    doc = ehr.data["DocumentReference"][document.split("/")[1]]
    attachment = doc["content"][0]["attachment"]
    binaries = ehr.data.setdefault("Binary", {})
    binary = binaries.get(f"tx-{doc['id']}") or {
        "resourceType": "Binary", "id": f"tx-{doc['id']}",
        "contentType": attachment["contentType"], "data": attachment["data"],
        "securityContext": {"reference": document},
    }  # fmt: skip
    binaries[binary["id"]] = binary
    doc["content"][0]["attachment"] = {"contentType": attachment["contentType"],
                                       "url": url or f"Binary/{binary['id']}"}  # fmt: skip


def test_evidence_from_a_transcript_given_by_url(app: App, store: Store) -> None:
    """The transcript's DocumentReference names a Binary (relative or absolute url): the
    evidence page reads it with the clinician's token; a url on another server is not read
    (the token would go there) and the page says so."""
    assert launch(app).status_code == 303
    drafted = [t for t in tasks(store, "Patient/pat-1")
               if t["encounter"]["reference"] == "Encounter/enc-1-3"]  # fmt: skip
    document = next(i["valueReference"]["reference"] for i in drafted[0]["input"]
                    if "valueReference" in i and "DocumentReference" in
                    i["valueReference"]["reference"])  # fmt: skip
    for url in (None, f"{ISS}/Binary/tx-{document.split('/')[1]}"):
        _url_only(app.ehr, document, url)
        evidence = app.client.get(f"/smart/review/tasks/{drafted[0]['id']}")
        assert evidence.status_code == 200, evidence.text
        assert 'id="quoted"' in evidence.text and "evidence-problem" not in evidence.text, url
    _url_only(app.ehr, document, "https://elsewhere.example/Binary/x")
    evidence = app.client.get(f"/smart/review/tasks/{drafted[0]['id']}")
    assert 'id="quoted"' not in evidence.text
    assert "another server" in evidence.text and "Traceback" not in evidence.text


def test_launch_and_session_span_replicas(app: App, store: Store) -> None:
    """Two API processes on one database, no sticky sessions: the launch starts on one, the
    EHR's callback lands on the other, and the session works on both. The table holds no
    access token (the session is encrypted under the cookie's id)."""
    deps = ApiDeps(store=store, verifier=TokenVerifier(KeySet([KEY]), "i", "a"))
    made = create_app(deps)
    ehr_app = app.client.app
    conn = EhrConnection(
        name="dev_ehr", base_url=ISS,
        smart_app={"client_id": "demo", "client_secret": SECRET,
                   "redirect_uri": f"{BASE}/smart/callback"},
    )  # fmt: skip
    smart = SmartApp({"dev_ehr": conn}, transport=httpx.ASGITransport(app=ehr_app),
                     oauth_transport=Tamper(oauth_http.ASGITransport(app=ehr_app)))  # fmt: skip
    deps.smart = smart
    with TestClient(made, base_url=BASE) as other:
        c = app.client
        started = c.get("/smart/launch", params={"iss": ISS, "launch": encode_launch("pat-1")},
                        follow_redirects=False)  # fmt: skip
        consent = c.get(started.headers["location"])
        decided = c.post(
            "/dev-ehr/authorize",
            data={"pending": _field(consent.text, "pending"),
                  "csrf": _field(consent.text, "csrf"), "decision": "allow"},
            headers={"origin": BASE}, follow_redirects=False,
        )  # fmt: skip
        other.cookies.update(c.cookies)
        done = other.get(decided.headers["location"], follow_redirects=False)
        assert done.status_code == 303, done.text
        assert other.get("/smart/review").status_code == 200
        c.cookies.update(other.cookies)
        assert c.get("/smart/review").status_code == 200
    with store.session() as session:
        payloads = session.scalars(select(WebSessionRow.payload)).all()
    assert payloads and app.ehr.tokens
    assert not any(t.encode() in p for t in app.ehr.tokens for p in payloads)


def test_ehr_launch_with_private_key_jwt(store: Store, tmp_path: Path) -> None:
    """A confidential app registered by its public key (private_key_jwt, as Epic and Oracle
    Health register them): the key is in our published JWK Set, the EHR registered that set,
    and the code exchange authenticates with a signed assertion; an EHR that registered
    another key refuses the sign-in."""
    key = generate_key_pair("RS384", tmp_path, "app-2026")
    redirect = f"{BASE}/smart/callback"
    settings = load_settings(
        environment="development",
        api={"auth": {"mode": "dev-embedded"}},
        ehr={"dev_ehr": {"base_url": ISS, "smart_app": {
            "client_id": "demo", "private_key_file": str(key.private_key_file),
            "kid": "app-2026", "redirect_uri": redirect}}},
    )  # fmt: skip
    deps = ApiDeps(store=store, verifier=TokenVerifier(KeySet([KEY]), "i", "a"))
    ehr = DevEhr(f"{BASE}/dev-ehr", sample_export_dir(), DevClient("demo", "", redirect))
    made = create_app(deps, public_routers=[dev_ehr_router(ehr), jwks_router(settings)])
    transport = Tamper(oauth_http.ASGITransport(app=made))
    deps.smart = SmartApp(settings.ehr, transport=httpx.ASGITransport(app=made),
                          oauth_transport=transport)  # fmt: skip
    with TestClient(made, base_url=BASE) as client:
        published = client.get("/.well-known/jwks.json").json()
        assert [k["kid"] for k in published["keys"]] == ["app-2026"]
        assert all("d" not in k for k in published["keys"])
        ehr.client = DevClient("demo", "", redirect, jwks=published)
        done = launch(App(client, transport, ehr))
        assert done.status_code == 303, done.text
        assert client.get("/smart/review").status_code == 200
        other = generate_key_pair("RS384", tmp_path / "other", "app-2026")
        ehr.client = DevClient("demo", "", redirect, jwks={"keys": [
            public_jwk(other.public_key_file, "RS384", "app-2026")]})  # fmt: skip
        refused = launch(App(client, transport, ehr))
        assert refused.status_code == 400 and "invalid_client" in refused.text


def test_patient_a_cannot_read_patient_b(app: App, store: Store) -> None:
    assert launch(app).status_code == 303
    other = tasks(store, "Patient/pat-2")[0]["id"]
    assert app.client.get(f"/smart/review/tasks/{other}").status_code == 404
    assert app.client.get("/smart/review/tasks/..%2F..").status_code == 404
    page = app.client.get("/smart/review")
    assert other not in page.text and "Patient/pat-2" not in page.text


def test_no_session_redirects_to_launch(app: App) -> None:
    """A page without a session starts a launch (standalone: the one connection here); the
    launch comes back to the review screen. A form post or the script without one is 401."""
    for path in ("/smart/review", "/smart/review/tasks/anything"):
        sent = app.client.get(path, follow_redirects=False)
        assert (sent.status_code, sent.headers["location"]) == (302, "/smart/launch"), path
    started = app.client.get("/smart/launch", follow_redirects=False)
    assert started.headers["location"].startswith(f"{BASE}/dev-ehr/authorize?")
    refused = app.client.post("/smart/review/approve", data={"all": "1"},
                              headers={"origin": BASE}, follow_redirects=False)  # fmt: skip
    assert refused.status_code == 401 and "Open the review from the patient" in refused.text
    assert app.client.get("/smart/static/review.js").status_code == 401
    # A browser that signed in before goes back to the same EHR (`iss`) once its session ends.
    assert launch(app).status_code == 303
    app.client.cookies.delete("hwf-smart")
    sent = app.client.get("/smart/review", follow_redirects=False)
    assert sent.headers["location"] == f"/smart/launch?{urlencode({'iss': ISS})}"


def test_wrong_iss_is_refused(app: App) -> None:
    page = app.client.get(
        "/smart/launch",
        params={"iss": "https://evil.example/fhir", "launch": "x"},
        follow_redirects=False,
    )
    assert page.status_code == 400
    assert "not registered" in page.text and "Traceback" not in page.text


def test_authorization_for_another_fhir_server_is_refused(app: App) -> None:
    """The dev EHR issues tokens for its one FHIR base: an `aud` naming another is refused."""
    started = app.client.get(
        "/smart/launch", params={"iss": ISS, "launch": encode_launch("pat-1")},
        follow_redirects=False,
    )  # fmt: skip
    authorize = started.headers["location"]
    assert f"aud={ISS.replace(':', '%3A').replace('/', '%2F')}" in authorize
    other = authorize.replace("aud=", "aud=https%3A%2F%2Fother.example%2Ffhir&was=")
    refused = app.client.get(other)
    assert refused.status_code == 400 and "aud must be this EHR" in refused.text
    missing = re.sub(r"aud=[^&]*&?", "", authorize)
    assert app.client.get(missing).status_code == 400


def test_state_is_single_use_and_expires(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    c = app.client
    started = c.get("/smart/launch", params={"iss": ISS, "launch": encode_launch("pat-1")},
                    follow_redirects=False)  # fmt: skip
    state = re.search(r"state=([^&]+)", started.headers["location"])
    assert state
    # An unknown state, then replay of a used one.
    assert c.get("/smart/callback", params={"state": "nope", "code": "x"}).status_code == 400
    first = c.get("/smart/callback", params={"state": state.group(1), "code": "x"})
    assert first.status_code == 400  # the EHR refuses the made-up code
    replay = c.get("/smart/callback", params={"state": state.group(1), "code": "x"})
    assert replay.status_code == 400 and "expired or was already used" in replay.text
    # Expired: a launch more than 10 minutes old.
    started = c.get("/smart/launch", params={"iss": ISS}, follow_redirects=False)
    state = re.search(r"state=([^&]+)", started.headers["location"])
    assert state
    later = time.time() + 601
    monkeypatch.setattr(time, "time", lambda: later)
    expired = c.get("/smart/callback", params={"state": state.group(1), "code": "x"})
    assert expired.status_code == 400 and "expired" in expired.text


def test_state_bound_to_the_browser(app: App) -> None:
    started = app.client.get("/smart/launch", params={"iss": ISS}, follow_redirects=False)
    state = re.search(r"state=([^&]+)", started.headers["location"])
    assert state
    other = TestClient(app.client.app, base_url=BASE)
    refused = other.get("/smart/callback", params={"state": state.group(1), "code": "x"})
    assert refused.status_code == 400 and "another browser" in refused.text


def test_tampered_id_token_is_refused(app: App) -> None:
    app.transport.tamper = True
    done = launch(app)
    assert done.status_code == 401
    assert "could not be verified" in done.text
    assert app.client.get("/smart/review", follow_redirects=False).status_code == 302


def test_logout_needs_csrf(app: App) -> None:
    assert launch(app).status_code == 303
    page = app.client.get("/smart/review")
    refused = app.client.post("/smart/logout", data={"csrf": "wrong"}, headers={"origin": BASE})
    assert refused.status_code == 403
    ok = app.client.post("/smart/logout", data={"csrf": _field(page.text, "csrf")},
                         headers={"origin": BASE})  # fmt: skip
    assert ok.status_code == 200
    assert app.client.get("/smart/review", follow_redirects=False).status_code == 302


def signed_in(client: TestClient) -> bool:
    """The review screen opens (without a session it would redirect to a launch)."""
    return client.get("/smart/review", follow_redirects=False).status_code == 200


def no_sessions(store: Store) -> None:
    """Forget the sessions and launches earlier tests left in the module's store (bounds are
    counted over the table)."""
    with store.session() as session:
        session.execute(delete(WebSessionRow))


def _granting(scope: str | None) -> Callable[[dict[str, Any]], None]:
    """A token response edit: the EHR grants `scope` (None: says nothing of what it granted)."""

    def edit(body: dict[str, Any]) -> None:
        body.pop("scope", None)
        if scope is not None:
            body["scope"] = scope

    return edit


def test_a_grant_without_read_of_what_the_screen_shows_is_refused(app: App) -> None:
    """The screen shows the patient's Observations from our store and reads the transcript
    (DocumentReference, Binary) from the EHR: a grant that does not let the clinician read
    them all makes no session (403, saying what is missing and where to
    register it). patient/ or user/ read in v1 or v2 syntax, wildcards included, does."""
    app.transport.edit = _granting(
        "launch openid fhirUser launch/patient patient/DocumentReference.rs "
        "patient/Observation.rs?category=survey"
    )
    refused = launch(app)
    assert refused.status_code == 403, refused.text
    assert "Observation, Binary" in refused.text and "Nothing was opened" in refused.text
    assert "ehr.dev_ehr.smart_app.scopes" in refused.text
    assert "patient/Observation.rs patient/Binary.rs" in refused.text
    assert "hwf-smart=" not in refused.headers.get("set-cookie", "")
    assert not signed_in(app.client)
    assert app.client.get("/smart/static/review.js").status_code == 401
    for granted in ("openid fhirUser launch/patient user/*.read",
                    "patient/Observation.r user/DocumentReference.read patient/Binary.*",
                    "patient/*.cruds"):  # fmt: skip
        app.transport.edit = _granting(granted)
        assert launch(app).status_code == 303, granted
        assert signed_in(app.client), granted


def test_a_token_response_without_scope_grants_what_was_asked(store: Store) -> None:
    """An EHR may leave `scope` out only when it granted what was asked for: the app's
    scopes then decide (the default ones open the screen; narrower ones are refused, the page
    saying to add the rest to the connection's settings)."""
    with serve(store) as default:
        default.transport.edit = _granting(None)
        assert launch(default).status_code == 303
        assert signed_in(default.client)
    narrow = ["launch", "openid", "fhirUser", "launch/patient", "launch/encounter"]
    with serve(store, scopes=narrow) as app:
        app.transport.edit = _granting(None)
        refused = launch(app)
        assert refused.status_code == 403, refused.text
        assert "Observation, DocumentReference, Binary" in refused.text
        assert ("add patient/Observation.rs patient/DocumentReference.rs patient/Binary.rs to "
                "ehr.dev_ehr.smart_app.scopes") in refused.text  # fmt: skip
        assert not signed_in(app.client)
    # Named in the syntax the connection asks with (here v1).
    told = routes._not_granted("epic", ["Binary"], ["launch", "patient/Task.read"])
    assert "add patient/Binary.read to ehr.epic.smart_app.scopes" in told


def test_a_new_sign_in_ends_the_browsers_previous_session(store: Store) -> None:
    """Each sign-in in one browser ends the session its cookie named: launching again and again
    (a clinician moving from chart to chart) keeps one session, so it does not push another
    clinician's session out at the bound."""
    no_sessions(store)
    with serve(store, max_sessions=2) as app:
        other = TestClient(app.client.app, base_url=BASE)
        assert launch(App(other, app.transport, app.ehr)).status_code == 303
        first = None
        for _ in range(3):
            assert launch(app).status_code == 303
            if first is None:
                first = app.client.cookies["hwf-smart"]
        assert app.client.cookies["hwf-smart"] != first
        assert signed_in(other)  # still signed in
        assert signed_in(app.client)
        stale = TestClient(app.client.app, base_url=BASE, cookies={"hwf-smart": first or ""})
        assert not signed_in(stale)


def test_launches_never_evict_sessions_and_sessions_have_their_own_bound(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Anyone may GET /smart/launch: a flood of launches evicts only pending launches (the
    oldest first), never a signed-in session. Sessions are bounded by `max_sessions`; past it
    the one expiring soonest ends, logged without anything of the clinician or patient."""
    monkeypatch.setattr(routes, "MAX_PENDING_LAUNCHES", 3)
    no_sessions(store)
    with serve(store, max_sessions=2) as app:
        # A session nearer its end than any pending launch: first in line, were they counted
        # together.
        app.transport.edit = lambda body: body.update(expires_in=120)
        assert launch(app).status_code == 303
        app.transport.edit = None
        pending = app.client.get("/smart/launch", params={"iss": ISS}, follow_redirects=False)
        state = re.search(r"state=([^&]+)", pending.headers["location"])
        assert state
        flood = TestClient(app.client.app, base_url=BASE)
        for _ in range(10):
            assert flood.get("/smart/launch", follow_redirects=False).status_code == 302
        assert signed_in(app.client)  # the session stays
        evicted = app.client.get("/smart/callback", params={"state": state.group(1), "code": "x"})
        assert evicted.status_code == 400 and "expired or was already used" in evicted.text
        # Two other browsers sign in: the first session, expiring soonest, makes room.
        caplog.set_level(logging.WARNING, "fhir_adapter.web.sessions")
        for _ in range(2):
            browser = TestClient(app.client.app, base_url=BASE)
            assert launch(App(browser, app.transport, app.ehr)).status_code == 303
            assert signed_in(browser)
        assert not signed_in(app.client)
        logged = [r.getMessage() for r in caplog.records if r.name == "fhir_adapter.web.sessions"]
        ended = "kept at most; ended the 1 expiring soonest for a new one"
        assert f"smart-launch: 3 {ended}" in logged
        assert [m for m in logged if m.startswith("smart-session")] == [f"smart-session: 2 {ended}"]
