"""Request limits, applied before any route runs: body size and NUL bytes.

An ASGI middleware, so a refused request costs no parsing: a declared `Content-Length` over the
limit is answered 413 at once, without reading a byte of the body; a body sent without a length
(chunked) is counted while the route reads it, and reading stops at the limit. A NUL byte in
the path or the query string is a 400 here, before a database (PostgreSQL refuses NUL in text)
ever sees it.
"""

from __future__ import annotations

import json
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhir_adapter.api.outcome import ApiError, operation_outcome

FHIR_JSON = "application/fhir+json"
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            "too-costly",
            f"request body over the limit of {limit} bytes (api.max_body_bytes); split the "
            "Bundle into smaller ones",
        )


async def _answer(send: Send, status: int, code: str, diagnostics: str) -> None:
    body = json.dumps(operation_outcome(code, diagnostics)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", FHIR_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
                # The unread body is not drained: the client must open a new connection.
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestLimits:
    """Refuses oversized bodies (413) and NUL bytes in the URL (400) as OperationOutcomes."""

    def __init__(self, app: ASGIApp, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_path = scope.get("raw_path") or scope["path"].encode()
        if b"\x00" in unquote_to_bytes(raw_path) or b"\x00" in unquote_to_bytes(
            scope.get("query_string", b"")
        ):
            await _answer(send, 400, "invalid", "NUL bytes are not allowed in a URL")
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _answer(send, 400, "invalid", "Content-Length is not a number")
                return
            if length > self.max_body_bytes:
                too_large = BodyTooLarge(self.max_body_bytes)
                await _answer(send, 413, too_large.code, too_large.diagnostics)
                return
        limit, seen = self.max_body_bytes, 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)  # answered by the app's ApiError handler
            return message

        await self.app(scope, counted, send)
