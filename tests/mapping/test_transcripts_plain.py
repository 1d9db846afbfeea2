"""Plain-text reader: speaker lines, timestamps, continuation lines, and its errors."""

from __future__ import annotations

import pytest

from mapping.domain import Role, SourcePosition
from mapping.errors import TranscriptError
from mapping.transcripts import read_plain


@pytest.mark.parametrize(
    ("line", "speaker", "text", "start"),
    [
        ("Dr. Lee: How are you?", "Dr. Lee", "How are you?", None),
        ("[00:01:02] Dr. Lee: How are you?", "Dr. Lee", "How are you?", 62.0),
        ("00:01:02 Dr. Lee: How are you?", "Dr. Lee", "How are you?", 62.0),
        ("(01:02) Dr. Lee: How are you?", "Dr. Lee", "How are you?", 62.0),
        ("1:00:02.5 - Dr. Lee: How are you?", "Dr. Lee", "How are you?", 3602.5),
        ("Dr. Lee (00:01:02): How are you?", "Dr. Lee", "How are you?", 62.0),
        ("Dr. Lee [75:30]: How are you?", "Dr. Lee", "How are you?", 4530.0),
        ("王医生\uff1a你好", "王医生", "你好", None),  # a full-width colon
        ("  Mary-Jo O'Neil:   spaced   out  ", "Mary-Jo O'Neil", "spaced out", None),
    ],
)
def test_speaker_lines(line: str, speaker: str, text: str, start: float | None) -> None:
    (utterance,) = read_plain(line).utterances
    assert (utterance.speaker, utterance.text) == (speaker, text)
    assert utterance.position == SourcePosition("line", 1, start, None)


def test_continuation_lines_and_blank_lines() -> None:
    transcript = read_plain(
        "T: Let's plan the week.\n\nC: Okay.\nI will try\n  to walk.\n[00:00:09]\nT: Good.\n"
    )
    assert [(u.speaker, u.text, u.position.index) for u in transcript.utterances] == [
        ("T", "Let's plan the week.", 1),
        ("C", "Okay.", 3),
        ("C", "I will try", 4),
        ("C", "to walk.", 5),
        ("T", "Good.", 7),
    ]
    assert [u.role for u in transcript.utterances] == [Role.THERAPIST] + [Role.CLIENT] * 3 + [
        Role.THERAPIST
    ]


def test_speaker_labels_differing_in_case_are_one_speaker() -> None:
    transcript = read_plain("Dr. Lee: Hi.\nMaria: Hi.\nDR.  LEE: So.\n")
    assert [u.speaker for u in transcript.utterances] == ["Dr. Lee", "Maria", "Dr. Lee"]
    assert len(transcript.roles) == 2


def test_not_speakers_stay_continuations() -> None:
    transcript = read_plain(
        "Dr. Lee: Look at https://example.org/sleep\nWell, as I said: it helps.\n"
    )
    assert [u.speaker for u in transcript.utterances] == ["Dr. Lee", "Dr. Lee"]
    assert transcript.utterances[1].text == "Well, as I said: it helps."


def test_crlf_and_bom() -> None:
    transcript = read_plain("\ufeffA: one\r\nB: two\r\n".encode())
    assert [u.text for u in transcript.utterances] == ["one", "two"]


@pytest.mark.parametrize(
    ("content", "position"),
    [
        (b"", "(line 1)"),
        (b"\n  \n\n", "(lines 1-4)"),
        (b"just some words without a speaker\n", "(line 1)"),
        (b"\n\n[00:00:01] hello there\n", "(line 3)"),
        (b"A: fine\n[00:61:00] B: no\n", "(line 2)"),
        (b"A: fine\nB (1:02:75): no\n", "(line 2)"),
        (b"A: caf\xe9\n", "(byte 7)"),
        (b"A: ok\nB: \x00\x01\x02", "(line 2)"),
    ],
)
def test_errors_name_the_position(content: bytes, position: str) -> None:
    with pytest.raises(TranscriptError) as caught:
        read_plain(content)
    assert str(caught.value).endswith(position)
