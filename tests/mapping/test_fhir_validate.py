"""The profile checks catch what they claim to, and the context refuses bad input."""

from __future__ import annotations

import copy
import dataclasses
from datetime import datetime
from typing import Any

import pytest

from mapping.errors import ResourceError
from mapping.fhir import (
    EncounterContext,
    ModelInfo,
    Ref,
    as_json,
    build_session_resources,
    check,
    problems,
)
from tests.mapping import golden
from tests.mapping.fhir_cases import load_case


def resources() -> dict[str, dict[str, Any]]:
    args = load_case(golden.load("fhir", "two-homework"))
    ctx, detections, model = args.pop("ctx"), args.pop("detections"), args.pop("model")
    r = build_session_resources(ctx, detections, model, **args)
    assert r.careplan is not None and r.provenance is not None
    return {
        "careplan": as_json(r.careplan),
        "task": as_json(r.tasks[0]),
        "provenance": as_json(r.provenance),
        "note": as_json(r.note),
        "device": as_json(r.device),
    }


def broken(name: str, path: list[Any], value: Any = None, delete: bool = False) -> dict[str, Any]:
    data = copy.deepcopy(resources()[name])
    target = data
    for key in path[:-1]:
        target = target[key]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("name", "path", "value", "delete", "message"),
    [
        ("careplan", ["category"], [], False, "assess-plan"),
        ("careplan", ["text", "div"], "<div>not closed", False, "well-formed"),
        ("careplan", ["text", "div"], "<p>x</p>", False, "XHTML namespace"),
        ("careplan", ["status"], "bogus", False, "status 'bogus'"),
        ("task", ["intent"], "wish", False, "intent 'wish'"),
        ("provenance", ["agent", 0, "onBehalfOf"], None, True, "provenance-1"),
        ("provenance", ["agent", 0, "type"], None, True, "author agent"),
        ("provenance", ["reason"], None, True, "AIAST"),
        ("note", ["category"], None, True, "category is required"),
        ("note", ["content", 0, "attachment", "data"], None, True, "us-core-6"),
        ("note", ["docStatus"], "signed", False, "docStatus 'signed'"),
        ("device", ["type", "coding", 0, "code"], "Robot", False, "Artificial-Intelligence"),
        ("task", ["authoredOn"], "yesterday", False, "does not validate"),
    ],
)
def test_problems_are_found(
    name: str, path: list[Any], value: Any, delete: bool, message: str
) -> None:
    data = broken(name, path, value, delete)
    found = problems(data)
    assert any(message in p for p in found), found
    with pytest.raises(ResourceError):
        check(data)


def test_unchecked_profile_is_reported() -> None:
    data = resources()["task"]
    data["meta"]["profile"] = ["http://example.org/StructureDefinition/made-up"]
    assert problems(data) == [
        "no checks for claimed profile http://example.org/StructureDefinition/made-up"
    ]


def test_valid_resources_pass() -> None:
    for data in resources().values():
        check(data)


CTX = load_case(golden.load("fhir", "two-homework"))["ctx"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"patient": Ref("Practitioner/x")}, "patient must reference a Patient"),
        ({"encounter": Ref("https://ehr.test/fhir/Patient/1")}, "encounter must reference"),
        ({"practitioners": ()}, "no practitioner"),
        ({"organization": Ref("Patient/p")}, "organization must reference"),
        ({"period_end": datetime.fromisoformat("2024-05-02T09:00:00-04:00")}, "before it starts"),
        ({"period_start": datetime(2024, 5, 2, 10)}, "no time zone"),
    ],
)
def test_context_refusals(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ResourceError, match=message):
        dataclasses.replace(CTX, **changes)


def test_absolute_references_are_accepted() -> None:
    ctx = dataclasses.replace(CTX, encounter=Ref("https://ehr.test/fhir/Encounter/9/_history/2"))
    assert isinstance(ctx, EncounterContext)


@pytest.mark.parametrize("reference", ["", "Patient/ 1", "   "])
def test_ref_refusals(reference: str) -> None:
    with pytest.raises(ResourceError, match="empty or has spaces"):
        Ref(reference)


def test_model_info_refusals() -> None:
    with pytest.raises(ResourceError, match="not an http"):
        ModelInfo("m", "1", "file:///card.md")
    with pytest.raises(ResourceError, match="must not be empty"):
        ModelInfo("m", " ", "https://x.test/card.md")
