"""Browser sessions for the dashboard: server-side, bounded, expiring with the token.

The login form takes a bearer token; once verified, the browser gets a random session id in
an HttpOnly, SameSite=Strict cookie, and the token itself is dropped (the session keeps the
subject and the token's expiry, nothing a stolen cookie could replay elsewhere). Sessions live
in the database (table `web_session`), so every API replica sees them and a restart keeps
them: keyed by a hash of the id, encrypted under a key derived from the id (only the browser
holds it), at most `max_sessions` of a kind, each ending no later than its token's `exp`.
Kinds are bounded apart: a flood of one (pending SMART launches, which anyone may start) never
evicts another (signed-in sessions).

CSRF: the logout form carries the session's own token (synchronizer token); the login form,
made before there is a session, carries a random value that must equal its HttpOnly,
SameSite=Strict cookie (double submit). Both POSTs also refuse an `Origin` other than our own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, Literal, Protocol, TypeVar
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

from fhir_adapter.store import Store
from fhir_adapter.store.models import WebSessionRow

logger = logging.getLogger(__name__)

# Signed-in sessions of one kind kept at most (`api.max_sessions`'s default): past it the one
# expiring soonest is ended to make room for a new one, and that is logged.
MAX_SESSIONS = 10_000
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


def _cipher(session_id: str) -> AESGCM:
    """The payload's key, derived from the id (which only the browser holds): another HKDF
    `info` than the lookup hash, so the stored key reveals nothing of it."""
    derived = HKDF(algorithm=SHA256(), length=32, salt=None, info=b"homework-fhir web session")
    return AESGCM(derived.derive(session_id.encode()))


class ExpiringStore(Generic[S]):
    """Values of one kind (a frozen dataclass of JSON values with `expires`) by a random id,
    in the database, so every API process sees them; each gone at its `expires`. At most
    `max_sessions` of the kind, counted apart from every other kind: the one expiring soonest
    makes room (logged by count and kind, nothing of its content). Only a hash of each id is
    stored, and the value is encrypted under a key derived from the id (AES-GCM, the kind as
    associated data)."""

    def __init__(
        self,
        kind: str,
        cls: type[S],
        store: Callable[[], Store],
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        self._kind = kind
        self._cls = cls
        self._store = store
        self._max = max_sessions

    def _seal(self, session_id: str, made: S) -> bytes:
        plain = json.dumps(dataclasses.asdict(made), separators=(",", ":")).encode()  # type: ignore[call-overload]
        nonce = secrets.token_bytes(12)
        return nonce + _cipher(session_id).encrypt(nonce, plain, self._kind.encode())

    def _open(self, session_id: str, row: WebSessionRow) -> S | None:
        try:
            plain = _cipher(session_id).decrypt(row.payload[:12], row.payload[12:],
                                                self._kind.encode())  # fmt: skip
            return self._cls(**json.loads(plain))
        except (InvalidTag, ValueError, TypeError):  # another version's shape, or tampered
            return None

    def _new_row(self, session_id: str, made: S) -> WebSessionRow:
        return WebSessionRow(
            key=_key(session_id),
            kind=self._kind,
            payload=self._seal(session_id, made),
            expires_at=datetime.fromtimestamp(made.expires, UTC),
        )

    def _drop_expired(self, session: Session) -> None:
        now = datetime.now(UTC)
        session.execute(
            delete(WebSessionRow).where(
                WebSessionRow.kind == self._kind, WebSessionRow.expires_at <= now
            )
        )

    def put(self, made: S, session_id: str | None = None) -> str:
        """Keep `made` until its expiry; returns its id (random unless given)."""
        session_id = session_id or new_token()
        kind = WebSessionRow.kind == self._kind
        with self._store().session() as session:
            self._drop_expired(session)
            count = session.scalar(select(func.count()).select_from(WebSessionRow).where(kind))
            if count and count >= self._max:
                over = count - self._max + 1
                soonest = select(WebSessionRow.key).where(kind)
                soonest = soonest.order_by(WebSessionRow.expires_at).limit(over)
                session.execute(delete(WebSessionRow).where(WebSessionRow.key.in_(soonest)))
                logger.warning("%s: %d kept at most; ended the %d expiring soonest for a new "
                               "one", self._kind, self._max, over)  # fmt: skip
            session.merge(self._new_row(session_id, made))
        return session_id

    def add_once(self, made: S, session_id: str) -> bool:
        """Keep `made` under `session_id` unless a live value is already there, kept by this
        process or another: False then (the database's primary key decides a race)."""
        try:
            with self._store().session() as session:
                self._drop_expired(session)
                session.add(self._new_row(session_id, made))
        except IntegrityError:
            return False
        return True

    def _row(self, session: Session, session_id: str) -> WebSessionRow | None:
        row = session.get(WebSessionRow, _key(session_id))
        return row if row is not None and row.kind == self._kind else None

    def get(self, session_id: str | None) -> S | None:
        if not session_id:
            return None
        with self._store().session() as session:
            row = self._row(session, session_id)
            if row is None:
                return None
            if row.expires_at <= datetime.now(UTC):
                session.delete(row)
                return None
            return self._open(session_id, row)

    def take(self, session_id: str | None) -> S | None:
        """The value under `session_id`, removed: a second take, in this process or another,
        finds nothing (single use)."""
        if not session_id:
            return None
        with self._store().session() as session:
            row = self._row(session, session_id)
            if row is None:
                return None
            found = self._open(session_id, row)
            taken = session.execute(
                delete(WebSessionRow).where(WebSessionRow.key == row.key)
            ).rowcount  # type: ignore[attr-defined]
        if taken != 1 or found is None or found.expires <= time.time():
            return None
        return found

    def end(self, session_id: str | None) -> None:
        """Remove the value under `session_id`, if it is of this kind."""
        if session_id:
            mine = (WebSessionRow.key == _key(session_id), WebSessionRow.kind == self._kind)
            with self._store().session() as session:
                session.execute(delete(WebSessionRow).where(*mine))

    def __len__(self) -> int:
        now = datetime.now(UTC)
        with self._store().session() as session:
            return int(
                session.scalar(
                    select(func.count()).select_from(WebSessionRow).where(
                        WebSessionRow.kind == self._kind, WebSessionRow.expires_at > now)
                ) or 0
            )  # fmt: skip


class SessionStore(ExpiringStore[WebSession]):
    """The dashboard's sessions."""

    def __init__(self, store: Callable[[], Store], max_sessions: int = MAX_SESSIONS) -> None:
        super().__init__("dashboard", WebSession, store, max_sessions)

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
