"""WebVTT reader: Teams voice spans, Zoom prefixes, empty and multi-line cues, and its errors."""

from __future__ import annotations

import pytest

from mapping.domain import SourcePosition
from mapping.errors import TranscriptError
from mapping.transcripts import read_vtt


def _cue(start: str, end: str, *lines: str, ident: str | None = None) -> str:
    head = f"{ident}\n" if ident else ""
    return head + f"{start} --> {end}\n" + "\n".join(lines) + "\n\n"


def test_voice_spans_prefixes_and_positions() -> None:
    text = "WEBVTT\n\n" + (
        _cue("00:00:01.000", "00:00:02.500", "<v.loud Ana>Hi <b>there</b></v>", ident="a/1-0")
        + _cue("00:00:03.000", "00:00:04.000", "Ben: Hello &lt;3")
        + _cue("00:00:04.000", "00:00:05.000", "still Ben,", "on two lines")
    )
    transcript = read_vtt(text)
    assert [(u.speaker, u.text) for u in transcript.utterances] == [
        ("Ana", "Hi there"),
        ("Ben", "Hello <3"),
        ("Ben", "still Ben, on two lines"),
    ]
    assert transcript.utterances[0].position == SourcePosition("cue", 1, 1.0, 2.5)
    assert transcript.utterances[2].position == SourcePosition("cue", 3, 4.0, 5.0)
    assert transcript.source_format == "vtt"


def test_prefix_only_on_the_first_line_of_a_cue() -> None:
    text = "WEBVTT\n\n" + _cue("00:00:01.000", "00:00:02.000", "Ana: The plan:", "Homework: walk")
    (utterance,) = read_vtt(text).utterances
    assert (utterance.speaker, utterance.text) == ("Ana", "The plan: Homework: walk")


def test_several_voices_in_one_cue_share_its_position() -> None:
    text = "WEBVTT\n\n" + _cue(
        "00:00:01.000", "00:00:03.000", "<v Ana>Really?</v> <v Ben>Yes.</v>", "<v Ben>Truly.</v>"
    )
    transcript = read_vtt(text)
    assert [(u.speaker, u.text) for u in transcript.utterances] == [
        ("Ana", "Really?"),
        ("Ben", "Yes. Truly."),
    ]
    assert {u.position.index for u in transcript.utterances} == {1}


def test_empty_cues_are_skipped_but_counted() -> None:
    text = "WEBVTT\n\n" + (
        _cue("00:00:01.000", "00:00:02.000")
        + _cue("00:00:02.000", "00:00:03.000", "<v Ana> </v>")
        + _cue("00:00:03.000", "00:00:04.000", "Ana: hi")
    )
    (utterance,) = read_vtt(text).utterances
    assert utterance.position.index == 3


def test_blank_lines_before_header_notes_and_styles_are_accepted() -> None:
    text = "\n\nWEBVTT - Teams\nKind: captions\n\nNOTE a comment\n\nSTYLE\n::cue {}\n\n" + _cue(
        "00:00:01.000", "00:00:02.000", "Ana: hi"
    )
    assert len(read_vtt(text.encode()).utterances) == 1


@pytest.mark.parametrize(
    ("text", "position"),
    [
        ("", "(line 1)"),
        ("\n\n", "(line 1)"),
        ("Ana: hello\n", "(line 1)"),
        ("\n\nhello\n", "(line 3)"),
        ("WEBVTT\n", "(no cue after the header)"),
        ("WEBVTT\n\n" + _cue("00:00:01.000", "00:00:02.000"), "(1 cues, none with text)"),
        # a bad timestamp in the second cue: minutes past 59
        (
            "WEBVTT\n\n"
            + _cue("00:00:01.000", "00:00:02.000", "A: x")
            + _cue("00:61:00.000", "00:62:00.000", "B: y"),
            "(cue 2, line 6)",
        ),
        # a timings line without milliseconds
        ("WEBVTT\n\n" + _cue("00:01", "00:02", "A: x"), "(cue 1, line 3)"),
        # two cues without the blank line between them
        (
            "WEBVTT\n\n"
            + _cue("00:00:01.000", "00:00:02.000", "A: x")
            + "00:00:03.000 --> 00:00:04.000\nB: y\n00:00:05.000 --> 00:00:06.000\nA: z\n",
            "(cue 3, line 8)",
        ),
        # an unknown cue setting
        ("WEBVTT\n\n00:00:01.000 --> 00:00:02.000 size:lots\nA: x\n", "(cue 1, line 3)"),
        # text that lost its timings line would be dropped silently by webvtt-py
        ("WEBVTT\n\n" + _cue("00:00:01.000", "00:00:02.000", "A: x") + "B: lost\n", "(line 6)"),
        ("WEBVTT\n\n" + _cue("00:00:01.000", "00:00:02.000", "no speaker"), "(cue 1)"),
        ("WEBVTT\n\n" + _cue("00:00:05.000", "00:00:02.000", "A: x"), "(cue 1)"),
    ],
)
def test_errors_name_the_position(text: str, position: str) -> None:
    with pytest.raises(TranscriptError) as caught:
        read_vtt(text)
    assert str(caught.value).endswith(position)


def test_malformed_cue_error_does_not_echo_the_text() -> None:
    text = "WEBVTT\n\n00:61:00.000 --> 00:62:00.000\nA: my secret\n"
    with pytest.raises(TranscriptError) as caught:
        read_vtt(text)
    assert "secret" not in str(caught.value)
