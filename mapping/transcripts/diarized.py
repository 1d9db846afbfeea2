"""Diarized JSON transcripts: speaker-labelled segments as speech-to-text tools write them.

Accepted shapes (anything else is an error naming the segment):

    [{"speaker": "SPEAKER_00", "start": 0.0, "end": 4.2, "text": "How was the week?"}, ...]
    {"segments": [ ...the same segments... ], ...other keys ignored}

- `speaker`: a non-empty string; `text`: a string (a blank one skips the segment);
- `start`, `end`: optional seconds, numbers >= 0 (or null), and `end` not before `start`;
- other keys (`words`, `confidence`, ...) are ignored.
Positions are segment numbers (1-based, in list order) with the segment's start and end.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from mapping.domain import RoleHints, SourcePosition, Transcript
from mapping.errors import TranscriptError
from mapping.transcripts.decode import decode_text, parse_json
from mapping.transcripts.fragments import Fragment, build_transcript, squash

_SHAPE = (
    "a diarized JSON transcript is a list of segments {speaker, start, end, text} "
    "or an object with such a list under 'segments'"
)


def read_diarized(content: bytes | str, hints: RoleHints | None = None) -> Transcript:
    """Read a diarized JSON transcript; raises `TranscriptError` naming the segment."""
    return read_segments(parse_json(decode_text(content)), hints)


def read_segments(data: object, hints: RoleHints | None = None) -> Transcript:
    """Read already-parsed JSON (see the module docstring for the accepted shapes)."""
    if isinstance(data, Mapping):
        if "resourceType" in data:
            raise TranscriptError(
                "this is a FHIR resource, not diarized segments; use --format fhir", "top level"
            )
        if "segments" not in data:
            raise TranscriptError(f"no 'segments' key; {_SHAPE}", "top level")
        data = data["segments"]
    if not isinstance(data, list):
        raise TranscriptError(_SHAPE, "top level")
    fragments: list[Fragment] = []
    for number, segment in enumerate(data, start=1):
        fragment = _fragment(segment, number)
        if fragment is not None:
            fragments.append(fragment)
    where = f"{len(data)} segments, none with text" if data else "empty segment list"
    return build_transcript(fragments, hints or RoleHints(), "json", where)


def _fragment(segment: object, number: int) -> Fragment | None:
    where = f"segment {number}"
    if not isinstance(segment, Mapping):
        raise TranscriptError(
            f"a segment must be an object with speaker, start, end and text, not {_kind(segment)}",
            where,
        )
    speaker = segment.get("speaker")
    if not isinstance(speaker, str) or not speaker.strip():
        raise TranscriptError(
            f"'speaker' must be a non-empty string such as \"SPEAKER_00\", not {_kind(speaker)}",
            where,
        )
    text = segment.get("text")
    if not isinstance(text, str):
        raise TranscriptError(f"'text' must be a string, not {_kind(text)}", where)
    start = _seconds(segment, "start", where)
    end = _seconds(segment, "end", where)
    if start is not None and end is not None and end < start:
        raise TranscriptError("'end' is before 'start'", where)
    if not text.strip():
        return None
    return Fragment(squash(speaker), squash(text), SourcePosition("segment", number, start, end))


def _seconds(segment: Mapping[object, object], key: str, where: str) -> float | None:
    value = segment.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TranscriptError(f"{key!r} must be a number of seconds, not {_kind(value)}", where)
    try:
        seconds = float(value)
    except OverflowError as exc:  # an integer too large for a float
        raise TranscriptError(f"{key!r} is out of range", where) from exc
    if not math.isfinite(seconds) or seconds < 0:
        raise TranscriptError(f"{key!r} must be a finite number of seconds >= 0", where)
    return seconds


def _kind(value: object) -> str:
    """Name a JSON value's type without echoing the value (it may be transcript text)."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    for kind, name in names.items():
        if isinstance(value, kind):
            return name
    return "a number" if isinstance(value, int | float) else type(value).__name__
