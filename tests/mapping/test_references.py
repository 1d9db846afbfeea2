from __future__ import annotations

from mapping.fhir.references import Reference, parse_reference, reference_id


def test_every_shape_a_reference_comes_in() -> None:
    assert parse_reference("Encounter/e1") == Reference("Encounter", "e1")
    assert parse_reference({"reference": "Patient/p1"}) == Reference("Patient", "p1")
    assert parse_reference([{"reference": "Encounter/e1"}, {"reference": "Encounter/e2"}]) == (
        Reference("Encounter", "e1")
    )
    absolute = parse_reference("https://ehr.example.org/fhir/Encounter/e1/_history/3")
    assert absolute == Reference("Encounter", "e1", "https://ehr.example.org/fhir")
    assert absolute.relative == "Encounter/e1"
    for nothing in (None, "", "#contained", {"display": "x"}, [], "e1", "encounter/e1", 5):
        assert parse_reference(nothing) is None
    assert reference_id({"reference": "Patient/p1"}, "Patient") == "p1"
    assert reference_id({"reference": "Patient/p1"}, "Group") is None
