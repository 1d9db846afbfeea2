"""Our CodeSystems and ValueSets: valid R4B resources, and every code the builders use exists."""

from __future__ import annotations

import pytest
from fhir.resources.R4B.codesystem import CodeSystem
from fhir.resources.R4B.valueset import ValueSet

from mapping import terminology
from mapping.errors import ResourceError
from mapping.fhir.codes import (
    BASE_URL,
    CS_CLINICIAN_DECISION,
    CS_HOMEWORK_CATEGORY,
    CS_REVIEW_STATUS,
    CS_SCREENING_INTERPRETATION,
    CS_TASK_PARAMETER,
    HOMEWORK,
    LABEL_CODES,
    P_MODEL_CATEGORY,
    REVIEW_PARAMETERS,
)
from mapping.fhir.context import ReviewStatus
from mapping.fhir.validate import problems
from mapping.scores.instruments import instruments

RESOURCES = list(terminology.all_resources())


def _codes(concepts: list[dict[str, object]]) -> list[str]:
    out: list[str] = []
    for c in concepts:
        out.append(str(c["code"]))
        out += _codes(c.get("concept", []))  # type: ignore[arg-type]
    return out


def test_five_code_systems_and_five_value_sets() -> None:
    kinds = sorted(r["resourceType"] for r in RESOURCES)
    assert kinds == ["CodeSystem"] * 5 + ["ValueSet"] * 5


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r["id"])
def test_validates_with_r4b(resource: dict[str, object]) -> None:
    model = CodeSystem if resource["resourceType"] == "CodeSystem" else ValueSet
    parsed = model.model_validate(resource)
    assert parsed.url == f"{BASE_URL}/{resource['resourceType']}/{resource['id']}"
    assert problems(resource) == []


@pytest.mark.parametrize(
    "resource", [r for r in RESOURCES if r["resourceType"] == "CodeSystem"], ids=lambda r: r["id"]
)
def test_code_system_is_complete_and_consistent(resource: dict[str, object]) -> None:
    codes = _codes(resource["concept"])  # type: ignore[arg-type]
    assert resource["count"] == len(codes) == len(set(codes))
    assert resource["content"] == "complete"
    value_set = next(r for r in RESOURCES if r.get("url") == resource["valueSet"])
    assert value_set["compose"]["include"] == [{"system": resource["url"]}]  # type: ignore[index]


def test_builder_codes_exist() -> None:
    for code in [HOMEWORK, *LABEL_CODES.values()]:
        assert terminology.display(CS_HOMEWORK_CATEGORY, code)
    assert "take-action" in LABEL_CODES.values()
    for status in ReviewStatus:
        assert terminology.display(CS_REVIEW_STATUS, status.value)
    for code in [*REVIEW_PARAMETERS, P_MODEL_CATEGORY]:
        assert terminology.display(CS_TASK_PARAMETER, code)
    for decision in ("approve", "edit", "reject", "add"):
        assert terminology.display(CS_CLINICIAN_DECISION, decision)
    for inst in instruments():
        for band in inst.bands:
            assert terminology.display(CS_SCREENING_INTERPRETATION, band.code)
    assert terminology.display(CS_SCREENING_INTERPRETATION, "self-harm-risk")


def test_unknown_code_or_system_is_an_error() -> None:
    with pytest.raises(ResourceError, match="take_action"):
        terminology.display(CS_HOMEWORK_CATEGORY, "take_action")
    with pytest.raises(ResourceError, match="no published CodeSystem"):
        terminology.code_system(f"{BASE_URL}/CodeSystem/nope")


def test_all_resources_returns_copies() -> None:
    first = next(terminology.all_resources())
    first["status"] = "retired"
    assert next(terminology.all_resources())["status"] == "active"
