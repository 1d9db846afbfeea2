"""Review of earlier homework: the pure Task update and the default per-session policy."""

from __future__ import annotations

import copy
import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest

from mapping.domain import SourcePosition
from mapping.errors import ResourceError
from mapping.fhir import (
    EarlierTask,
    Ref,
    ReviewStatus,
    as_json,
    problems,
    review_outcomes,
    review_task,
)
from mapping.fhir.codes import CS_REVIEW_STATUS
from tests.mapping import golden
from tests.mapping.fhir_cases import load_case

NOW = datetime(2024, 5, 9, 18, 0, tzinfo=UTC)
LATER = Ref("Encounter/enc-0509")


def earlier_task(n: int = 0) -> dict[str, Any]:
    task: dict[str, Any] = golden.load("fhir", "review-earlier")["earlier"][n]["task"]
    return task


def status(task: dict[str, Any]) -> str:
    codings = task["businessStatus"]["coding"]
    [code] = [c["code"] for c in codings if c["system"] == CS_REVIEW_STATUS]
    return str(code)


def outputs(task: dict[str, Any]) -> dict[str, Any]:
    return {o["type"]["coding"][0]["code"]: o for o in task.get("output", [])}


def test_reviewed_keeps_identity_and_records_the_review() -> None:
    before = earlier_task()
    after = as_json(
        review_task(
            before,
            ReviewStatus.REVIEWED,
            encounter=LATER,
            now=NOW,
            quote="  How did the thought log go?  ",
            position=SourcePosition("line", 7),
            confidence=0.876543,
        )
    )
    assert problems(after) == []
    assert (after["id"], after["identifier"]) == (before["id"], before["identifier"])
    assert status(after) == "reviewed" and status(before) == "awaiting-review"
    out = outputs(after)
    assert out["review-encounter"]["valueReference"] == {"reference": "Encounter/enc-0509"}
    assert out["review-quote"]["valueString"] == "How did the thought log go?"
    assert out["review-quote"]["extension"][0]["valueDecimal"] == 0.8765
    assert out["review-position"]["valueString"] == "line 7"
    assert after["lastModified"] == "2024-05-09T18:00:00Z"
    # Everything that is not the review is unchanged.
    for key in ("input", "code", "description", "basedOn", "for", "encounter", "authoredOn"):
        assert after[key] == before[key], key
    assert "output" not in before, "the input Task is not modified"


def test_accepts_a_model_object_and_replaces_an_earlier_review() -> None:
    first = review_task(
        earlier_task(), ReviewStatus.NOT_REVIEWED, encounter=Ref("Encounter/enc-0502"), now=NOW
    )
    again = as_json(
        review_task(first, ReviewStatus.REVIEWED, encounter=LATER, now=NOW, quote="Did you?")
    )
    out = outputs(again)
    assert out["review-encounter"]["valueReference"]["reference"] == "Encounter/enc-0509"
    assert [o["type"]["coding"][0]["code"] for o in again["output"]] == [
        "review-encounter",
        "review-quote",
    ]


def test_input_task_is_not_modified() -> None:
    task = earlier_task()
    task["meta"] = {"versionId": "3"}  # no security label yet: the update adds one
    snapshot = copy.deepcopy(task)
    after = as_json(review_task(task, ReviewStatus.NOT_REVIEWED, encounter=LATER, now=NOW))
    assert task == snapshot
    assert after["meta"]["security"][0]["code"] == "AIAST"


def test_keeps_outputs_that_are_not_reviews() -> None:
    task = earlier_task()
    task = {**task, "output": [{"type": {"text": "clinician note"}, "valueString": "kept"}]}
    after = as_json(review_task(task, ReviewStatus.NOT_REVIEWED, encounter=LATER, now=NOW))
    assert after["output"][0] == {"type": {"text": "clinician note"}, "valueString": "kept"}
    assert status(after) == "not-reviewed"


@pytest.mark.parametrize(
    ("change", "kwargs", "message"),
    [
        ({}, {"outcome": ReviewStatus.REVIEWED}, "needs the quote"),
        ({}, {"outcome": ReviewStatus.AWAITING}, "not a review outcome"),
        ({"identifier": []}, {}, "only Tasks drafted by homework-fhir"),
        ({"resourceType": "CarePlan"}, {}, "expected a Task"),
        ({}, {"encounter": Ref("Patient/p1")}, "must reference an Encounter"),
        ({}, {"confidence": 1.5, "quote": "x", "outcome": ReviewStatus.REVIEWED}, "probability"),
    ],
)
def test_refusals(change: dict[str, Any], kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"outcome": ReviewStatus.NOT_REVIEWED, "encounter": LATER, "now": NOW}
    args.update(kwargs)
    outcome = args.pop("outcome")
    with pytest.raises(ResourceError, match=message):
        review_task({**earlier_task(), **change}, outcome, **args)


def test_policy_reviews_awaiting_tasks_with_the_most_confident_review_turn() -> None:
    args = load_case(golden.load("fhir", "review-earlier"))
    review_turn = args["detections"][0]
    weaker = dataclasses.replace(review_turn, review_confidence=0.6)
    tasks = [earlier_task(0), earlier_task(1)]
    outcomes = review_outcomes(tasks, [args["detections"][1], weaker, review_turn])
    assert [o.outcome for o in outcomes] == [ReviewStatus.REVIEWED, ReviewStatus.REVIEWED]
    assert all(o.evidence is review_turn for o in outcomes)


def test_policy_marks_not_reviewed_without_review_turns_and_skips_settled_tasks() -> None:
    args = load_case(golden.load("fhir", "review-earlier"))
    settled = as_json(
        review_task(earlier_task(1), ReviewStatus.REVIEWED, encounter=LATER, now=NOW, quote="x")
    )
    outcomes = review_outcomes([earlier_task(0), settled], [args["detections"][1]])
    assert outcomes == [EarlierTask(earlier_task(0), ReviewStatus.NOT_REVIEWED)]


def test_reviewed_earlier_task_needs_evidence() -> None:
    with pytest.raises(ResourceError, match="needs the review detection"):
        EarlierTask(earlier_task(), ReviewStatus.REVIEWED)


def test_a_clinician_decided_task_keeps_its_label_and_the_review_is_labelled_ai() -> None:
    from mapping.fhir.codes import AIAST, EXT_INLINE_SECURITY_LABEL, clinician_asserted_ai_reported

    approved = earlier_task()
    approved["status"], approved["intent"] = "requested", "plan"
    approved["meta"] = {"security": [clinician_asserted_ai_reported()]}
    added = copy.deepcopy(approved)
    added.pop("meta")
    for task in (approved, added):
        after = as_json(
            review_task(task, ReviewStatus.REVIEWED, encounter=LATER, now=NOW, quote="Did you?")
        )
        assert problems(after) == []
        assert after.get("meta", {}).get("security") == task.get("meta", {}).get("security")
        for output in outputs(after).values():
            [label] = output["extension"][-1:]
            assert label["url"] == EXT_INLINE_SECURITY_LABEL
            assert label["valueCoding"]["code"] == AIAST
    # A draft keeps the resource-level AI label and no inline one.
    draft = as_json(
        review_task(earlier_task(), ReviewStatus.NOT_REVIEWED, encounter=LATER, now=NOW)
    )
    assert [s["code"] for s in draft["meta"]["security"]] == [AIAST]
    assert all("extension" not in o for o in draft["output"])
