"""Micro-dialogues: merging fragments, pairing therapist and client, the context window."""

from __future__ import annotations

import json

import pytest

from mapping.dialogues import (
    build_micro_dialogues,
    dialogue_record,
    dialogue_turns,
    merge_turns,
)
from mapping.domain import Role, SourcePosition, Utterance
from mapping.transcripts import read_plain

T, C, OTHER = Role.THERAPIST, Role.CLIENT, Role.OTHER


def _utterances(*spoken: tuple[str, Role, str]) -> list[Utterance]:
    return [
        Utterance(speaker, role, text, SourcePosition("segment", i, float(i), i + 0.5))
        for i, (speaker, role, text) in enumerate(spoken, start=1)
    ]


def test_merge_joins_fragments_and_drops_other_speakers() -> None:
    turns = merge_turns(
        _utterances(
            ("Lee", T, "How was"),
            ("Lee", T, "the week?"),
            ("Ana", C, "Good."),
            ("Interp", OTHER, "Bien."),
            ("Ana", C, "Really."),
            ("Lee", T, "Great."),
        )
    )
    assert [(t.speaker, t.text, t.first.index, t.last.index) for t in turns] == [
        ("Lee", "How was the week?", 1, 2),
        ("Ana", "Good. Really.", 3, 5),
        ("Lee", "Great.", 6, 6),
    ]


def test_pairs_each_therapist_turn_with_the_next_client_turn() -> None:
    dialogues = build_micro_dialogues(
        _utterances(
            ("Ana", C, "I'm late."),
            ("Lee", T, "No problem."),
            ("Ana", C, "Thanks."),
            ("Lee", T, "Shall we start?"),
            ("Kim", T, "I'm the co-therapist."),
            ("Ana", C, "Hi."),
            ("Lee", T, "Bye."),
        )
    )
    assert [
        (d.index, d.therapist.text, d.client.text if d.client else None) for d in dialogues
    ] == [
        (0, "No problem.", "Thanks."),
        (1, "Shall we start?", None),  # another therapist speaks next
        (2, "I'm the co-therapist.", "Hi."),
        (3, "Bye.", None),  # the transcript ends
    ]
    assert all(d.context == () for d in dialogues)


def test_context_window_holds_the_turns_just_before() -> None:
    spoken = _utterances(
        ("Ana", C, "c1"), ("Lee", T, "t1"), ("Ana", C, "c2"), ("Lee", T, "t2"), ("Ana", C, "c3")
    )
    first, second = build_micro_dialogues(spoken, context_turns=2)
    assert [t.text for t in first.context] == ["c1"]  # fewer at the start of the session
    assert [t.text for t in second.context] == ["t1", "c2"]
    assert dialogue_turns(second) == [
        ("therapist", "t1"),
        ("client", "c2"),
        ("therapist", "t2"),
        ("client", "c3"),
    ]
    (_, last) = build_micro_dialogues(spoken, context_turns=0)
    assert dialogue_turns(last) == [("therapist", "t2"), ("client", "c3")]


def test_negative_context_is_refused() -> None:
    with pytest.raises(ValueError, match="context_turns"):
        build_micro_dialogues([], context_turns=-1)


def test_record_is_json_and_spans_the_dialogue() -> None:
    transcript = read_plain("[00:00:05] Lee: How was it?\nAna: Fine.\n[00:00:20] Ana: Really.\n")
    (dialogue,) = build_micro_dialogues(transcript)
    record = json.loads(json.dumps(dialogue_record(dialogue)))
    assert record == {
        "index": 0,
        "roles": ["therapist", "client"],
        "speakers": ["Lee", "Ana"],
        "therapist": "How was it?",
        "client": "Fine. Really.",
        "context": [],
        "position": {"unit": "line", "index": 1, "last_index": 3, "start_s": 5.0, "end_s": 20.0},
    }


def test_therapist_only_dialogue_turns() -> None:
    (dialogue,) = build_micro_dialogues(_utterances(("Lee", T, "Anything else?")))
    assert dialogue_turns(dialogue) == [("therapist", "Anything else?")]
    assert dialogue_record(dialogue)["client"] is None
