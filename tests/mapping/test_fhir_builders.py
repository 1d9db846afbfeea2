"""Detections -> FHIR: golden files per case, R4B validation, and the profile elements we claim."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import Any

import pytest

from mapping.errors import ResourceError
from mapping.fhir import (
    SessionResources,
    as_json,
    build_session_resources,
    problems,
    transaction_bundle,
)
from mapping.fhir.codes import (
    AI_DEVICE_TYPE,
    AIAST,
    CAREPLAN_CATEGORY,
    CS_HOMEWORK_CATEGORY,
    CS_REVIEW_STATUS,
    CS_TASK_PARAMETER,
    EXT_AI_CONFIDENCE,
    LOINC,
    PROFILE_AI_DEVICE,
    PROFILE_AI_MODEL_CARD,
    PROFILE_AI_PROVENANCE,
    PROFILE_CAREPLAN,
    PROFILE_DOCUMENTREFERENCE,
    PROFILE_PROVENANCE,
    US_CORE_DOCREF_CATEGORY,
    V3_OBSERVATION_VALUE,
)
from tests.mapping import golden
from tests.mapping.fhir_cases import load_case

AREA = "fhir"
CASES = golden.cases(AREA)


def build(case: str) -> tuple[dict[str, Any], SessionResources]:
    data = golden.load(AREA, case)
    args = load_case(data)
    ctx, detections, model = args.pop("ctx"), args.pop("detections"), args.pop("model")
    return data, build_session_resources(ctx, detections, model, **args)


def dump(r: SessionResources) -> dict[str, Any]:
    note = as_json(r.note)
    texts = {
        c["attachment"]["contentType"]: base64.b64decode(c["attachment"]["data"]).decode("utf-8")
        for c in note["content"]
    }
    return {
        "careplan": as_json(r.careplan) if r.careplan else None,
        "tasks": [as_json(t) for t in r.tasks],
        "reviewed_tasks": [as_json(t) for t in r.reviewed_tasks],
        "device": as_json(r.device),
        "model_card": as_json(r.model_card),
        "provenance": as_json(r.provenance) if r.provenance else None,
        "note": note,
        "communication": as_json(r.communication),
        # Decoded attachments, so that a reviewer can read the note in the golden file.
        "note_text": texts["text/plain"],
        "note_html": texts["text/html"],
    }


def codes(concepts: list[dict[str, Any]] | dict[str, Any], system: str) -> set[str]:
    items = concepts if isinstance(concepts, list) else [concepts]
    return {c["code"] for cc in items for c in cc.get("coding", []) if c.get("system") == system}


def has_aiast(resource: dict[str, Any]) -> bool:
    return any(
        s.get("system") == V3_OBSERVATION_VALUE and s.get("code") == AIAST
        for s in resource.get("meta", {}).get("security", [])
    )


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    _, resources = build(case)
    golden.check(AREA, case, dump(resources))


@pytest.mark.parametrize("case", CASES)
def test_every_resource_validates_with_its_profiles(case: str) -> None:
    _, r = build(case)
    for resource in [*r.store_resources(), *r.chart_resources(), r.device, r.model_card]:
        assert problems(resource) == [], resource.get_resource_type()


def test_cases_cover_what_they_claim() -> None:
    assert {"two-homework", "no-homework", "review-earlier", "review-only"} <= set(CASES)


@pytest.mark.parametrize("case", CASES)
def test_tasks(case: str) -> None:
    data, r = build(case)
    homework = sorted(
        (d for d in data["detections"] if d["label"] != "none"), key=lambda d: d["index"]
    )
    assert len(r.tasks) == len(homework)
    for task, det in zip(r.tasks, homework, strict=True):
        t = as_json(task)
        assert (t["status"], t["intent"]) == ("draft", "proposal")
        assert codes(t["code"], CS_HOMEWORK_CATEGORY) == {det["label"].replace("_", "-")}
        assert codes(t["businessStatus"], CS_REVIEW_STATUS) == {"awaiting-review"}
        assert t["for"]["reference"] == data["context"]["patient"]["reference"]
        assert t["encounter"]["reference"] == data["context"]["encounter"]["reference"]
        assert r.careplan is not None
        assert t["basedOn"] == [{"reference": f"CarePlan/{r.careplan.id}"}]
        assert t["id"] == t["identifier"][0]["value"]
        inputs = {i["type"]["coding"][0]["code"]: i for i in t["input"]}
        assert inputs["therapist-quote"]["valueString"] == det["therapist"]["text"]
        assert (
            inputs["source-document"]["valueReference"]["reference"]
            == (data["context"]["transcript"]["reference"])
        )
        assert str(det["therapist"]["first"]["index"]) in inputs["source-position"]["valueString"]
        if det.get("client"):
            assert inputs["client-reply"]["valueString"] == det["client"]["text"]
        [confidence] = [e for e in t["extension"] if e["url"] == EXT_AI_CONFIDENCE]
        assert confidence["valueDecimal"] == pytest.approx(det["confidence"], abs=1e-4)
        assert has_aiast(t)


@pytest.mark.parametrize("case", CASES)
def test_careplan(case: str) -> None:
    data, r = build(case)
    if not r.tasks:
        assert r.careplan is None
        return
    assert r.careplan is not None
    plan = as_json(r.careplan)
    assert PROFILE_CAREPLAN in plan["meta"]["profile"]
    assert has_aiast(plan)
    assert (plan["status"], plan["intent"]) == ("draft", "proposal")
    assert codes(plan["category"], CAREPLAN_CATEGORY) == {"assess-plan"}
    assert codes(plan["category"], CS_HOMEWORK_CATEGORY) == {"homework"}
    assert plan["subject"]["reference"] == data["context"]["patient"]["reference"]
    assert plan["encounter"]["reference"] == data["context"]["encounter"]["reference"]
    assert [a["reference"]["reference"] for a in plan["activity"]] == [
        f"Task/{t.id}" for t in r.tasks
    ]
    assert plan["text"]["status"] == "generated"
    div = ET.fromstring(plan["text"]["div"])
    assert len(div.findall(".//{http://www.w3.org/1999/xhtml}li")) == len(r.tasks)


@pytest.mark.parametrize("case", CASES)
def test_note(case: str) -> None:
    data, r = build(case)
    note = as_json(r.note)
    assert PROFILE_DOCUMENTREFERENCE in note["meta"]["profile"]
    assert has_aiast(note)
    assert "id" not in note, "the EHR assigns the note's id"
    assert note["status"] == "current"
    assert note["docStatus"] == data.get("options", {}).get("doc_status", "preliminary")
    assert codes(note["type"], LOINC) == {"11506-3"}
    assert codes(note["category"], US_CORE_DOCREF_CATEGORY) == {"clinical-note"}
    assert note["context"]["encounter"] == [data["context"]["encounter"]]
    assert note["context"]["period"]["end"]
    assert note["author"][0]["reference"] == data["context"]["practitioners"][0]["reference"]
    kinds = [c["attachment"]["contentType"] for c in note["content"]]
    assert kinds == ["text/plain", "text/html"]
    text = base64.b64decode(note["content"][0]["attachment"]["data"]).decode()
    html = base64.b64decode(note["content"][1]["attachment"]["data"]).decode()
    ET.fromstring(html.removeprefix("<!DOCTYPE html>"))  # well-formed XHTML
    for det in data["detections"]:
        if det["label"] != "none":
            assert det["therapist"]["text"] in text
    for earlier in data.get("earlier", []):
        assert earlier["task"]["description"] in text
    if not any(d["label"] != "none" for d in data["detections"]):
        assert "no homework detected" in text
    assert data["model"]["version"] in text and "AI draft" in text


@pytest.mark.parametrize("case", CASES)
def test_communication(case: str) -> None:
    data, r = build(case)
    message = as_json(r.communication)
    assert has_aiast(message)
    assert message["status"] == data.get("options", {}).get("communication_status", "completed")
    assert [p["reference"] for p in message["recipient"]] == [
        p["reference"] for p in data["context"]["practitioners"]
    ]
    note_text = base64.b64decode(as_json(r.note)["content"][0]["attachment"]["data"]).decode()
    assert message["payload"][0]["contentString"] == note_text


@pytest.mark.parametrize("case", CASES)
def test_provenance_and_device(case: str) -> None:
    data, r = build(case)
    device = as_json(r.device)
    assert PROFILE_AI_DEVICE in device["meta"]["profile"]
    assert codes(device["type"], AI_DEVICE_TYPE) == {"Artificial-Intelligence"}
    assert device["deviceName"][0]["name"] == data["model"]["name"]
    assert device["version"][0]["value"] == data["model"]["version"]
    card = as_json(r.model_card)
    assert PROFILE_AI_MODEL_CARD in card["meta"]["profile"]
    assert card["content"][0]["attachment"]["url"] == data["model"]["model_card_url"]
    if r.provenance is None:
        assert not r.tasks and not r.reviewed_tasks and r.store_resources() == []
        return
    prov = as_json(r.provenance)
    targets = [t["reference"] for t in prov["target"]]
    expected = ([f"CarePlan/{r.careplan.id}"] if r.careplan else []) + [
        f"Task/{t.id}" for t in (*r.tasks, *r.reviewed_tasks)
    ]
    assert targets == expected
    [agent] = prov["agent"]
    assert agent["who"]["reference"] == f"Device/{r.device.id}"
    assert codes(agent["role"], AI_DEVICE_TYPE) == {"Artificial-Intelligence"}
    assert codes(prov["reason"], V3_OBSERVATION_VALUE) == {AIAST}
    entities = {e["role"]: e["what"]["reference"] for e in prov["entity"]}
    assert entities == {
        "source": data["context"]["transcript"]["reference"],
        "derivation": f"DocumentReference/{r.model_card.id}",
    }
    organization = data["context"].get("organization")
    assert PROFILE_AI_PROVENANCE in prov["meta"]["profile"]
    if organization:
        assert agent["onBehalfOf"]["reference"] == organization["reference"]
        assert PROFILE_PROVENANCE in prov["meta"]["profile"]
    else:
        # provenance-1 needs onBehalfOf for a Device: without it we must not claim US Core.
        assert "onBehalfOf" not in agent
        assert PROFILE_PROVENANCE not in prov["meta"]["profile"]
    assert not has_aiast(prov) and not has_aiast(device)


def test_review_outputs_in_review_case() -> None:
    data, r = build("review-earlier")
    reviewed, not_reviewed = (as_json(t) for t in r.reviewed_tasks)
    for before, after in zip(data["earlier"], (reviewed, not_reviewed), strict=True):
        assert after["identifier"] == before["task"]["identifier"]
        assert after["id"] == before["task"]["id"]
        assert after["input"] == before["task"]["input"]
        # Settled by this session: dated from its end, not from when the pipeline ran.
        assert after["lastModified"] == data["context"]["period_end"]
    assert codes(reviewed["businessStatus"], CS_REVIEW_STATUS) == {"reviewed"}
    assert codes(not_reviewed["businessStatus"], CS_REVIEW_STATUS) == {"not-reviewed"}
    outputs = {o["type"]["coding"][0]["code"]: o for o in reviewed["output"]}
    assert set(outputs) == {"review-encounter", "review-quote", "review-position"}
    assert outputs["review-encounter"]["valueReference"]["reference"] == "Encounter/enc-0502b"
    assert outputs["review-quote"]["valueString"] == data["detections"][0]["therapist"]["text"]
    assert outputs["review-quote"]["extension"][0]["valueDecimal"] == pytest.approx(0.91)
    assert outputs["review-position"]["valueString"] == "cue 2 at 00:00:35"
    assert [o["type"]["coding"][0]["code"] for o in not_reviewed["output"]] == ["review-encounter"]
    assert all(o["type"]["coding"][0]["system"] == CS_TASK_PARAMETER for o in reviewed["output"])


def test_narrative_escapes_markup_from_the_transcript() -> None:
    _, r = build("two-homework")
    assert r.careplan is not None
    div = r.careplan.text.div if r.careplan.text else ""
    assert "&lt;honestly&gt;" in div and "&amp; tell" in div
    root = ET.fromstring(div)
    assert "<honestly>" in "".join(root.itertext())


def test_store_resources_order_and_transaction() -> None:
    _, r = build("two-homework")
    kinds = [x.get_resource_type() for x in r.store_resources()]
    assert kinds == ["Device", "DocumentReference", "CarePlan", "Task", "Task", "Provenance"]
    bundle = as_json(transaction_bundle(r.store_resources(), base_url="https://store.test/fhir/"))
    assert bundle["type"] == "transaction"
    for entry, resource in zip(bundle["entry"], r.store_resources(), strict=True):
        rtype, rid = resource.get_resource_type(), resource.id
        assert entry["request"] == {"method": "PUT", "url": f"{rtype}/{rid}"}
        assert entry["fullUrl"] == f"https://store.test/fhir/{rtype}/{rid}"
    # Every reference between store resources points at a resource in the same transaction.
    inside = {f"{x.get_resource_type()}/{x.id}" for x in r.store_resources()}
    plan = as_json(r.careplan) if r.careplan else {}
    refs = [a["reference"]["reference"] for a in plan["activity"]] + [plan["author"]["reference"]]
    refs += [t.basedOn[0].reference for t in r.tasks if t.basedOn]
    assert set(refs) <= inside
    with pytest.raises(ResourceError, match="no id"):
        transaction_bundle([r.note], base_url="https://store.test/fhir")


def test_two_detections_for_one_turn_are_refused() -> None:
    data = golden.load(AREA, "two-homework")
    args = load_case(data)
    twice = [*args["detections"], args["detections"][1]]
    with pytest.raises(ResourceError, match="two detections for the same turn"):
        build_session_resources(args["ctx"], twice, args["model"], now=args["now"])


def test_dates_are_the_sessions_and_now_is_only_the_provenance_time() -> None:
    data = golden.load(AREA, "two-homework")
    args = load_case(data)
    a = build_session_resources(args["ctx"], args["detections"], args["model"], now=args["now"])
    b = build_session_resources(
        args["ctx"], args["detections"], args["model"], now=datetime(2030, 1, 1, tzinfo=UTC)
    )
    assert [t.id for t in a.tasks] == [t.id for t in b.tasks]
    start, end = data["context"]["period_start"], data["context"]["period_end"]
    for built in (a, b):  # processed now or in 2030: the same session dates
        assert {as_json(t)["authoredOn"] for t in built.tasks} == {start}
        assert built.careplan is not None and as_json(built.careplan)["created"] == start
        assert as_json(built.note)["date"] == end
        assert as_json(built.communication)["sent"] == end
    assert a.provenance is not None and b.provenance is not None
    assert as_json(a.provenance)["recorded"] != as_json(b.provenance)["recorded"]
