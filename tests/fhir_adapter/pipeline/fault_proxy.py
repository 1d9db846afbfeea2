"""An HTTP proxy on loopback that stands in front of the FHIR server and misbehaves on cue.

The pipeline's real client (httpx, retries, auth flow) talks to the proxy's base URL; the proxy
forwards to sekmet unless a rule says otherwise. Rules match method and a path suffix and
carry a queue of faults, one consumed per matching request (a path matches when it contains
the rule's path fragment, e.g. "/DocumentReference" or "/Task/"):

    status(429, retry_after=1)       answer 429 (or any status) with a body, never forward
    drop()                           close the connection without answering, never forward
    delay(3.0)                       wait, then forward (a client with a shorter read timeout
                                     gives up first: a timeout)
    forward_then_drop()              forward (the server acts on it), then close without
                                     answering: the client cannot know it worked
    forward_then_body(201, b"...")   forward, then answer with this status and body instead
    forward_then_hang(event)         forward, set `event`, then hold the connection open
                                     until released: a process killed mid-write

Token requests do not pass through the proxy: sekmet's smart-configuration names its own token
endpoint. The proxy rewrites sekmet's base URL to its own in bodies and Location headers, so
the client's same-origin rule holds for `next` links.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length",
                        "content-encoding", "host", "proxy-connection", "upgrade"})  # fmt: skip


@dataclass
class Fault:
    kind: str
    status: int = 500
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    event: threading.Event | None = None
    # forward-then-hang: the client's (host, port), set before `event`, to find its process
    peer: tuple[str, int] | None = None


def status(code: int, body: bytes = b"", retry_after: float | None = None,
           content_type: str = "application/fhir+json") -> Fault:  # fmt: skip
    headers = {"Content-Type": content_type}
    if retry_after is not None:
        headers["Retry-After"] = str(int(retry_after))
    return Fault("status", code, body, headers)


def drop() -> Fault:
    return Fault("drop")


def delay(seconds: float) -> Fault:
    return Fault("delay", delay_s=seconds)


def forward_then_drop() -> Fault:
    return Fault("forward-then-drop")


def forward_then_body(code: int, body: bytes, content_type: str = "text/html") -> Fault:
    return Fault("forward-then-body", code, body, {"Content-Type": content_type})


def forward_then_hang(event: threading.Event) -> Fault:
    return Fault("forward-then-hang", event=event)


@dataclass
class Rule:
    method: str
    path_part: str
    faults: deque[Fault]
    query_part: str = ""  # and, where set, a query string containing it


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: str  # the query string, "" when none
    fault: str | None  # the fault applied, None when forwarded as is
    status: int | None  # what the client got (None: no answer)
    at: float  # time.monotonic() when the request came in


class FaultProxy:
    """The proxy; `base_url` replaces the FHIR server's base in the connection settings."""

    def __init__(self, upstream_root: str, upstream_base: str) -> None:
        self.upstream_root = upstream_root.rstrip("/")
        self.upstream_base = upstream_base.rstrip("/")
        self._rules: list[Rule] = []
        self._lock = threading.Lock()
        self.seen: list[Seen] = []
        self._release = threading.Event()
        self._http = httpx.Client(timeout=60)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _handle(self) -> None:
                proxy._serve(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        port = self._server.server_address[1]
        self.root_url = f"http://127.0.0.1:{port}"
        path = httpx.URL(self.upstream_base).path
        self.base_url = f"{self.root_url}{path}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # -- plan

    def add(self, method: str, path_part: str, *faults: Fault, query: str = "") -> None:
        """Apply `faults`, one per request, to `method` requests whose path contains
        `path_part` (and whose query string contains `query`: e.g. "encounter=" picks a
        session's transcript search, not the poll's); later requests are forwarded as they
        are."""
        with self._lock:
            self._rules.append(Rule(method.upper(), path_part, deque(faults), query))

    def remaining(self) -> int:
        with self._lock:
            return sum(len(r.faults) for r in self._rules)

    def faults_applied(self, kind: str | None = None) -> list[Seen]:
        return [s for s in self.seen if s.fault is not None and (kind is None or s.fault == kind)]

    def release(self) -> None:
        """Let requests held by `forward_then_hang` go (their connections are then closed)."""
        self._release.set()

    def _take(self, method: str, path: str, query: str) -> Fault | None:
        with self._lock:
            for rule in self._rules:
                if (rule.method == method and rule.path_part in path
                        and rule.query_part in query and rule.faults):  # fmt: skip
                    return rule.faults.popleft()
        return None

    # -- serving

    def _record(
        self, method: str, target: str, fault: Fault | None, code: int | None, at: float
    ) -> None:
        path, _, query = target.partition("?")
        with self._lock:
            self.seen.append(Seen(method, path, query, fault.kind if fault else None, code, at))

    def history(self, method: str, path_part: str, query: str = "") -> list[Seen]:
        """The requests seen so far for `method` on paths containing `path_part` (and
        queries containing `query`), in the order they came in."""
        with self._lock:
            found = [
                s for s in self.seen
                if s.method == method and path_part in s.path and query in s.query
            ]  # fmt: skip
        return sorted(found, key=lambda s: s.at)

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        at = time.monotonic()
        method = handler.command
        path, _, query = handler.path.partition("?")
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        fault = self._take(method, path, query)
        if fault is not None and fault.kind == "status":
            self._record(method, handler.path, fault, fault.status, at)
            self._answer(handler, fault.status, fault.headers, fault.body)
            return
        if fault is not None and fault.kind == "drop":
            self._record(method, handler.path, fault, None, at)
            self._drop(handler)
            return
        if fault is not None and fault.kind == "delay":
            self._release.wait(fault.delay_s)
        response = self._forward(handler, method, body)
        if fault is not None and fault.kind == "forward-then-drop":
            self._record(method, handler.path, fault, None, at)
            self._drop(handler)
            return
        if fault is not None and fault.kind == "forward-then-hang":
            self._record(method, handler.path, fault, None, at)
            assert fault.event is not None
            fault.peer = handler.client_address[:2]
            fault.event.set()
            self._release.wait(120)
            self._drop(handler)
            return
        if fault is not None and fault.kind == "forward-then-body":
            self._record(method, handler.path, fault, fault.status, at)
            self._answer(handler, fault.status, fault.headers, fault.body)
            return
        self._record(method, handler.path, fault, response.status_code, at)
        headers = {
            k: v.replace(self.upstream_root, self.root_url)
            for k, v in response.headers.items()
            if k.lower() not in HOP_BY_HOP
        }
        content = response.content.replace(self.upstream_root.encode(), self.root_url.encode())
        self._answer(handler, response.status_code, headers, content)

    def _forward(self, handler: BaseHTTPRequestHandler, method: str, body: bytes) -> httpx.Response:
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP}
        return self._http.request(
            method, f"{self.upstream_root}{handler.path}", headers=headers, content=body
        )

    @staticmethod
    def _answer(
        handler: BaseHTTPRequestHandler, code: int, headers: dict[str, str], body: bytes
    ) -> None:
        handler.send_response(code)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
        handler.wfile.flush()

    @staticmethod
    def _drop(handler: BaseHTTPRequestHandler) -> None:
        handler.close_connection = True
        with suppress(OSError):  # the client may have gone already
            handler.connection.shutdown(socket.SHUT_RDWR)

    # -- lifecycle

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._http.close()


@contextmanager
def fault_proxy(upstream_root: str, upstream_base: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream_root, upstream_base).start()
    try:
        yield proxy
    finally:
        proxy.stop()
