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
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

# What one process keeps at most; the session expiring soonest makes room for a new one.
MAX_SESSIONS = 1000
# Hosts where plain http is the development set-up: the cookie cannot be Secure there.
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


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
        return "__Host-hwf-login-csrf" if self.secure else "hwf-login-csrf"

    def set(self, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/",
            secure=self.secure,
            httponly=True,
            samesite="strict",
        )

    def clear(self, response: Response, name: str) -> None:
        response.delete_cookie(name, path="/", secure=self.secure, httponly=True, samesite="strict")


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class SessionStore:
    """Sessions by id, in memory; thread-safe (sync routes run on a thread pool)."""

    def __init__(self, max_sessions: int = MAX_SESSIONS) -> None:
        self._max = max_sessions
        self._sessions: dict[str, WebSession] = {}
        self._lock = threading.Lock()

    def start(self, subject: str, expires: float) -> tuple[str, WebSession]:
        """A new session ending at `expires`; returns its id (for the cookie) and itself."""
        session_id = new_token()
        made = WebSession(subject=subject, expires=expires, csrf=new_token())
        now = time.time()
        with self._lock:
            for key in [k for k, s in self._sessions.items() if s.expires <= now]:
                del self._sessions[key]
            while len(self._sessions) >= self._max:
                soonest = min(self._sessions, key=lambda k: self._sessions[k].expires)
                del self._sessions[soonest]
            self._sessions[_key(session_id)] = made
        return session_id, made

    def get(self, session_id: str | None) -> WebSession | None:
        if not session_id:
            return None
        key = _key(session_id)
        with self._lock:
            found = self._sessions.get(key)
            if found is not None and found.expires <= time.time():
                del self._sessions[key]
                return None
        return found

    def end(self, session_id: str | None) -> None:
        if session_id:
            with self._lock:
                self._sessions.pop(_key(session_id), None)

    def __len__(self) -> int:
        return len(self._sessions)


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
