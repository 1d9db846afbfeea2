"""The FHIR client against a real FHIR server (sekmet-fhir): paging, CRUD, If-Match,
identifier search, attachments, typed errors, vendor rules."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.careplan import CarePlan
from fhir.resources.R4B.patient import Patient

from fhir_adapter.ehr.client import FhirClient
from fhir_adapter.ehr.errors import (
    AmbiguousMatchError,
    CapabilityError,
    FatalFhirError,
    NotFoundError,
    PageLimitError,
    VendorRuleError,
    VersionConflictError,
)
from tests.fhir_adapter.sekmet_server import SekmetServer

pytestmark = pytest.mark.integration

SYSTEM = "urn:homework-fhir:test"


class Recorder(httpx.AsyncHTTPTransport):
    """The real transport, remembering (method, path) of every request sent."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((request.method, request.url.path))
        return await super().handle_async_request(request)

    def count(self, method: str, path_suffix: str) -> int:
        return sum(1 for m, p in self.sent if m == method and p.endswith(path_suffix))


def _patients(tag: str, n: int) -> list[dict[str, Any]]:
    return [
        {
            "resourceType": "Patient",
            "identifier": [{"system": SYSTEM, "value": f"{tag}-{i}"}],
            "name": [{"family": tag, "given": [f"P{i}"]}],
        }
        for i in range(n)
    ]


async def test_search_follows_next_links_across_pages(sekmet_server: SekmetServer) -> None:
    tag = f"paging{uuid.uuid4().hex[:8]}"
    refs = sekmet_server.seed(_patients(tag, 23))
    recorder = Recorder()
    endpoint = sekmet_server.endpoint("rs384", page_size=5)
    async with FhirClient(endpoint, transport=recorder) as fhir:
        found = [p async for p in fhir.search("Patient", {"family": tag})]
    assert sorted(f"Patient/{p['id']}" for p in found) == sorted(refs)
    assert len({p["id"] for p in found}) == 23  # no page read twice
    assert recorder.count("GET", "/Patient") == 5  # 5 + 5 + 5 + 5 + 3


async def test_search_page_cap_raises_after_yielding_what_it_read(
    sekmet_server: SekmetServer,
) -> None:
    tag = f"cap{uuid.uuid4().hex[:8]}"
    sekmet_server.seed(_patients(tag, 7))
    async with FhirClient(sekmet_server.endpoint("rs384", page_size=3, max_pages=2)) as fhir:
        seen: list[dict[str, Any]] = []
        with pytest.raises(PageLimitError, match="more than 2 pages; narrow the search"):
            async for patient in fhir.search("Patient", {"family": tag}):
                seen.append(patient)
    assert len(seen) == 6


async def test_vendor_caps_the_page_size(sekmet_server: SekmetServer) -> None:
    tag = f"vcap{uuid.uuid4().hex[:8]}"
    sekmet_server.seed(_patients(tag, 3))
    epic = sekmet_server.endpoint("rs384", vendor="epic", page_size=500)
    async with FhirClient(epic) as fhir:
        assert fhir.page_size == 100  # Epic's cap in the vendor profile
        assert len([p async for p in fhir.search("Patient", {"family": tag})]) == 3


async def test_typed_create_read_update_with_if_match(sekmet_server: SekmetServer) -> None:
    async with FhirClient(sekmet_server.endpoint("es384")) as fhir:
        created = await fhir.create(
            Patient.model_validate(
                {"resourceType": "Patient", "id": "ignored", "name": [{"family": "Typed"}]}
            )
        )
        assert isinstance(created, Patient)
        assert created.id and created.id != "ignored"  # the server assigns ids on create
        assert created.meta is not None and created.meta.versionId == "1"

        read = await fhir.read(Patient, created.id)
        assert isinstance(read, Patient)
        assert read.name is not None and read.name[0].family == "Typed"

        read.gender = "female"
        updated = await fhir.update(read, if_match="1")
        assert updated.meta is not None and updated.meta.versionId == "2"
        assert updated.gender == "female"

        # A writer still holding version 1 loses.
        read.gender = "male"
        with pytest.raises(VersionConflictError) as info:
            await fhir.update(read, if_match="1")
        assert info.value.status == 412
        assert info.value.outcome is not None
        assert info.value.outcome.issue[0].code == "conflict"
        assert "read the resource again" in str(info.value)
        current = await fhir.read("Patient", created.id)
        assert current["gender"] == "female" and current["meta"]["versionId"] == "2"

        # Without If-Match the update goes through (last writer wins).
        forced = await fhir.update(read)
        assert forced.meta is not None and forced.meta.versionId == "3"


async def test_read_missing_is_not_found_with_outcome(sekmet_server: SekmetServer) -> None:
    async with FhirClient(sekmet_server.endpoint("rs384")) as fhir:
        with pytest.raises(NotFoundError) as info:
            await fhir.read("Patient", "does-not-exist")
    assert info.value.status == 404
    assert info.value.outcome is not None
    assert "GET /fhir/Patient/does-not-exist answered 404" in str(info.value)


async def test_invalid_resource_is_fatal_with_the_servers_issues(
    sekmet_server: SekmetServer,
) -> None:
    async with FhirClient(sekmet_server.endpoint("rs384")) as fhir:
        with pytest.raises(FatalFhirError) as info:
            await fhir.create({"resourceType": "Patient", "gender": 42})
    error = info.value
    assert type(error) is FatalFhirError
    assert error.status == 400
    assert error.outcome is not None
    assert any(i.code == "structure" for i in error.outcome.issue)


async def test_search_by_identifier_is_the_idempotency_check(sekmet_server: SekmetServer) -> None:
    key = f"careplan-{uuid.uuid4().hex}"
    [patient] = sekmet_server.seed(_patients(key, 1))
    plan = {
        "resourceType": "CarePlan",
        "identifier": [{"system": SYSTEM, "value": key}],
        "status": "draft",
        "intent": "proposal",
        "subject": {"reference": patient},
    }
    async with FhirClient(sekmet_server.endpoint("rs384")) as fhir:
        assert await fhir.search_by_identifier("CarePlan", SYSTEM, key) is None
        created = await fhir.create(plan)
        found = await fhir.search_by_identifier(CarePlan, SYSTEM, key)
        assert isinstance(found, CarePlan) and found.id == created["id"]
        # Another value of the same system is not a match.
        assert await fhir.search_by_identifier("CarePlan", SYSTEM, key + "-other") is None

        await fhir.create(plan)  # someone created a duplicate
        with pytest.raises(AmbiguousMatchError, match="matches several CarePlan"):
            await fhir.search_by_identifier("CarePlan", SYSTEM, key)


async def test_fetch_attachment_relative_and_absolute(sekmet_server: SekmetServer) -> None:
    text = b"Therapist: Try the breathing exercise daily.\n"
    [binary] = sekmet_server.seed(
        [
            {
                "resourceType": "Binary",
                "contentType": "text/plain",
                "data": base64.b64encode(text).decode(),
            }
        ]
    )
    async with FhirClient(sekmet_server.endpoint("es384")) as fhir:
        relative = await fhir.fetch_attachment(binary)
        absolute = await fhir.fetch_attachment(f"{sekmet_server.base_url}/{binary}")
        with pytest.raises(FatalFhirError, match="refusing to send our token to https://elsewhere"):
            await fhir.fetch_attachment("https://elsewhere.example.org/Binary/1")
    assert relative.content == absolute.content == text
    assert relative.content_type == "text/plain"


async def test_capabilities_summary(sekmet_server: SekmetServer) -> None:
    async with FhirClient(sekmet_server.endpoint("readonly")) as fhir:
        caps = await fhir.capabilities()
    assert caps.fhir_version == "4.0.1"
    assert caps.supports("Task", "update") and caps.supports("Provenance", "create")
    assert not caps.supports("Task", "frobnicate")
    assert not caps.supports("NoSuchType", "read")


async def test_epic_profile_refuses_careplan_create_before_sending(
    sekmet_server: SekmetServer,
) -> None:
    recorder = Recorder()
    endpoint = sekmet_server.endpoint("rs384", vendor="epic")
    async with FhirClient(endpoint, transport=recorder) as fhir:
        with pytest.raises(CapabilityError, match=r"no CarePlan\.Create"):
            await fhir.create({"resourceType": "CarePlan", "status": "draft", "intent": "plan"})
        assert recorder.sent == []  # refused before anything (even a token request) was sent
        # Task update is allowed on Epic.
        [task_ref] = sekmet_server.seed(
            [{"resourceType": "Task", "status": "requested", "intent": "order"}]
        )
        task = await fhir.read("Task", task_ref.split("/")[1])
        task["status"] = "accepted"
        assert (await fhir.update(task))["status"] == "accepted"


async def test_oracle_document_reference_rules(sekmet_server: SekmetServer) -> None:
    [patient] = sekmet_server.seed(_patients(f"doc{uuid.uuid4().hex[:6]}", 1))
    note = {
        "resourceType": "DocumentReference",
        "status": "current",
        "docStatus": "preliminary",
        "subject": {"reference": patient},
        "content": [
            {"attachment": {"contentType": "text/plain", "data": base64.b64encode(b"n").decode()}}
        ],
    }
    endpoint = sekmet_server.endpoint(
        "rs384", vendor="oracle-health", scopes="system/DocumentReference.cruds"
    )
    async with FhirClient(endpoint) as fhir:
        with pytest.raises(VendorRuleError) as info:
            await fhir.create(note)
        assert "docStatus 'final' only (got 'preliminary')" in str(info.value)
        assert "context.period.end" in str(info.value)
        note["docStatus"] = "final"
        note["context"] = {
            "period": {"start": "2025-03-01T10:00:00Z", "end": "2025-03-01T10:50:00Z"}
        }
        created = await fhir.create(note)
    assert created["docStatus"] == "final"
