"""Review is per task: a turn settles the homework it is about; a general follow-up settles
what no specific turn did; homework nobody followed up is not-reviewed."""

from __future__ import annotations

from typing import Any

from mapping.domain import Detection, HomeworkLabel, MicroDialogue, SourcePosition, Turn
from mapping.fhir.context import ReviewStatus
from mapping.review_matching import match_reviews

AT = SourcePosition("line", 1)


def review(text: str, reply: str = "", confidence: float = 0.9, index: int = 0) -> Detection:
    therapist = Turn("therapist", "T", text, AT, AT)
    client = Turn("client", "C", reply, AT, AT) if reply else None
    return Detection(MicroDialogue(index, therapist, client), HomeworkLabel.NONE, True,
                     0.8, confidence)  # fmt: skip


def task(tid: str, quote: str, code: str) -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "id": tid,
        "description": quote,
        "code": {"coding": [{"code": code}]},
        "input": [{"valueString": quote}],
    }


BREATHING = task("breathing", "Practise the slow breathing exercise every evening.", "practice")
DIARY = task("diary", "Keep a panic diary: note when the attacks come.", "journal")


def outcomes(found: list[Any]) -> dict[str, tuple[ReviewStatus, str | None]]:
    return {
        e.task["id"]: (e.outcome, e.evidence.dialogue.therapist.text if e.evidence else None)
        for e in found
    }


def test_a_turn_about_one_task_reviews_only_that_task() -> None:
    turn = review("How did the breathing go in the evenings?", "It helped me fall asleep.")
    assert outcomes(match_reviews([BREATHING, DIARY], [turn])) == {
        "breathing": (ReviewStatus.REVIEWED, turn.dialogue.therapist.text),
        "diary": (ReviewStatus.NOT_REVIEWED, None),
    }


def test_each_task_quotes_the_turn_that_reviewed_it() -> None:
    breath = review("Tell me about the breathing.", index=3)
    diary = review("Did you bring the diary with the attacks written down?", index=7)
    found = outcomes(match_reviews([BREATHING, DIARY], [diary, breath]))
    assert found["breathing"] == (ReviewStatus.REVIEWED, breath.dialogue.therapist.text)
    assert found["diary"] == (ReviewStatus.REVIEWED, diary.dialogue.therapist.text)


def test_a_general_follow_up_settles_what_no_specific_turn_did() -> None:
    general = review("So, did you manage the things we agreed last week?", "Mostly, yes.")
    specific = review("And the breathing?", confidence=0.6)
    found = outcomes(match_reviews([BREATHING, DIARY], [general, specific]))
    assert found["breathing"][1] == "And the breathing?"
    assert found["diary"] == (ReviewStatus.REVIEWED, general.dialogue.therapist.text)


def test_no_review_turn_leaves_every_task_not_reviewed() -> None:
    found = match_reviews([BREATHING, DIARY], [])
    assert {e.outcome for e in found} == {ReviewStatus.NOT_REVIEWED}


def test_category_words_count_and_shared_words_count_less() -> None:
    reading = task("reading", "Read chapter two of the anxiety workbook.", "learn")
    walking = task("walk", "Go for a ten minute walk after lunch.", "take-action")
    turn = review("Did you get to the book?")  # "book" is a learn word, in no quote
    assert outcomes(match_reviews([reading, walking], [turn]))["reading"][0] is (
        ReviewStatus.REVIEWED
    )
    assert outcomes(match_reviews([reading, walking], [turn]))["walk"][0] is (
        ReviewStatus.NOT_REVIEWED
    )


def test_the_same_input_gives_the_same_answer() -> None:
    turns = [review("How was the breathing practice?"), review("Any panic this week?", index=2)]
    assert outcomes(match_reviews([BREATHING, DIARY], turns)) == outcomes(
        match_reviews([BREATHING, DIARY], list(reversed(turns)))
    )
