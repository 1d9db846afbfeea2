"""HTTP with bounded retries, and HTTP failures turned into typed `FhirError`s.

What is retried, with exponential backoff and jitter, honouring `Retry-After`:
- 408, 429, 500, 502, 503, 504 responses;
- timeouts and network errors (refused or dropped connections, a server that closes the
  connection without answering);
- a token endpoint that answers 429/5xx (the auth flow raises TemporaryFhirError).

A request that may have changed the server (POST) is resent only when the server cannot
have processed it: the connection never opened, or it answered 429/503. After a dropped
connection or a read timeout a create may or may not have happened; resending could chart
the same note twice, so we raise TemporaryFhirError and let the caller's idempotency check
(search by our identifier) decide on the next run.

A request, all its attempts and waits together, ends within `RetryPolicy.deadline_s`: a wait
that would pass it is not waited for (TemporaryFhirError, the caller retries later).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from fhir_adapter.ehr.errors import (
    AuthError,
    FatalFhirError,
    FhirError,
    InvalidResponseError,
    NotFoundError,
    TemporaryFhirError,
    VersionConflictError,
    outcome_summary,
    parse_operation_outcome,
)

__all__ = [
    "HttpResult",
    "RetryPolicy",
    "Sleep",
    "error_for_status",
    "parse_retry_after",
    "send_with_retries",
]

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Statuses that promise the request was not acted on, so even a POST may be resent.
NOT_PROCESSED_STATUSES = frozenset({429, 503})
# Failures before the request left us: safe to resend whatever the method.
NOT_SENT_ERRORS: tuple[type[Exception], ...] = (httpx.ConnectError, httpx.ConnectTimeout,
                                                httpx.PoolTimeout)  # fmt: skip
# Failures after it may have arrived.
MAYBE_SENT_ERRORS: tuple[type[Exception], ...] = (httpx.TimeoutException, httpx.NetworkError,
                                                  httpx.RemoteProtocolError)  # fmt: skip
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try before giving up with TemporaryFhirError.

    4 attempts with delays of about 1, 2, 4 s ride out a restart blip or a short throttling
    window; more would hold a worker (and a connection to a busy EHR) for minutes, while the
    poller's next run picks up whatever failed anyway. A `Retry-After` longer than
    `max_retry_after_s` is not waited for: we give up at once and pass it on.

    `deadline_s` bounds one request, attempts and waits together. A write holds its outbox
    row for `store.outbox.CLAIM_LEASE` (10 min) and makes at most 2 requests (search by
    identifier, or read, then create or update: `pipeline.writeback`), so 2 x 150 s stays within
    half the lease; past the lease another worker would take the row, search before our create
    landed, and chart a duplicate (tests/fhir_adapter/ehr/test_retries.py checks the bound).
    The deadline leaves room for one full `Retry-After` wait; a retry that would start with less
    than `min_attempt_s` left is not made (a POST cut off at once would only leave a write that
    may or may not have landed).
    """

    max_attempts: int = 4
    base_delay_s: float = 1.0
    max_delay_s: float = 30.0
    max_retry_after_s: float = 120.0
    deadline_s: float = 150.0
    min_attempt_s: float = 10.0

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Delay before retry number `retry` (1-based): exponential, half of it jittered."""
        ceiling = min(self.max_delay_s, self.base_delay_s * float(2 ** (retry - 1)))
        # Jitter so that workers throttled together do not come back together.
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


@dataclass(frozen=True)
class HttpResult:
    """A response with its body read (bounded)."""

    status: int
    headers: httpx.Headers
    content: bytes
    url: httpx.URL

    def json(self) -> Any:
        return json.loads(self.content)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a `Retry-After` header: delay-seconds or an HTTP-date."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP-date is always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _json_body(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return None


def error_for_status(
    method: str,
    url: httpx.URL,
    status: int,
    content: bytes,
    content_type: str | None,
    retry_after: float | None = None,
) -> FhirError:
    """The typed error for an HTTP error status, with its OperationOutcome if it sent one."""
    outcome = parse_operation_outcome(_json_body(content))
    what = f"{method} {url.path} answered {status}"
    if outcome is not None:
        what += f": {outcome_summary(outcome)}"
    elif content:
        # A proxy's HTML page or a malformed OperationOutcome: say so, never echo it.
        what += f" with a body that is not an OperationOutcome ({content_type or 'no type'})"
    if status == 401:
        return AuthError(
            f"{what}; the server refused our credentials (a token is fetched anew once before "
            "this): check the connection's auth settings and the client's registration",
            status=status,
            outcome=outcome,
        )
    if status in RETRY_STATUSES:
        return TemporaryFhirError(what, status=status, outcome=outcome, retry_after=retry_after)
    if status in (404, 410):
        return NotFoundError(what, status=status, outcome=outcome)
    if status in (409, 412):
        return VersionConflictError(
            f"{what}; read the resource again and re-apply the change",
            status=status,
            outcome=outcome,
        )
    if status == 403:
        what += "; the token's scopes or the app's registration do not allow this"
    return FatalFhirError(what, status=status, outcome=outcome)


async def _read_bounded(response: httpx.Response, max_bytes: int) -> bytes:
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise InvalidResponseError(
            f"{response.request.method} {response.url.path}: body of {declared} bytes is over "
            f"the {max_bytes}-byte limit",
            status=response.status_code,
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise InvalidResponseError(
                f"{response.request.method} {response.url.path}: body over the "
                f"{max_bytes}-byte limit",
                status=response.status_code,
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def send_with_retries(
    http: httpx.AsyncClient,
    request: httpx.Request,
    *,
    auth: httpx.Auth,
    policy: RetryPolicy,
    max_bytes: int,
    sleep: Sleep = asyncio.sleep,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    monotonic: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
) -> HttpResult:
    """Send `request`, retrying what is safe to retry; raise a FhirError for any failure."""
    rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
    method = request.method
    path = request.url.path
    idempotent = method in IDEMPOTENT_METHODS
    deadline = monotonic() + policy.deadline_s
    for attempt in range(1, policy.max_attempts + 1):
        last = attempt == policy.max_attempts
        retry_after: float | None = None
        try:
            # httpx's timeouts are per read, so a slow trickle (or a token fetch, which runs
            # inside `send`) could outlast the deadline without this.
            async with asyncio.timeout(max(0.0, deadline - monotonic())):
                response = await http.send(request, auth=auth, stream=True)
                try:
                    content = await _read_bounded(response, max_bytes)
                finally:
                    await response.aclose()
        except TimeoutError as exc:  # ours (asyncio.timeout); httpx's are not TimeoutError
            tried = f"{attempt} attempts" if idempotent else "it may have been applied"
            raise TemporaryFhirError(
                f"{method} {path}: no answer within the request's {policy.deadline_s:g}s "
                f"deadline ({tried})"
            ) from exc
        except NOT_SENT_ERRORS as exc:
            reason = f"{type(exc).__name__}: {exc}"
            if last:
                raise TemporaryFhirError(f"{method} {path}: {reason} ({attempt} attempts)") from exc
            failure = TemporaryFhirError(f"{method} {path}: {reason}")
            failure.__cause__ = exc
        except MAYBE_SENT_ERRORS as exc:
            reason = f"{type(exc).__name__}: {exc}"
            if last or not idempotent:
                tried = (
                    f"{attempt} attempts" if idempotent else "not resent: it may have been applied"
                )
                raise TemporaryFhirError(f"{method} {path}: {reason} ({tried})") from exc
            failure = TemporaryFhirError(f"{method} {path}: {reason}")
            failure.__cause__ = exc
        except TemporaryFhirError as exc:  # from the auth flow: token endpoint 429/5xx
            reason = str(exc)
            retry_after = exc.retry_after
            if last:
                raise
            failure = exc
        else:
            status = response.status_code
            if status < 400:
                return HttpResult(status, response.headers, content, response.url)
            retry_after = parse_retry_after(response.headers.get("Retry-After"), clock())
            error = error_for_status(
                method, response.url, status, content, response.headers.get("Content-Type"),
                retry_after,
            )  # fmt: skip
            resendable = idempotent or status in NOT_PROCESSED_STATUSES
            if not isinstance(error, TemporaryFhirError) or not resendable:
                raise error
            if last:
                error.message += f" ({attempt} attempts)"
                raise error
            if retry_after is not None and retry_after > policy.max_retry_after_s:
                error.message += f"; asked to retry after {retry_after:.0f}s, over our bound"
                raise error
            reason = f"status {status}"
            failure = error
        delay = retry_after if retry_after is not None else policy.backoff(attempt, rng)
        if monotonic() + delay + policy.min_attempt_s > deadline:
            # Give up now rather than wake up past the deadline; the caller retries later.
            failure.message += (
                f"; a retry in {delay:.0f}s would pass the request's {policy.deadline_s:g}s "
                f"deadline ({attempt} attempts)"
            )
            raise failure
        log.warning(
            "%s %s: %s; retry %d of %d in %.1fs",
            method, path, reason, attempt, policy.max_attempts - 1, delay,
        )  # fmt: skip
        await sleep(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")
