"""Diarized JSON reader: accepted shapes, type checks, and errors naming the segment."""

from __future__ import annotations

import json

import pytest

from mapping.domain import SourcePosition
from mapping.errors import TranscriptError
from mapping.transcripts import read_diarized

SEGMENTS = [
    {"speaker": "S0", "start": 0, "end": 2.5, "text": "How was the week?"},
    {"speaker": "S1", "text": "Fine.", "words": []},
]


@pytest.mark.parametrize("data", [SEGMENTS, {"segments": SEGMENTS, "language": "en"}])
def test_accepted_shapes(data: object) -> None:
    transcript = read_diarized(json.dumps(data))
    assert [(u.speaker, u.text) for u in transcript.utterances] == [
        ("S0", "How was the week?"),
        ("S1", "Fine."),
    ]
    assert transcript.utterances[0].position == SourcePosition("segment", 1, 0.0, 2.5)
    assert transcript.utterances[1].position == SourcePosition("segment", 2, None, None)


def test_blank_segments_are_skipped_but_counted() -> None:
    data = [{"speaker": "S0", "text": "  "}, {"speaker": "S0", "text": "Hi"}]
    (utterance,) = read_diarized(json.dumps(data)).utterances
    assert utterance.position.index == 2


@pytest.mark.parametrize(
    ("data", "position", "words"),
    [
        ("", "(line 1, column 1)", "not valid JSON"),
        ('[{"speaker": "S0",\n "text": }]', "(line 2, column 10)", "not valid JSON"),
        ("[]", "(empty segment list)", "no utterances"),
        ('{"results": []}', "(top level)", "'segments'"),
        ('"just a string"', "(top level)", "list of segments"),
        ('{"resourceType": "DocumentReference"}', "(top level)", "--format fhir"),
        ('[{"speaker": "S0", "text": "a"}, 3]', "(segment 2)", "must be an object"),
        ('[{"speaker": 0, "text": "a"}]', "(segment 1)", "'speaker' must be"),
        ('[{"speaker": " ", "text": "a"}]', "(segment 1)", "'speaker' must be"),
        ('[{"speaker": "S0"}]', "(segment 1)", "'text' must be a string, not null"),
        ('[{"speaker": "S0", "text": ["a"]}]', "(segment 1)", "'text' must be a string"),
        ('[{"speaker": "S0", "text": "a", "start": "0:01"}]', "(segment 1)", "'start'"),
        ('[{"speaker": "S0", "text": "a", "start": true}]', "(segment 1)", "'start'"),
        ('[{"speaker": "S0", "text": "a", "end": -1}]', "(segment 1)", "'end'"),
        ('[{"speaker": "S0", "text": "a", "end": NaN}]', "(segment 1)", "finite"),
        ('[{"speaker": "S0", "text": "a", "start": 1e400}]', "(segment 1)", "finite"),
        ('[{"speaker": "S0", "text": "a", "start": 5, "end": 2}]', "(segment 1)", "before"),
        ('[{"speaker": "S0", "text": "\\ud800"}]', "(segment 1)", "Unicode"),
        ("[" * 100_000, "(top level)", "nested too deeply"),
    ],
)
def test_errors_name_the_segment(data: str, position: str, words: str) -> None:
    with pytest.raises(TranscriptError) as caught:
        read_diarized(data)
    assert str(caught.value).endswith(position)
    assert words in str(caught.value)


def test_wrong_type_messages_do_not_echo_values() -> None:
    with pytest.raises(TranscriptError) as caught:
        read_diarized('[{"speaker": "S0", "text": {"secret": "I feel awful"}}]')
    assert "awful" not in str(caught.value)
    assert "an object" in str(caught.value)
