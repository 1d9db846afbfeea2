"""Identifiers: processing the same session twice gives the same ones; other evidence, others."""

from __future__ import annotations

import dataclasses
import hashlib
import re

from mapping.domain import HomeworkLabel, SourcePosition
from mapping.fhir import SessionResources, as_json, build_session_resources
from mapping.fhir.codes import SID_CAREPLAN, SID_COMMUNICATION, SID_NOTE, SID_TASK
from mapping.fhir.identifiers import (
    careplan_value,
    normalize_reference,
    stable_value,
    task_value,
)
from tests.mapping import golden
from tests.mapping.fhir_cases import load_case

FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def _identifiers(r: SessionResources) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name in ("tasks", "reviewed_tasks"):
        out[name] = [t.identifier[0].value for t in getattr(r, name)]
    for name in ("careplan", "note", "communication", "device", "model_card"):
        resource = getattr(r, name)
        out[name] = [resource.identifier[0].value] if resource is not None else []
    # R4 Provenance has no identifier: its stable logical id plays that part.
    out["provenance"] = [r.provenance.id] if r.provenance else []
    return out


def _build(case: str, **changes: object) -> SessionResources:
    args = load_case(golden.load("fhir", case))
    args.update(changes)
    ctx, detections, model = args.pop("ctx"), args.pop("detections"), args.pop("model")
    return build_session_resources(ctx, detections, model, **args)


def test_same_session_twice_gives_identical_resources() -> None:
    for case in golden.cases("fhir"):
        first, second = _build(case), _build(case)
        assert _identifiers(first) == _identifiers(second)
        assert [as_json(x) for x in first.store_resources()] == [
            as_json(x) for x in second.store_resources()
        ]


def test_identifier_values_are_ids_and_unique_across_a_session() -> None:
    ids = _identifiers(_build("review-earlier"))
    values = [v for vs in ids.values() for v in vs]
    assert len(values) == len(set(values))
    assert all(FHIR_ID.match(v) for v in values)


def test_logical_id_equals_identifier_for_store_resources() -> None:
    r = _build("two-homework")
    for resource in (r.careplan, *r.tasks, r.device, r.model_card):
        assert resource.id == resource.identifier[0].value


def test_systems() -> None:
    r = _build("two-homework")
    assert r.careplan.identifier[0].system == SID_CAREPLAN
    assert {t.identifier[0].system for t in r.tasks} == {SID_TASK}
    assert r.note.identifier[0].system == SID_NOTE
    assert r.communication.identifier[0].system == SID_COMMUNICATION


def test_other_evidence_position_gives_another_task_identifier() -> None:
    args = load_case(golden.load("fhir", "two-homework"))
    det = args["detections"][1]
    therapist = det.dialogue.therapist
    moved = dataclasses.replace(
        det,
        dialogue=dataclasses.replace(
            det.dialogue,
            therapist=dataclasses.replace(therapist, first=SourcePosition("line", 99)),
        ),
    )
    relabelled = dataclasses.replace(det, label=HomeworkLabel.JOURNAL)
    base = _build("two-homework", detections=[det])
    other_position = _build("two-homework", detections=[moved])
    other_label = _build("two-homework", detections=[relabelled])
    ids = {x.tasks[0].identifier[0].value for x in (base, other_position, other_label)}
    assert len(ids) == 3
    # The CarePlan, note and Communication depend on the encounter only.
    assert base.careplan.id == other_position.careplan.id


def test_other_encounter_gives_other_identifiers_for_same_evidence() -> None:
    args = load_case(golden.load("fhir", "two-homework"))
    ctx = args["ctx"]
    other_ctx = dataclasses.replace(
        ctx, encounter=dataclasses.replace(ctx.encounter, reference="Encounter/enc-other")
    )
    a = _identifiers(_build("two-homework"))
    b = _identifiers(_build("two-homework", ctx=other_ctx))
    for name in ("tasks", "careplan", "note", "communication", "provenance"):
        assert set(a[name]).isdisjoint(b[name]), name
    assert a["device"] == b["device"]  # the model is the same


def test_derivation_is_the_documented_hash() -> None:
    expected = hashlib.sha256(b"task\x1fEncounter/e1\x1fline:12\x1ftake-action").hexdigest()
    assert task_value("Encounter/e1", SourcePosition("line", 12), "take-action") == expected[:32]
    assert stable_value("careplan", "Encounter/e1") == careplan_value("Encounter/e1")


def test_history_suffix_and_spaces_do_not_change_identifiers() -> None:
    assert normalize_reference(" Encounter/e1/_history/3 ") == "Encounter/e1"
    assert careplan_value("Encounter/e1/_history/3") == careplan_value("Encounter/e1")


def test_media_offsets_do_not_change_task_identifier() -> None:
    a = task_value("Encounter/e1", SourcePosition("cue", 4, 10.0, 12.0), "learn")
    b = task_value("Encounter/e1", SourcePosition("cue", 4), "learn")
    c = task_value("Encounter/e1", SourcePosition("segment", 4), "learn")
    assert a == b != c


def test_the_same_encounter_id_from_two_ehrs_gives_other_identifiers() -> None:
    """Two EHRs feeding one store can both have "Encounter/enc-1": the source (FHIR base) is
    part of the derivation; without one (a local backfill) the bare reference is."""
    ctx = load_case(golden.load("fhir", "two-homework"))["ctx"]
    one = dataclasses.replace(ctx, source="https://ehr-one.example.org/fhir/")
    two = dataclasses.replace(ctx, source="https://ehr-two.example.org/fhir")
    assert one.encounter_key == f"https://ehr-one.example.org/fhir/{ctx.encounter.reference}"
    local, a, b = (_identifiers(_build("two-homework", ctx=c)) for c in (ctx, one, two))
    for name in ("tasks", "careplan", "note", "communication", "provenance"):
        assert set(a[name]).isdisjoint(b[name]) and set(a[name]).isdisjoint(local[name]), name
    assert local == _identifiers(_build("two-homework"))  # unchanged without a source
