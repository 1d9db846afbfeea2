"""What the specification's suite does not pin down: expressions compiled once per view, the
messages of ViewError, the keys getResourceKey()/getReferenceKey() give, and our workarounds."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import fhirpathpy
import pytest

from mapping.errors import MappingError
from mapping.quality import Column, ViewError, compile_view, run_view, view_columns
from tests.mapping.quality.sof_suite import load_cases

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p1",
    "name": [{"family": "Ng", "given": ["Ada", "Bo"]}],
    "link": [{"other": {"reference": "https://ehr.example/fhir/Patient/p1/_history/3"}}],
    "generalPractitioner": [{"reference": "Practitioner/p1"}],
}


def _view(*columns: tuple[str, str], **select: Any) -> dict[str, Any]:
    return {
        "resource": "Patient",
        "select": [{"column": [{"name": n, "path": p} for n, p in columns], **select}],
    }


def test_expressions_are_compiled_once_per_view(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[str] = []
    real_compile = fhirpathpy.compile

    def counting_compile(path: str, *args: Any, **kwargs: Any) -> Any:
        compiled.append(path)
        return real_compile(path, *args, **kwargs)

    monkeypatch.setattr(fhirpathpy, "compile", counting_compile)
    view = {
        "resource": "Patient",
        "where": [{"path": "name.exists()"}],
        "select": [
            {"column": [{"name": "id", "path": "id"}]},
            {"forEach": "name", "column": [{"name": "family", "path": "family"}]},
        ],
    }
    compiled_view = compile_view(view)
    assert sorted(compiled) == ["family", "id", "name", "name.exists()"]

    parses: list[str] = []
    real_parse = fhirpathpy.parse
    monkeypatch.setattr(fhirpathpy, "parse", lambda p: parses.append(p) or real_parse(p))
    patients = [{**PATIENT, "id": f"p{i}"} for i in range(200)]
    assert len(compiled_view.run(patients)) == 200
    assert parses == []  # running parses nothing


def test_columns_in_the_specifications_order() -> None:
    view = {
        "resource": "Patient",
        "select": [
            {
                "column": [{"name": "id", "path": "id", "type": "id"}],
                "unionAll": [
                    {"forEach": "name", "column": [{"name": "v", "path": "family"}]},
                    {"forEach": "telecom", "column": [{"name": "v", "path": "value"}]},
                ],
                "select": [
                    {"column": [{"name": "given", "path": "name.given", "collection": True}]}
                ],
            }
        ],
    }
    assert view_columns(view) == [
        Column("id", "id"),
        Column("given", None, collection=True),
        Column("v", None),
    ]
    assert run_view(view, [PATIENT]) == [{"id": "p1", "given": ["Ada", "Bo"], "v": "Ng"}]


@pytest.mark.parametrize(
    ("view", "message"),
    [
        ({"select": []}, "resource must be a FHIR resource type"),
        ({"resource": "Patient"}, "select must hold at least one selection"),
        (_view(("a", "name.family.lowBoundary()")), "select[0].column[0] ('a'): FHIRPath"),
        (_view(("a", "name.family.lowBoundary()")), "lowBoundary(), which fhirpathpy"),
        (_view(("a", "name.where(use = %official)")), "undefined constant %official"),
        (_view(("a", "name..family")), "select[0].column[0] ('a'): invalid FHIRPath"),
        (_view(("a", "id"), ("a", "name.family")), "column 'a' is defined twice"),
        (_view(("a b", "id")), "select[0].column[0]: name 'a b' must match"),
        (_view(("a", "id"), forEach="name", forEachOrNull="name"), "has forEach and forEachOrNull"),
        (_view(("a", "id"), repeat="item"), "select[0].repeat must be a non-empty list"),
        (
            {
                **_view(("a", "id")),
                "constant": [{"name": "c", "valueString": "x", "valueCode": "y"}],
            },
            "constant[0] (c) needs exactly one value[x]",
        ),
    ],
)
def test_invalid_views_say_what_is_wrong(view: dict[str, Any], message: str) -> None:
    with pytest.raises(ViewError) as raised:
        compile_view(view)
    assert message in str(raised.value)


def test_data_errors_name_the_resource() -> None:
    with pytest.raises(
        ViewError, match=r"select\[0\].column\[0\] \('g'\): Patient/p1 has 2 values"
    ):
        run_view(_view(("g", "name.given")), [PATIENT])
    # An integer is not a boolean, though Python's 1 == True.
    where_one = {**_view(("id", "id")), "where": [{"path": "1"}]}
    with pytest.raises(ViewError, match=r"where\[0\].path: '1' must give a boolean on Patient/p1"):
        run_view(where_one, [PATIENT])
    endless = {
        "resource": "Patient",
        "select": [{"repeat": ["$this"], "column": [{"name": "a", "path": "id"}]}],
    }
    with pytest.raises(ViewError, match="does a path return its own input"):
        run_view(endless, [PATIENT])


def test_view_error_is_a_mapping_error() -> None:
    # The CLI turns any MappingError into a one-line message.
    assert issubclass(ViewError, MappingError)


def test_resource_and_reference_keys() -> None:
    view = _view(
        ("key", "getResourceKey()"),
        ("linked", "link.other.getReferenceKey(Patient)"),  # absolute, versioned reference
        ("gp_any", "generalPractitioner.getReferenceKey()"),
        ("gp_patient", "generalPractitioner.getReferenceKey(Patient)"),
    )
    # Keys carry the type: Practitioner/p1 is not Patient/p1.
    assert run_view(view, [PATIENT]) == [
        {
            "key": "Patient/p1",
            "linked": "Patient/p1",
            "gp_any": "Practitioner/p1",
            "gp_patient": None,
        }
    ]


def test_this_at_the_top_of_an_expression() -> None:
    # fhirpathpy alone fails on a top-level $this; a trailing comment must not break our fix.
    view = _view(("given", "$this // the given name\n"), ("i", "%rowIndex"), forEach="name.given")
    assert run_view(view, [PATIENT]) == [{"given": "Ada", "i": 0}, {"given": "Bo", "i": 1}]


def test_cells_keep_fhirpath_values() -> None:
    view = _view(("d", "2.5 * 2"), ("t", "@2020-01-01 + 1 day"), ("other", "'x'"))
    observation = {"resourceType": "Observation", "id": "o1"}
    assert run_view(view, [observation, PATIENT]) == [
        {"d": Decimal("5.0"), "t": "2020-01-02", "other": "x"}
    ]


def test_a_missing_suite_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        load_cases(tmp_path / "nowhere")
