"""The "Speaker: text" prefix and the timestamps written around it, for text and WebVTT.

A speaker prefix is a label of at most 6 words and 40 characters that starts with a letter and
holds letters, digits, spaces, apostrophes and . - ( ) / & _ (no comma), followed by a colon and
a space, a colon ending the line, or a full-width colon (U+FF1A, as CJK text writes it). So
"Dr. Lee: ..." is a speaker line while "https://..." and "Well, as I said: ..." are not.

Timestamps are `[h:]mm:ss[.fff]`, bare, in [brackets] or (parentheses); "[00:01:02] Dr. Lee:",
"00:01:02 - Dr. Lee:" and "Dr. Lee (00:01:02):" all give 62 seconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mapping.errors import TranscriptError

_TS = r"\d{1,3}(?::\d{2}){1,2}(?:[.,]\d{1,3})?"
LEADING_TIMESTAMP = re.compile(
    rf"(?:[\[(]\s*(?P<enclosed>{_TS})\s*[\])]\s*(?:[-\u2013\u2014|]\s*)?"
    rf"|(?P<bare>{_TS})(?:\s*[-\u2013\u2014|]\s*|\s+|$))"
)
_SPEAKER = re.compile(
    r"(?P<name>[^\W\d_][\w.'\u2019\-()/& ]{0,39}?)\s*"
    rf"(?:[\[(]\s*(?P<ts>{_TS})\s*[\])]\s*)?"
    r"(?::\s+|:$|\uff1a\s*)(?P<text>.*)",
    re.DOTALL,
)
_MAX_NAME_WORDS = 6


@dataclass(frozen=True)
class SpeakerLine:
    speaker: str
    text: str
    start_s: float | None


def split_speaker(line: str, where: str) -> SpeakerLine | None:
    """The speaker prefix of `line` (leading spaces allowed), or None when it has none."""
    match = _SPEAKER.match(line.strip())
    if match is None:
        return None
    name = match["name"].strip()
    if len(name.split()) > _MAX_NAME_WORDS:
        return None
    start = parse_timestamp(match["ts"], where) if match["ts"] else None
    return SpeakerLine(name, match["text"], start)


def split_leading_timestamp(line: str, where: str) -> tuple[float | None, str]:
    """(seconds, rest of the line) when `line` starts with a timestamp, else (None, line)."""
    stripped = line.strip()
    match = LEADING_TIMESTAMP.match(stripped)
    if match is None:
        return None, stripped
    value = match["enclosed"] or match["bare"]
    return parse_timestamp(value, where), stripped[match.end() :]


def parse_timestamp(value: str, where: str) -> float:
    """Seconds of `[h:]mm:ss[.fff]`; minutes may pass 59 only when there is no hour field."""
    clock, _, fraction = value.replace(",", ".").partition(".")
    fields = [int(part) for part in clock.split(":")]
    seconds = fields[-1]
    minutes = fields[-2]
    hours = fields[-3] if len(fields) == 3 else 0
    if seconds > 59 or (len(fields) == 3 and minutes > 59):
        raise TranscriptError(
            f"invalid timestamp {value!r}; write it as [hh:]mm:ss with minutes and seconds "
            "below 60",
            where,
        )
    millis = int(fraction.ljust(3, "0")) if fraction else 0
    return hours * 3600 + minutes * 60 + seconds + millis / 1000
