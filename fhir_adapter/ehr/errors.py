"""Errors raised while talking to an EHR or FHIR store.

    FhirError                        anything that went wrong talking to a FHIR server
    ├── FatalFhirError               the server refused the request; sending it again won't help
    │   ├── NotFoundError            404 / 410
    │   ├── VersionConflictError     409 / 412: If-Match did not match the current version
    │   ├── AmbiguousMatchError      an identifier search that must find at most one found several
    │   ├── InvalidResponseError     a 2xx whose body is not the FHIR JSON we asked for
    │   ├── PageLimitError           a search had more pages than the configured bound
    │   └── VendorRuleError          the resource breaks a documented vendor rule; not sent
    ├── TemporaryFhirError           429 / 408 / 5xx / network errors / timeouts, after the
    │                                bounded retries; try again later (`retry_after` if known)
    ├── AuthError                    no token: discovery or token endpoint refused us, a key
    │                                cannot be used, or a request was still 401 after re-auth
    └── CapabilityError              configured write targets the server (or vendor) refuses

Every error carries the HTTP `status` (None for network errors) and, when the server sent
one, its `OperationOutcome` parsed into a fhir.resources R4B model. Messages name the method,
the path (never the query, which may hold identifiers) and what to do next; they never
include resource bodies or any server text (an outcome's `diagnostics`, a non-JSON body),
only its codes and paths: they are logged and stored.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from fhir.resources.R4B.operationoutcome import OperationOutcome
from pydantic import ValidationError

__all__ = [
    "AmbiguousMatchError",
    "AuthError",
    "CapabilityError",
    "FatalFhirError",
    "FhirError",
    "InvalidResponseError",
    "NotFoundError",
    "PageLimitError",
    "TemporaryFhirError",
    "VendorRuleError",
    "VersionConflictError",
    "outcome_summary",
    "parse_operation_outcome",
]


class FhirError(Exception):
    """Base class. `status` is the HTTP status (None when no response came back)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        outcome: OperationOutcome | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.outcome = outcome

    def __str__(self) -> str:
        return self.message


class FatalFhirError(FhirError):
    """The server refused the request (4xx other than 401/408/429, 501, ...); don't retry it."""


class NotFoundError(FatalFhirError):
    """The resource does not exist (404) or was deleted (410)."""


class VersionConflictError(FatalFhirError):
    """The resource changed since we read it (412 on If-Match, or 409): read it again, re-apply."""


class AmbiguousMatchError(FatalFhirError):
    """An identifier that should be unique matched several resources."""


class InvalidResponseError(FatalFhirError):
    """A successful status with a body that is not the FHIR JSON we expected."""


class PageLimitError(FatalFhirError):
    """A search returned more pages than `max_pages`; the results seen so far are incomplete."""


class VendorRuleError(FatalFhirError):
    """The request breaks a rule of the configured vendor profile and was not sent."""


class TemporaryFhirError(FhirError):
    """Throttled, server error, or network failure, still failing after the bounded retries.

    `retry_after` is the delay in seconds the server asked for, when it said.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        outcome: OperationOutcome | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, outcome=outcome)
        self.retry_after = retry_after


class AuthError(FhirError):
    """We could not authenticate: fix the client registration, key, scopes or token endpoint."""


class CapabilityError(FhirError):
    """Configured write targets that the server or its vendor profile refuses.

    `problems` holds one line per refused target, each naming the setting to change.
    """

    def __init__(self, connection: str, problems: Sequence[str]) -> None:
        self.connection = connection
        self.problems = tuple(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"EHR connection {connection!r}: {len(self.problems)} configured target(s) "
            f"cannot work against this server:\n{lines}"
        )


def parse_operation_outcome(body: Any) -> OperationOutcome | None:
    """The OperationOutcome in an error body, or None when there is none or it is malformed."""
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return None
    try:
        return OperationOutcome.model_validate(body)
    except ValidationError:
        return None


def outcome_summary(outcome: OperationOutcome | None, limit: int = 3) -> str:
    """'severity/code [detail codes] at paths' for the first issues: codes and paths only.

    Never `diagnostics` or `details.text`: they are free text, and a server's validation error
    often repeats the value it refused, which in our writes may quote the session. These
    messages are logged and stored (the outbox's `last_error`).
    """
    if outcome is None or not outcome.issue:
        return ""
    parts = []
    for issue in outcome.issue[:limit]:
        part = f"{_token(issue.severity)}/{_token(issue.code)}"
        codings = (issue.details.coding if issue.details else None) or []
        codes = [_token(c.code) for c in codings if c.code]
        if codes:
            part += f" [{', '.join(codes)}]"
        paths = [_token(p) for p in (issue.expression or issue.location or [])]
        if paths:
            part += f" at {', '.join(paths)}"
        parts.append(part)
    more = len(outcome.issue) - limit
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)


# A code or a FHIRPath as servers write them: short, no spaces, no quotes. Anything else may
# carry a value (a path with a quoted literal, a "code" that is a sentence) and is withheld.
_TOKEN = re.compile(r"[^\s'\"]{1,128}")


def _token(value: str | None) -> str:
    return value if value is not None and _TOKEN.fullmatch(value) else "<withheld>"
