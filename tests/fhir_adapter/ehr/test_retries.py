"""Retry and error-mapping logic, with faults injected at the transport (httpx.MockTransport).

These are the cases a real server cannot be made to produce on demand: throttling with
Retry-After, 5xx bursts, timeouts, dropped connections, broken error bodies.
"""

from __future__ import annotations

import asyncio
import base64
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from fhir_adapter.ehr.client import FhirClient
from fhir_adapter.ehr.errors import (
    AuthError,
    FatalFhirError,
    InvalidResponseError,
    TemporaryFhirError,
)
from fhir_adapter.ehr.http import RetryPolicy, parse_retry_after
from fhir_adapter.settings import FhirEndpoint
from fhir_adapter.store.outbox import CLAIM_LEASE

BASE = "https://ehr.example.org/fhir"
NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
PATIENT = {"resourceType": "Patient", "id": "p1", "meta": {"versionId": "1"}}
OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "transient", "diagnostics": "database busy"}],
}

Handler = Callable[[httpx.Request], httpx.Response]


class Script:
    """Answers requests from a list of responses or exceptions, recording what was asked."""

    def __init__(self, *steps: httpx.Response | Exception | Handler) -> None:
        self.steps = list(steps)
        self.requests: list[httpx.Request] = []
        # (method, path, Authorization) as sent: a resent request object is the same one.
        self.sent: list[tuple[str, str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.sent.append(
            (request.method, request.url.path, request.headers.get("Authorization", ""))
        )
        step = self.steps.pop(0)
        if isinstance(step, Exception):
            raise step
        if isinstance(step, httpx.Response):
            return step
        return step(request)


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


class Timeline(Sleeps):
    """Sleeps that move a monotonic clock, as real ones would."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    async def __call__(self, delay: float) -> None:
        await super().__call__(delay)
        self.now += delay

    def monotonic(self) -> float:
        return self.now


def _client(
    script: Script,
    sleeps: Sleeps,
    retry: RetryPolicy | None = None,
    monotonic: Callable[[], float] | None = None,
    **endpoint: Any,
) -> FhirClient:
    return FhirClient(
        FhirEndpoint(base_url=BASE, **endpoint),
        transport=httpx.MockTransport(script),
        sleep=sleeps,
        clock=lambda: NOW,
        monotonic=monotonic or (lambda: 0.0),
        rng=random.Random(7),
        retry=retry or RetryPolicy(max_attempts=4, base_delay_s=1.0, max_delay_s=30.0),
    )


def ok(body: dict[str, Any] = PATIENT, status: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


async def test_429_retry_after_seconds_is_honoured() -> None:
    script = Script(ok(OUTCOME, 429, **{"Retry-After": "7"}), ok())
    sleeps = Sleeps()
    async with _client(script, sleeps) as fhir:
        assert (await fhir.read("Patient", "p1"))["id"] == "p1"
    assert sleeps.delays == [7.0]
    assert len(script.requests) == 2


async def test_429_retry_after_http_date_is_honoured() -> None:
    when = format_datetime(NOW + timedelta(seconds=12), usegmt=True)
    script = Script(ok(OUTCOME, 429, **{"Retry-After": when}), ok())
    sleeps = Sleeps()
    async with _client(script, sleeps) as fhir:
        await fhir.read("Patient", "p1")
    assert sleeps.delays == [12.0]


def test_parse_retry_after() -> None:
    assert parse_retry_after("120", NOW) == 120.0
    assert parse_retry_after("Sat, 01 Mar 2025 12:00:30 GMT", NOW) == 30.0
    assert parse_retry_after("Sat, 01 Mar 2025 11:00:00 GMT", NOW) == 0.0  # in the past
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after(None, NOW) is None


async def test_retry_after_beyond_the_bound_gives_up_at_once() -> None:
    script = Script(ok(OUTCOME, 503, **{"Retry-After": "3600"}))
    sleeps = Sleeps()
    async with _client(script, sleeps) as fhir:
        with pytest.raises(TemporaryFhirError) as info:
            await fhir.read("Patient", "p1")
    assert info.value.retry_after == 3600.0
    assert "over our bound" in str(info.value)
    assert sleeps.delays == []


async def test_5xx_then_success_with_growing_jittered_backoff() -> None:
    script = Script(ok(OUTCOME, 500), ok(OUTCOME, 502), ok(OUTCOME, 504), ok())
    sleeps = Sleeps()
    async with _client(script, sleeps) as fhir:
        assert (await fhir.read("Patient", "p1"))["id"] == "p1"
    assert len(sleeps.delays) == 3
    for retry, delay in enumerate(sleeps.delays, start=1):
        ceiling = 2.0 ** (retry - 1)
        assert ceiling / 2 <= delay <= ceiling  # exponential, jitter in the upper half


async def test_bound_reached_raises_temporary_error_with_the_outcome() -> None:
    script = Script(*(ok(OUTCOME, 503) for _ in range(4)))
    sleeps = Sleeps()
    async with _client(script, sleeps) as fhir:
        with pytest.raises(TemporaryFhirError) as info:
            await fhir.read("Patient", "p1")
    error = info.value
    assert len(script.requests) == 4 and len(sleeps.delays) == 3
    assert error.status == 503
    assert error.outcome is not None and error.outcome.issue[0].diagnostics == "database busy"
    assert str(error) == "GET /fhir/Patient/p1 answered 503: error/transient (4 attempts)"


async def test_outcome_text_stays_out_of_the_error_message() -> None:
    # Messages are logged and stored (outbox last_error); a validation error often repeats
    # the refused value, here a quote of the session.
    said = "she will walk to the park with her sister every morning"
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "invalid",
                "details": {
                    "coding": [{"system": "urn:vendor:msg", "code": "MSG_PARAM_INVALID"}],
                    "text": f"Value '{said}' is too long",
                },
                "diagnostics": f"Task.note[0].text: '{said}' exceeds 200 characters",
                "expression": ["Task.note[0].text"],
            },
            {"severity": "error", "code": "value", "location": [f"Task.note.where(text='{said}')"]},
        ],
    }
    async with _client(Script(ok(outcome, 422)), Sleeps()) as fhir:
        with pytest.raises(FatalFhirError) as info:
            await fhir.create({"resourceType": "Task"})
    assert str(info.value) == (
        "POST /fhir/Task answered 422: error/invalid [MSG_PARAM_INVALID] at Task.note[0].text; "
        "error/value at <withheld>"
    )
    assert "walk" not in str(info.value) and "exceeds" not in str(info.value)
    # The parsed outcome keeps the text for code that needs it; it is not logged.
    assert info.value.outcome is not None and info.value.outcome.issue[0].diagnostics


def test_request_deadline_keeps_a_write_inside_its_outbox_claim() -> None:
    # A chart write is at most 2 requests (pipeline.writeback._write: search or read, then
    # create or update); past CLAIM_LEASE another worker re-claims it and may chart it twice.
    assert 2 * RetryPolicy().deadline_s <= CLAIM_LEASE.total_seconds() / 2


@pytest.mark.parametrize("retry_after", ["120", "50"])
async def test_throttled_forever_gives_up_within_the_request_deadline(retry_after: str) -> None:
    timeline = Timeline()

    def throttled(request: httpx.Request) -> httpx.Response:
        timeline.now += 5.0  # each answer takes 5 s
        return ok(OUTCOME, 429, **{"Retry-After": retry_after})

    policy = RetryPolicy(max_attempts=10)
    script = Script(*(throttled for _ in range(10)))
    async with _client(script, timeline, retry=policy, monotonic=timeline.monotonic) as fhir:
        with pytest.raises(TemporaryFhirError, match="would pass the request's 150s deadline"):
            await fhir.create({"resourceType": "Task"})
    assert timeline.now <= policy.deadline_s
    # One full Retry-After of 120 s is waited for (5 + 120 + 10 <= 150), a second is not; every
    # attempt starts with at least min_attempt_s of the budget left.
    assert len(script.requests) == (2 if retry_after == "120" else 3)


async def test_an_answer_that_never_comes_ends_at_the_deadline() -> None:
    async def hangs(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(3600)
        return ok()

    policy = RetryPolicy(deadline_s=0.05)
    async with FhirClient(
        FhirEndpoint(base_url=BASE), transport=httpx.MockTransport(hangs), retry=policy
    ) as fhir:
        with pytest.raises(
            TemporaryFhirError, match=r"no answer within the request's 0.05s deadline"
        ):
            await asyncio.wait_for(fhir.read("Patient", "p1"), timeout=10)


@pytest.mark.parametrize(
    "fault",
    [
        httpx.ReadTimeout("read timed out"),
        httpx.ConnectTimeout("connect timed out"),
        httpx.ConnectError("connection refused"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadError("connection reset by peer"),
    ],
)
async def test_network_faults_are_retried_for_reads(fault: Exception) -> None:
    script = Script(fault, ok())
    sleeps = Sleeps()
    async with _client(script, sleeps) as fhir:
        assert (await fhir.read("Patient", "p1"))["id"] == "p1"
    assert len(sleeps.delays) == 1


async def test_persistent_timeouts_end_in_temporary_error() -> None:
    script = Script(*(httpx.ReadTimeout("read timed out") for _ in range(4)))
    async with _client(script, Sleeps()) as fhir:
        with pytest.raises(
            TemporaryFhirError, match=r"ReadTimeout: read timed out \(4 attempts\)"
        ) as info:
            await fhir.read("Patient", "p1")
    assert info.value.status is None
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)


async def test_create_is_not_resent_after_a_dropped_connection() -> None:
    # The server may have stored it; resending could chart the note twice.
    script = Script(httpx.RemoteProtocolError("Server disconnected without sending a response."))
    sleeps = Sleeps()
    async with _client(script, sleeps) as fhir:
        with pytest.raises(TemporaryFhirError, match="not resent: it may have been applied"):
            await fhir.create({"resourceType": "Patient"})
    assert len(script.requests) == 1 and sleeps.delays == []


@pytest.mark.parametrize(
    "first",
    [httpx.ConnectError("connection refused"), ok(OUTCOME, 503), ok(OUTCOME, 429)],
)
async def test_create_is_resent_when_the_server_cannot_have_processed_it(
    first: httpx.Response | Exception,
) -> None:
    script = Script(first, ok(PATIENT, 201))
    async with _client(script, Sleeps()) as fhir:
        created = await fhir.create({"resourceType": "Patient"})
    assert created["id"] == "p1"
    assert [r.method for r in script.requests] == ["POST", "POST"]


async def test_create_not_resent_after_500() -> None:
    script = Script(ok(OUTCOME, 500))
    async with _client(script, Sleeps()) as fhir:
        with pytest.raises(TemporaryFhirError):
            await fhir.create({"resourceType": "Patient"})
    assert len(script.requests) == 1


async def test_invalid_operation_outcome_body_still_gives_a_typed_error() -> None:
    broken = {"resourceType": "OperationOutcome", "issue": [{"severity": "bogus"}]}
    script = Script(ok(broken, 422))
    async with _client(script, Sleeps()) as fhir:
        with pytest.raises(FatalFhirError) as info:
            await fhir.create({"resourceType": "Patient"})
    assert info.value.status == 422
    assert info.value.outcome is None
    assert "with a body that is not an OperationOutcome (application/json)" in str(info.value)


async def test_html_error_page_gives_a_typed_error_without_echoing_it() -> None:
    page = httpx.Response(
        400, text="<html>Bad gateway login page</html>", headers={"Content-Type": "text/html"}
    )
    script = Script(page)
    async with _client(script, Sleeps()) as fhir:
        with pytest.raises(FatalFhirError) as info:
            await fhir.read("Patient", "p1")
    assert "not an OperationOutcome (text/html)" in str(info.value)
    assert "login page" not in str(info.value)


async def test_non_json_success_is_an_invalid_response() -> None:
    script = Script(
        httpx.Response(200, text="<html>maintenance</html>", headers={"Content-Type": "text/html"})
    )
    async with _client(script, Sleeps()) as fhir:
        with pytest.raises(InvalidResponseError, match="not JSON"):
            await fhir.read("Patient", "p1")


async def test_create_with_empty_201_uses_location_and_etag() -> None:
    # Epic and Oracle Health may answer a create with headers only.
    created = httpx.Response(
        201, headers={"Location": f"{BASE}/Provenance/pv9/_history/3", "ETag": 'W/"3"'}
    )
    script = Script(created)
    async with _client(script, Sleeps()) as fhir:
        stored = await fhir.create(
            {"resourceType": "Provenance", "recorded": "2025-03-01T12:00:00Z"}
        )
    assert stored["id"] == "pv9" and stored["meta"]["versionId"] == "3"
    assert script.requests[0].headers["Prefer"] == "return=representation"


async def test_create_answered_with_an_outcome_uses_location() -> None:
    info = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "information", "code": "informational"}],
    }
    created = httpx.Response(201, json=info, headers={"Location": f"{BASE}/Communication/c1"})
    async with _client(Script(created), Sleeps()) as fhir:
        stored = await fhir.create({"resourceType": "Communication", "status": "completed"})
    assert stored["id"] == "c1" and "meta" not in stored


async def test_create_without_body_or_location_is_an_invalid_response() -> None:
    async with _client(Script(httpx.Response(201)), Sleeps()) as fhir:
        with pytest.raises(InvalidResponseError, match="cannot tell which resource was written"):
            await fhir.create({"resourceType": "Communication", "status": "completed"})


async def test_next_link_to_another_host_is_refused() -> None:
    page = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": PATIENT, "search": {"mode": "match"}}],
        "link": [{"relation": "next", "url": "https://evil.example.com/fhir/Patient?page=2"}],
    }
    script = Script(ok(page))
    async with _client(script, Sleeps()) as fhir:
        seen = []
        with pytest.raises(
            FatalFhirError, match=r"refusing to send our token to https://evil\.example\.com"
        ):
            async for patient in fhir.search("Patient"):
                seen.append(patient)
    assert [p["id"] for p in seen] == ["p1"]


async def test_search_skips_includes_and_outcomes_and_stops_on_a_loop() -> None:
    page1 = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": PATIENT, "search": {"mode": "match"}},
            {
                "resource": {"resourceType": "Organization", "id": "o1"},
                "search": {"mode": "include"},
            },
            {"resource": OUTCOME, "search": {"mode": "outcome"}},
        ],
        "link": [{"relation": "next", "url": f"{BASE}/Patient?page=2"}],
    }
    page2 = {**page1, "link": [{"relation": "next", "url": f"{BASE}/Patient?page=2"}]}
    script = Script(ok(page1), ok(page2))
    async with _client(script, Sleeps()) as fhir:
        seen = []
        with pytest.raises(InvalidResponseError, match="links back to a page already read"):
            async for patient in fhir.search("Patient", [("name", "x")]):
                seen.append(patient["id"])
    assert seen == ["p1", "p1"]
    first = script.requests[0].url
    assert first.path == "/fhir/Patient"
    assert first.params.multi_items() == [("name", "x"), ("_count", "50")]
    assert script.requests[1].url.params["page"] == "2"


# ------------------------------------------------------------ auth flow against fakes


def _secret_endpoint(**auth: Any) -> dict[str, Any]:
    return {
        "auth": {
            "type": "client-secret",
            "client_id": "app id",
            "client_secret": "s3cr:et",
            "scopes": "system/Patient.rs",
            **auth,
        }
    }


def _token(value: str, expires_in: int = 300) -> httpx.Response:
    return ok({"access_token": value, "token_type": "Bearer", "expires_in": expires_in})


DISCOVERY = ok({"token_endpoint": "https://auth.example.org/token"})


async def test_401_twice_is_an_auth_error_after_exactly_one_reauth() -> None:
    script = Script(DISCOVERY, _token("t1"), ok(OUTCOME, 401), _token("t2"), ok(OUTCOME, 401))
    async with _client(script, Sleeps(), **_secret_endpoint()) as fhir:
        with pytest.raises(AuthError, match="the server refused our credentials"):
            await fhir.read("Patient", "p1")
    sent = script.sent
    assert sent == [
        ("GET", "/fhir/.well-known/smart-configuration", ""),
        ("POST", "/token", sent[1][2]),
        ("GET", "/fhir/Patient/p1", "Bearer t1"),
        ("POST", "/token", sent[1][2]),
        ("GET", "/fhir/Patient/p1", "Bearer t2"),
    ]
    # client_secret_basic with RFC 6749 form-encoding of id and secret.
    assert sent[1][2] == "Basic " + base64.b64encode(b"app+id:s3cr%3Aet").decode()
    form = dict(httpx.QueryParams(script.requests[1].content.decode()))
    assert form == {"grant_type": "client_credentials", "scope": "system/Patient.rs"}


async def test_token_endpoint_503_is_retried_like_any_request() -> None:
    script = Script(ok(OUTCOME, 503), _token("t1"), ok())
    sleeps = Sleeps()
    endpoint = _secret_endpoint(token_endpoint="https://auth.example.org/token")
    async with _client(script, sleeps, **endpoint) as fhir:
        assert (await fhir.read("Patient", "p1"))["id"] == "p1"
    assert len(sleeps.delays) == 1
    assert script.sent[-1] == ("GET", "/fhir/Patient/p1", "Bearer t1")


async def test_discovery_without_token_endpoint_says_what_to_set() -> None:
    script = Script(ok({"capabilities": []}))
    async with _client(script, Sleeps(), **_secret_endpoint()) as fhir:
        with pytest.raises(AuthError, match=r"set auth\.token_endpoint for this connection"):
            await fhir.read("Patient", "p1")


async def test_token_without_expires_in_assumes_five_minutes() -> None:
    script = Script(ok({"access_token": "t1", "token_type": "bearer"}), ok())
    endpoint = _secret_endpoint(token_endpoint="https://auth.example.org/token")
    async with _client(script, Sleeps(), **endpoint) as fhir:
        await fhir.read("Patient", "p1")
        token = fhir.auth.token  # type: ignore[attr-defined]
    assert token.expires_at == NOW + timedelta(minutes=5)
    assert token.refresh_at == NOW + timedelta(minutes=4)


async def test_non_bearer_token_is_refused() -> None:
    script = Script(ok({"access_token": "t1", "token_type": "mac", "expires_in": 60}))
    endpoint = _secret_endpoint(token_endpoint="https://auth.example.org/token")
    async with _client(script, Sleeps(), **endpoint) as fhir:
        with pytest.raises(AuthError, match="only bearer tokens are supported"):
            await fhir.read("Patient", "p1")
