"""WebVTT transcripts as Zoom and Microsoft Teams export them, parsed by webvtt-py.

- Speakers come from voice spans (`<v Dr. Lee>...</v>`, Teams; several per cue are allowed and
  each starts a new fragment) or from a "Name: " prefix on the first line of a cue (Zoom).
  A cue with neither continues the speaker of the previous cue; a first cue with neither is an
  error.
- Cue identifiers, NOTE/STYLE/REGION blocks and cue settings are ignored; other cue tags are
  stripped and character references (&amp;) decoded; the lines of a multi-line cue are joined.
- Empty cues (no text after stripping) are skipped but still counted, so positions are the cue
  numbers (1-based) of the file, with the cue's start and end in seconds.
- Overlapping cues (people talking over each other) are kept in file order.
- The file is read strictly: a cue with a malformed timings line or setting, cues not separated
  by a blank line, or text outside any cue is an error naming the cue and line, rather than
  text silently dropped from the transcript.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator, Sequence

import webvtt
from webvtt.errors import MalformedCaptionError, MalformedFileError

from mapping.domain import RoleHints, SourcePosition, Transcript
from mapping.errors import TranscriptError
from mapping.transcripts.decode import LINE_BREAK, decode_text
from mapping.transcripts.fragments import Fragment, build_transcript, squash
from mapping.transcripts.speaker_prefix import split_speaker

_VOICE = re.compile(webvtt.Caption.VOICE_SPAN_PATTERN.pattern)
# Tags cannot contain "<", so stopping at the next "<" keeps this linear on lines full of "<".
_TAG = re.compile(r"<[^<>]*>")
_MALFORMED = (
    "malformed WebVTT: a cue needs a timings line 'hh:mm:ss.ttt --> hh:mm:ss.ttt' with valid "
    "times and known settings, cues are separated by a blank line, and REGION blocks come "
    "before the first cue"
)


def read_vtt(content: bytes | str, hints: RoleHints | None = None) -> Transcript:
    """Read a WebVTT transcript; raises `TranscriptError` naming the cue or line."""
    lines = LINE_BREAK.split(decode_text(content))
    skipped = 0  # blank lines before the header are tolerated; line numbers still count them
    while skipped < len(lines) and not lines[skipped].strip():
        skipped += 1
    lines = lines[skipped:]
    if not lines:
        raise TranscriptError("the file is empty; export the transcript again", "line 1")
    if not lines[0].startswith("WEBVTT"):
        raise TranscriptError(
            "not a WebVTT file: the first line must be 'WEBVTT'; "
            "for other transcripts pick --format text or json",
            f"line {skipped + 1}",
        )
    try:
        captions = webvtt.WebVTT.from_string("\n".join(lines), strict=True).captions
    except (MalformedCaptionError, MalformedFileError) as exc:
        raise TranscriptError(_MALFORMED, _locate_error(lines, skipped)) from exc
    _refuse_stray_text(lines, skipped)
    fragments = _fragments(captions)
    where = f"{len(captions)} cues, none with text" if captions else "no cue after the header"
    return build_transcript(fragments, hints or RoleHints(), "vtt", where)


def _fragments(captions: Sequence[webvtt.Caption]) -> list[Fragment]:
    fragments: list[Fragment] = []
    speaker: str | None = None
    for number, caption in enumerate(captions, start=1):
        start = caption.start_time.in_milliseconds() / 1000
        end = caption.end_time.in_milliseconds() / 1000
        if end < start:
            raise TranscriptError("the cue ends before it starts; fix its timings", f"cue {number}")
        position = SourcePosition("cue", number, start, end)
        pieces: list[tuple[str, str]] = []  # (speaker, text) of this cue
        for line_number, line in enumerate(caption.lines):
            for voice, raw in _voice_segments(line):
                text = squash(html.unescape(_TAG.sub("", raw)))
                if voice is not None:
                    speaker = squash(voice)
                elif line_number == 0 and (found := split_speaker(text, f"cue {number}")):
                    speaker, text = found.speaker, squash(found.text)
                if not text:
                    continue
                if speaker is None:
                    raise TranscriptError(
                        "cue without a speaker; give cues a voice span '<v Name>' "
                        "or a 'Name: ' prefix",
                        f"cue {number}",
                    )
                if pieces and pieces[-1][0] == speaker:
                    pieces[-1] = (speaker, f"{pieces[-1][1]} {text}")
                else:
                    pieces.append((speaker, text))
        fragments.extend(Fragment(who, text, position) for who, text in pieces)
    return fragments


def _voice_segments(line: str) -> Iterator[tuple[str | None, str]]:
    """Split a cue line at voice spans: (voice or None to keep the speaker, raw text)."""
    matches = list(_VOICE.finditer(line))
    head_end = matches[0].start() if matches else len(line)
    if head_end:
        yield None, line[:head_end]
    for i, match in enumerate(matches):
        tail = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        yield match.group(1), line[match.end() : tail]


def _blocks(lines: Sequence[str]) -> list[tuple[int, int]]:
    """(first, end) line indexes of each block; as in WebVTT, only an empty line ends one."""
    blocks: list[tuple[int, int]] = []
    first: int | None = None
    for i, line in enumerate(lines):
        if line and first is None:
            first = i
        elif not line and first is not None:
            blocks.append((first, i))
            first = None
    if first is not None:
        blocks.append((first, len(lines)))
    return blocks


def _locate_error(lines: Sequence[str], offset: int) -> str:
    """Name the first block webvtt-py refuses: parse ever longer prefixes, by bisection.

    A prefix fails as soon as it includes the first bad block, since the parser reads blocks in
    order; the error it raised names no position (and quotes the text, which we must not echo).
    """
    blocks = _blocks(lines)
    low, high = 0, len(blocks) - 1  # the header block parses, or we would not be here
    while low < high:
        middle = (low + high) // 2
        try:
            webvtt.WebVTT.from_string("\n".join(lines[: blocks[middle][1]]), strict=True)
        except (MalformedCaptionError, MalformedFileError):
            high = middle
        else:
            low = middle + 1
    first, end = blocks[low]
    arrows = [i for i in range(first, end) if "-->" in lines[i]]
    if not arrows:
        return f"line {first + offset + 1}"
    cues_before = sum("-->" in line for line in lines[:first])
    # A second timings line in one block is a cue not separated by a blank line: name it.
    # A cue right under the header (no blank line) shares the header's block: name its line.
    line = arrows[1] if len(arrows) > 1 else arrows[0] if low == 0 else first
    return f"cue {cues_before + len(arrows[:2])}, line {line + offset + 1}"


def _has_timings(lines: Sequence[str], block: tuple[int, int]) -> bool:
    return any("-->" in line for line in lines[block[0] : block[1]])


def _refuse_stray_text(lines: Sequence[str], offset: int) -> None:
    """webvtt-py skips blocks that are neither cue nor NOTE/STYLE/REGION; we refuse them."""
    for first, end in _blocks(lines)[1:]:
        if _has_timings(lines, (first, end)) or lines[first].startswith(
            ("NOTE", "STYLE", "REGION")
        ):
            continue
        raise TranscriptError(
            "text outside any cue; add a timings line before it or delete it",
            f"line {first + offset + 1}",
        )
