"""Probabilities -> detections: the operating point decides, long turns name their evidence."""

from __future__ import annotations

import numpy as np

from fhir_adapter.pipeline.detect import detections_from
from fhir_adapter.pipeline.records import detection_from_json, detection_to_json
from inference_server.classifier import DialoguePredictions, Predictions
from inference_server.decision import OperatingPoint
from inference_server.windows import expand
from mapping.dialogues import dialogue_turns
from mapping.domain import HomeworkLabel, MicroDialogue, Role, SourcePosition, Turn

TASK = "Before we next meet, could you write down each worrying thought in the notebook?"
FILLER = " ".join(f"We talked about part {i} of your week and how it felt." for i in range(12))


def _dialogue(index: int, therapist: str) -> MicroDialogue:
    where = SourcePosition("line", index + 1)
    client = Turn(Role.CLIENT, "C", "OK.", where, where)
    return MicroDialogue(index, Turn(Role.THERAPIST, "T", therapist, where, where), client)


def _predict(dialogues: list[MicroDialogue]) -> DialoguePredictions:
    """A stand-in model: homework exactly where a window quotes the task."""
    expanded = expand([dialogue_turns(d) for d in dialogues])
    label = np.tile(
        np.array([0.02, 0.02, 0.02, 0.02, 0.92], np.float32), (len(expanded.windows), 1)
    )
    for k, window in enumerate(expanded.windows):
        if TASK in window.text:
            label[k] = [0.05, 0.05, 0.8, 0.05, 0.05]
    review = np.full(len(expanded.windows), 0.1, np.float32)
    return DialoguePredictions.reduced(expanded, Predictions(label, review))


def test_a_task_mid_way_through_a_long_turn_is_found_and_quoted() -> None:
    dialogues = [_dialogue(0, "How was your week?"), _dialogue(1, f"{FILLER} {TASK} {FILLER}")]
    found = detections_from(dialogues, _predict(dialogues), OperatingPoint())
    (long_turn,) = found
    assert long_turn.dialogue.index == 1 and long_turn.label is HomeworkLabel.JOURNAL
    assert long_turn.confidence == np.float32(0.8)
    assert long_turn.evidence is not None and TASK in long_turn.evidence
    assert len(long_turn.evidence) < len(long_turn.dialogue.therapist.text) / 2
    # Stored for the draft step and read back unchanged.
    assert detection_from_json(detection_to_json(long_turn)) == long_turn


def test_the_operating_point_decides_and_a_short_turn_has_no_separate_evidence() -> None:
    dialogues = [_dialogue(0, TASK)]
    preds = _predict(dialogues)
    # P(homework) is 0.95 here: called at 0.9, not at 0.99.
    (kept,) = detections_from(dialogues, preds, OperatingPoint(homework=0.9))
    assert kept.evidence is None and kept.label is HomeworkLabel.JOURNAL
    assert detections_from(dialogues, preds, OperatingPoint(homework=0.99)) == []
    strict = detections_from(dialogues, preds, OperatingPoint(homework=0.99), keep_none=True)
    assert strict[0].label is HomeworkLabel.NONE
    assert strict[0].confidence == np.float32(0.05)  # the probability of what was decided
