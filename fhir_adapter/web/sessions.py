"""Browser sessions for the dashboard: server-side, bounded, expiring with the token.

The login form takes a bearer token; once verified, the browser gets a random session id in
an HttpOnly, SameSite=Strict cookie, and the token itself is dropped (the session keeps the
subject and the token's expiry, nothing a stolen cookie could replay elsewhere). Sessions live
in this process's memory, keyed by a hash of the id: at most `max_sessions`, each ending no
later than its token's `exp`. A restart (or a second process) logs everyone out, which is the
safe failure.

CSRF: the logout form carries the session's own token (synchronizer token); the login form,
made before there is a session, carries a random value that must equal its HttpOnly,
SameSite=Strict cookie (double submit). Both POSTs also refuse an `Origin` other than our own.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

# What one process keeps at most; the session expiring soonest makes room for a new one.
MAX_SESSIONS = 1000
# Hosts where plain http is the development set-up: the cookie cannot be Secure there.
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


class Expiring(Protocol):
    @property
    def expires(self) -> float: ...  # epoch seconds


S = TypeVar("S", bound=Expiring)
SameSite = Literal["strict", "lax"]


@dataclass(frozen=True)
class WebSession:
    subject: str
    expires: float  # epoch seconds: the token's exp
    csrf: str


@dataclass(frozen=True)
class CookiePolicy:
    """Cookie names and attributes for one request's origin: `__Host-` names and Secure over
    https (or any non-loopback host, e.g. behind a TLS proxy); plain names only for http on
    the loopback interface, where a browser would not send a Secure cookie back."""

    secure: bool

    @staticmethod
    def of(request: Request) -> CookiePolicy:
        insecure = request.url.scheme == "http" and (request.url.hostname or "") in LOOPBACK
        return CookiePolicy(secure=not insecure)

    @property
    def session(self) -> str:
        return "__Host-hwf-session" if self.secure else "hwf-session"

    @property
    def login_csrf(self) -> str:
        return self.name("hwf-login-csrf")

    def name(self, base: str) -> str:
        """`base` as this origin's cookie name (`__Host-` prefixed when Secure)."""
        return f"__Host-{base}" if self.secure else base

    def set(
        self,
        response: Response,
        name: str,
        value: str,
        max_age: int,
        samesite: SameSite = "strict",
    ) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/",
            secure=self.secure,
            httponly=True,
            samesite=samesite,
        )

    def clear(self, response: Response, name: str, samesite: SameSite = "strict") -> None:
        response.delete_cookie(name, path="/", secure=self.secure, httponly=True, samesite=samesite)


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class ExpiringStore(Generic[S]):
    """Values by a random id, in memory, each gone at its `expires`; thread-safe (sync routes
    run on a thread pool). Only a hash of each id is kept."""

    def __init__(self, max_sessions: int = MAX_SESSIONS) -> None:
        self._max = max_sessions
        self._sessions: dict[str, S] = {}
        self._lock = threading.Lock()

    def put(self, made: S, session_id: str | None = None) -> str:
        """Keep `made` until its expiry; returns its id (random unless given)."""
        session_id = session_id or new_token()
        now = time.time()
        with self._lock:
            for key in [k for k, s in self._sessions.items() if s.expires <= now]:
                del self._sessions[key]
            while len(self._sessions) >= self._max:
                soonest = min(self._sessions, key=lambda k: self._sessions[k].expires)
                del self._sessions[soonest]
            self._sessions[_key(session_id)] = made
        return session_id

    def get(self, session_id: str | None) -> S | None:
        if not session_id:
            return None
        key = _key(session_id)
        with self._lock:
            found = self._sessions.get(key)
            if found is not None and found.expires <= time.time():
                del self._sessions[key]
                return None
        return found

    def take(self, session_id: str | None) -> S | None:
        """The value under `session_id`, removed: a second take finds nothing (single use)."""
        if not session_id:
            return None
        with self._lock:
            found = self._sessions.pop(_key(session_id), None)
        if found is not None and found.expires <= time.time():
            return None
        return found

    def end(self, session_id: str | None) -> None:
        if session_id:
            with self._lock:
                self._sessions.pop(_key(session_id), None)

    def __len__(self) -> int:
        return len(self._sessions)


class SessionStore(ExpiringStore[WebSession]):
    """The dashboard's sessions."""

    def start(self, subject: str, expires: float) -> tuple[str, WebSession]:
        """A new session ending at `expires`; returns its id (for the cookie) and itself."""
        made = WebSession(subject=subject, expires=expires, csrf=new_token())
        return self.put(made), made


def new_token() -> str:
    """A random value for a session id or a CSRF token (256 bits)."""
    return secrets.token_urlsafe(32)


def same_value(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison of two CSRF values; False when either is missing."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def same_origin(request: Request) -> bool:
    """The request's `Origin`, when the browser sent one, names this server's host.

    The host alone is compared: behind a TLS proxy the browser says https while this process
    sees http. An opaque origin ("null") is refused.
    """
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = urlsplit(origin).netloc
    return bool(host) and host == request.headers.get("host")
