"""The async FHIR R4 client: one per server, on one `httpx.AsyncClient`.

Create it once where the app or the CLI run starts (`async with FhirClient(endpoint) as
fhir:`) and share it; never one per request. Resources come back as plain JSON dicts when
you name the type as a string, or as fhir.resources R4B models when you pass the class::

    async with FhirClient(settings.connection("clinic")) as fhir:
        patient = await fhir.read(Patient, "123")            # -> Patient
        async for encounter in fhir.search("Encounter", [("status", "finished")]):
            ...                                              # -> dict
        existing = await fhir.search_by_identifier(CarePlan, SYSTEM, key)
        created = await fhir.create(care_plan)               # -> CarePlan with id + versionId
        updated = await fhir.update(task, if_match=task.meta.versionId)

Every failure is a `FhirError` (see `errors`); vendor rules refuse what the vendor would
refuse before anything is sent.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar, overload

import httpx
from fhir.resources.R4B.resource import Resource
from pydantic import ValidationError

from fhir_adapter.ehr.auth import Clock, build_auth, utc_now
from fhir_adapter.ehr.capabilities import ServerCapabilities
from fhir_adapter.ehr.errors import (
    AmbiguousMatchError,
    CapabilityError,
    FatalFhirError,
    InvalidResponseError,
    PageLimitError,
    VendorRuleError,
)
from fhir_adapter.ehr.http import HttpResult, RetryPolicy, Sleep, send_with_retries
from fhir_adapter.ehr.vendors import VendorProfile, document_reference_problems, vendor_profile
from fhir_adapter.settings import FhirEndpoint

__all__ = ["Attachment", "FhirClient", "SearchParams"]

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Resource)
SearchParams = Mapping[str, str] | Sequence[tuple[str, str]]

FHIR_JSON = "application/fhir+json"
# A searchset page or a resource; far above any real one, low enough to protect memory.
MAX_RESOURCE_BYTES = 64 * 1024 * 1024
MAX_ATTACHMENT_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class Attachment:
    content: bytes
    content_type: str


def _type_name(resource_type: str | type[Resource]) -> str:
    return resource_type if isinstance(resource_type, str) else resource_type.get_resource_type()


def _as_json(resource: Resource | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(resource, Resource):
        out: dict[str, Any] = resource.model_dump(mode="json", by_alias=True, exclude_none=True)
        return out
    return dict(resource)


class FhirClient:
    """FHIR R4 REST client for one server (an EHR, or a FHIR store for care plans)."""

    def __init__(
        self,
        endpoint: FhirEndpoint,
        *,
        name: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        auth: httpx.Auth | None = None,
        retry: RetryPolicy | None = None,
        clock: Clock = utc_now,
        sleep: Sleep = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.name = name or getattr(endpoint, "name", None) or endpoint.base_url
        self.base_url = endpoint.base_url.rstrip("/")
        self.vendor: VendorProfile = vendor_profile(endpoint.vendor)
        self.auth: httpx.Auth = auth if auth is not None else build_auth(endpoint, clock=clock)
        self._retry = retry or RetryPolicy()
        self._clock = clock
        self._sleep = sleep
        self._monotonic = monotonic
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._origin = httpx.URL(self.base_url).copy_with(path="/", query=None)
        # EHRs are busy, shared systems that throttle per client: a handful of connections,
        # generous read timeouts (a search on a large chart can take tens of seconds), short
        # connect timeouts (a host that does not answer in 10 s is down, retry later).
        self._http = httpx.AsyncClient(
            base_url=self.base_url + "/",
            transport=transport,
            limits=httpx.Limits(
                max_connections=endpoint.max_connections,
                max_keepalive_connections=min(5, endpoint.max_connections),
                keepalive_expiry=30.0,
            ),
            timeout=httpx.Timeout(
                connect=10.0, read=endpoint.read_timeout_s, write=30.0, pool=30.0
            ),
            headers={"Accept": FHIR_JSON, "User-Agent": "homework-fhir"},
            follow_redirects=False,
        )

    # -- lifecycle

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- plumbing

    def _url(self, url: str) -> httpx.URL:
        """Resolve `url` against the base; refuse other origins (they would get our token)."""
        resolved = self._http.base_url.join(url) if "://" not in url else httpx.URL(url)
        if resolved.copy_with(path="/", query=None, fragment=None) != self._origin:
            raise FatalFhirError(
                f"{self.name}: refusing to send our token to {resolved.scheme}://"
                f"{resolved.netloc.decode()} (not the server at {self.base_url}); if the server "
                "names itself differently in its links, set base_url to that address"
            )
        return resolved

    async def _send(
        self,
        method: str,
        url: str,
        *,
        params: SearchParams | None = None,
        body: dict[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        max_bytes: int = MAX_RESOURCE_BYTES,
    ) -> HttpResult:
        request = self._http.build_request(
            method,
            self._url(url),
            params=None if params is None else httpx.QueryParams(tuple(_query(params))),
            content=None if body is None else _dumps(body),
            headers={
                **({"Content-Type": FHIR_JSON} if body is not None else {}),
                **(headers or {}),
            },
        )
        return await send_with_retries(
            self._http,
            request,
            auth=self.auth,
            policy=self._retry,
            max_bytes=max_bytes,
            sleep=self._sleep,
            clock=self._clock,
            monotonic=self._monotonic,
            rng=self._rng,
        )

    def _resource(self, result: HttpResult, expected: str | None) -> dict[str, Any]:
        try:
            body = result.json()
        except ValueError as exc:
            raise InvalidResponseError(
                f"{self.name}: {result.url.path} answered {result.status} with a body that is "
                f"not JSON ({result.headers.get('Content-Type', 'no type')})",
                status=result.status,
            ) from exc
        if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
            raise InvalidResponseError(
                f"{self.name}: {result.url.path} answered {result.status} with JSON that is "
                "not a FHIR resource",
                status=result.status,
            )
        if expected is not None and body["resourceType"] != expected:
            raise InvalidResponseError(
                f"{self.name}: {result.url.path} returned a {body['resourceType']}, "
                f"expected {expected}",
                status=result.status,
            )
        return body

    @staticmethod
    def _typed(resource_type: str | type[R], body: dict[str, Any]) -> Any:
        if isinstance(resource_type, str):
            return body
        try:
            return resource_type.model_validate(body)
        except ValidationError as exc:
            raise InvalidResponseError(
                f"{body.get('resourceType')}/{body.get('id')} does not validate as "
                f"{resource_type.__name__} (R4B): {exc.error_count()} error(s); read it as a "
                "dict to work with it anyway"
            ) from exc

    # -- interactions

    @overload
    async def read(self, resource_type: type[R], id: str) -> R: ...
    @overload
    async def read(self, resource_type: str, id: str) -> dict[str, Any]: ...
    async def read(self, resource_type: str | type[R], id: str) -> R | dict[str, Any]:
        """GET [base]/Type/id."""
        type_name = _type_name(resource_type)
        result = await self._send("GET", f"{type_name}/{id}")
        typed: R | dict[str, Any] = self._typed(resource_type, self._resource(result, type_name))
        return typed

    @overload
    def search(
        self, resource_type: type[R], params: SearchParams | None = None, *,
        max_pages: int | None = None,
    ) -> AsyncIterator[R]: ...  # fmt: skip
    @overload
    def search(
        self, resource_type: str, params: SearchParams | None = None, *,
        max_pages: int | None = None,
    ) -> AsyncIterator[dict[str, Any]]: ...  # fmt: skip
    async def search(
        self,
        resource_type: str | type[R],
        params: SearchParams | None = None,
        *,
        max_pages: int | None = None,
    ) -> AsyncIterator[Any]:
        """GET [base]/Type?params, following Bundle.link[next]; yields the matches.

        Included resources and inline OperationOutcomes are not yielded (the latter are
        logged: Oracle Health, for one, drops resources it cannot render and says so in an
        outcome entry). More than `max_pages` pages (default: the connection's) raises
        PageLimitError after the matches seen so far.
        """
        type_name = _type_name(resource_type)
        query = _query(params)
        if not any(key == "_count" for key, _ in query):
            query.append(("_count", str(self.page_size)))
        limit = max_pages or self.endpoint.max_pages
        url: str | None = type_name
        request_params: list[tuple[str, str]] | None = query
        seen: set[str] = set()
        pages = 0
        while url is not None:
            if pages == limit:
                raise PageLimitError(
                    f"{self.name}: search on {type_name} has more than {limit} pages; narrow "
                    "the search or raise max_pages for this connection"
                )
            result = await self._send("GET", url, params=request_params)
            pages += 1
            bundle = self._resource(result, "Bundle")
            for entry in bundle.get("entry") or []:
                resource = entry.get("resource")
                mode = (entry.get("search") or {}).get("mode", "match")
                if not isinstance(resource, dict):
                    continue
                if resource.get("resourceType") == "OperationOutcome" or mode == "outcome":
                    issues = resource.get("issue") or []
                    codes = sorted({str(i.get("code")) for i in issues if isinstance(i, dict)})
                    log.warning("%s: search on %s page %d carried an OperationOutcome (%s)",
                                self.name, type_name, pages, ", ".join(codes))  # fmt: skip
                    continue
                if mode != "match" or resource.get("resourceType") != type_name:
                    continue
                yield self._typed(resource_type, resource)
            url = _next_link(bundle)
            request_params = None  # the next link carries the whole query
            if url is not None:
                if url in seen:
                    raise InvalidResponseError(
                        f"{self.name}: search on {type_name} links back to a page already read"
                    )
                seen.add(url)

    @property
    def page_size(self) -> int:
        cap = self.vendor.max_page_size
        return min(self.endpoint.page_size, cap) if cap else self.endpoint.page_size

    @overload
    async def search_by_identifier(
        self, resource_type: type[R], system: str, value: str
    ) -> R | None: ...
    @overload
    async def search_by_identifier(
        self, resource_type: str, system: str, value: str
    ) -> dict[str, Any] | None: ...
    async def search_by_identifier(
        self, resource_type: str | type[R], system: str, value: str
    ) -> R | dict[str, Any] | None:
        """The one resource with identifier `system|value`, or None.

        This is the idempotency check before a create (Epic and Oracle Health have no
        conditional create): search by the identifier we put on everything we write.
        Several matches raise AmbiguousMatchError: someone created duplicates.
        """
        params = [("identifier", f"{system}|{value}"), ("_count", "2")]
        found = []
        async for resource in self.search(_type_name(resource_type), params, max_pages=1):
            found.append(resource)
            if len(found) > 1:
                ids = ", ".join(str(r.get("id")) for r in found)
                raise AmbiguousMatchError(
                    f"{self.name}: identifier {system}|<value> matches several "
                    f"{_type_name(resource_type)} ({ids}); resolve the duplicates in the server"
                )
        if not found:
            return None
        typed: R | dict[str, Any] = self._typed(resource_type, found[0])
        return typed

    @overload
    async def create(self, resource: R) -> R: ...
    @overload
    async def create(self, resource: Mapping[str, Any]) -> dict[str, Any]: ...
    async def create(self, resource: R | Mapping[str, Any]) -> R | dict[str, Any]:
        """POST [base]/Type. Returns the stored resource (with id and meta.versionId)."""
        body = _as_json(resource)
        type_name = str(body.get("resourceType"))
        self._check_vendor(type_name, "create", body)
        body.pop("id", None)
        result = await self._send(
            "POST", type_name, body=body, headers={"Prefer": "return=representation"}
        )
        stored = self._written(result, type_name, body)
        log.info("%s: created %s/%s", self.name, type_name, stored.get("id"))
        return self._typed(type(resource), stored) if isinstance(resource, Resource) else stored

    @overload
    async def update(self, resource: R, *, if_match: str | None = None) -> R: ...
    @overload
    async def update(
        self, resource: Mapping[str, Any], *, if_match: str | None = None
    ) -> dict[str, Any]: ...
    async def update(
        self, resource: R | Mapping[str, Any], *, if_match: str | None = None
    ) -> R | dict[str, Any]:
        """PUT [base]/Type/id; with `if_match` (a versionId) only if it is still current.

        A different current version raises VersionConflictError.
        """
        body = _as_json(resource)
        type_name = str(body.get("resourceType"))
        rid = body.get("id")
        if not rid:
            raise FatalFhirError(f"{self.name}: update of a {type_name} without an id")
        self._check_vendor(type_name, "update", body)
        headers = {"Prefer": "return=representation"}
        if if_match is not None:
            headers["If-Match"] = if_match if if_match.startswith("W/") else f'W/"{if_match}"'
        result = await self._send("PUT", f"{type_name}/{rid}", body=body, headers=headers)
        stored = self._written(result, type_name, body)
        log.info("%s: updated %s/%s", self.name, type_name, rid)
        return self._typed(type(resource), stored) if isinstance(resource, Resource) else stored

    def _check_vendor(self, type_name: str, interaction: str, body: Mapping[str, Any]) -> None:
        reason = self.vendor.refusal(type_name, interaction)
        if reason is not None:
            raise CapabilityError(self.name, [f"{type_name} {interaction}: {reason}"])
        if type_name == "DocumentReference" and interaction == "create":
            problems = document_reference_problems(self.vendor, body)
            if problems:
                raise VendorRuleError(f"{self.name}: " + "; ".join(problems))

    def _written(self, result: HttpResult, type_name: str, sent: dict[str, Any]) -> dict[str, Any]:
        """The stored resource from a create/update response.

        Some EHRs answer 201 with an empty body (or an OperationOutcome) despite `Prefer:
        return=representation`; then the id and version come from the Location and ETag
        headers.
        """
        if result.content.strip():
            body = self._resource(result, None)
            if body["resourceType"] == type_name:
                return body
            if body["resourceType"] != "OperationOutcome":
                raise InvalidResponseError(
                    f"{self.name}: {type_name} write returned a {body['resourceType']}",
                    status=result.status,
                )
        stored = dict(sent)
        location = result.headers.get("Location") or result.headers.get("Content-Location")
        if location:
            parts = httpx.URL(location).path.rstrip("/").split("/")
            if "_history" in parts:
                at = parts.index("_history")
                stored["id"] = parts[at - 1]
                version: str | None = parts[at + 1] if at + 1 < len(parts) else None
            else:
                stored["id"] = parts[-1]
                version = None
        else:
            version = None
        etag = result.headers.get("ETag")
        if etag:
            version = etag.removeprefix("W/").strip('"')
        if not stored.get("id"):
            raise InvalidResponseError(
                f"{self.name}: {type_name} write answered {result.status} with no body and no "
                "Location; cannot tell which resource was written",
                status=result.status,
            )
        if version:
            stored["meta"] = {**(stored.get("meta") or {}), "versionId": version}
        return stored

    async def capabilities(self) -> ServerCapabilities:
        """GET [base]/metadata, summarised: interactions per resource type."""
        result = await self._send("GET", "metadata")
        return ServerCapabilities.from_statement(self._resource(result, "CapabilityStatement"))

    async def fetch_attachment(
        self, url: str, *, max_bytes: int = MAX_ATTACHMENT_BYTES
    ) -> Attachment:
        """An Attachment.url's content (e.g. `Binary/123`, relative to the base), with our auth.

        Asks for the raw content; a server that answers with a Binary resource anyway gets
        its `data` decoded. Only the server's own origin is fetched (the token goes along).
        """
        result = await self._send("GET", url, headers={"Accept": "*/*"}, max_bytes=max_bytes)
        content_type = result.headers.get("Content-Type", "application/octet-stream")
        if content_type.split(";")[0].strip() in (FHIR_JSON, "application/json"):
            body = self._resource(result, None)
            if body["resourceType"] == "Binary":
                try:
                    data = base64.b64decode(body.get("data") or "", validate=True)
                except ValueError as exc:
                    raise InvalidResponseError(
                        f"{self.name}: Binary/{body.get('id')} has data that is not base64"
                    ) from exc
                return Attachment(data, str(body.get("contentType") or "application/octet-stream"))
        return Attachment(result.content, content_type)


def _query(params: SearchParams | None) -> list[tuple[str, str]]:
    if params is None:
        return []
    return list(params.items()) if isinstance(params, Mapping) else list(params)


def _next_link(bundle: Mapping[str, Any]) -> str | None:
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next" and link.get("url"):
            return str(link["url"])
    return None


def _dumps(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
