"""The JWK Sets of trusted CDS Clients, fetched over HTTPS and cached.

Only URLs from the settings are ever fetched (a client's `jwks_url`, or a `jku` on its
allow-list); a token cannot make us fetch anything else. A set is kept for `ttl_s`; a token
whose `kid` is not in the cached set refetches it, at most once per `min_refresh_s` per URL,
so an EHR's key rotation is picked up within a call or two and a stream of unknown kids
cannot turn into a stream of fetches.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

logger = logging.getLogger(__name__)

# A JWK Set holds a few public keys (a few KiB); anything far larger is not one.
MAX_JWKS_BYTES = 256 * 1024
# A hook is answered within the EHR's time budget (CDS Hooks: ~500 ms); a JWK Set that takes
# longer than this to arrive fails the call rather than hang it.
FETCH_TIMEOUT_S = 5.0
# Refetches for an unknown kid, at most one per URL this often.
MIN_REFRESH_S = 60.0


class JwksUnavailable(Exception):
    """A JWK Set could not be fetched or read (the message names the URL and why)."""


@dataclass
class _Entry:
    keys: KeySet
    fetched_at: float


class JwksCache:
    """JWK Sets by URL, fetched with one shared `httpx.AsyncClient` (opened by the caller)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        ttl_s: float = 3600.0,
        min_refresh_s: float = MIN_REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self._ttl_s = ttl_s
        self._min_refresh_s = min_refresh_s
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, url: str, *, refresh: bool = False) -> KeySet:
        """The key set at `url`: cached while fresh; `refresh` asks for a new copy (granted
        when the cached one is older than `min_refresh_s`)."""
        lock = self._locks.setdefault(url, asyncio.Lock())
        async with lock:  # one fetch per URL at a time; the others use its result
            entry = self._entries.get(url)
            now = self._clock()
            if entry is not None:
                age = now - entry.fetched_at
                if age < self._ttl_s and not (refresh and age >= self._min_refresh_s):
                    return entry.keys
            keys = await self._fetch(url)
            self._entries[url] = _Entry(keys, self._clock())
            return keys

    async def _fetch(self, url: str) -> KeySet:
        try:
            # Never follow a redirect: the allow-listed URL is the only one fetched.
            async with self._http.stream(
                "GET", url, timeout=FETCH_TIMEOUT_S, follow_redirects=False,
                headers={"Accept": "application/json"},
            ) as response:  # fmt: skip
                if response.status_code != 200:
                    raise JwksUnavailable(f"JWK Set {url}: HTTP {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise JwksUnavailable(f"JWK Set {url}: over {MAX_JWKS_BYTES} bytes")
        except httpx.HTTPError as exc:
            raise JwksUnavailable(f"JWK Set {url}: {type(exc).__name__}: {exc}") from exc
        try:
            keys = KeySet.import_key_set(json.loads(bytes(body)))
        except (ValueError, TypeError, KeyError, JoseError) as exc:
            raise JwksUnavailable(f"JWK Set {url}: not a JWK Set ({type(exc).__name__})") from exc
        logger.info("fetched JWK Set %s (%d keys)", url, len(keys.keys))
        return keys
