"""Plain-text transcripts: one "Speaker: utterance" per line.

    [00:01:02] Dr. Lee: How did the week go?
    00:01:09 Maria: Better, I think.
    Dr. Lee (00:01:15): Tell me more.
    and what made it better?

- A line starts, after an optional timestamp, with a speaker prefix (see `speaker_prefix`).
- Blank lines and lines holding only a timestamp are ignored.
- A line without a speaker prefix continues the previous speaker: it becomes another fragment
  of that speaker (the micro-dialogue builder merges it into the same turn). Text before the
  first speaker is an error, since nobody can be said to have spoken it.
- Positions are line numbers (1-based, counting blank lines); `start_s` is the line's timestamp
  when it has one, `end_s` is never known.
- Known ambiguity: a continuation line that itself looks like "Label: text" ("The plan: walk")
  starts a new speaker, and one that starts with a time ("10:30 works") has it taken for a
  timestamp; exporters that write a speaker on every line avoid both.
"""

from __future__ import annotations

from mapping.domain import RoleHints, SourcePosition, Transcript
from mapping.errors import TranscriptError
from mapping.transcripts.decode import LINE_BREAK, decode_text
from mapping.transcripts.fragments import Fragment, build_transcript, squash
from mapping.transcripts.speaker_prefix import split_leading_timestamp, split_speaker


def read_plain(content: bytes | str, hints: RoleHints | None = None) -> Transcript:
    """Read a plain-text transcript; raises `TranscriptError` naming the line."""
    lines = LINE_BREAK.split(decode_text(content))
    fragments: list[Fragment] = []
    speaker: str | None = None
    for number, line in enumerate(lines, start=1):
        where = f"line {number}"
        start, rest = split_leading_timestamp(line, where)
        found = split_speaker(rest, where)
        if found is not None:
            speaker, rest = found.speaker, found.text
            start = found.start_s if found.start_s is not None else start
        text = squash(rest)
        if not text:
            continue
        if speaker is None:
            raise TranscriptError(
                "text before any speaker; start each utterance with 'Speaker: ', "
                "e.g. 'Dr. Lee: How are you?'",
                where,
            )
        fragments.append(Fragment(speaker, text, SourcePosition("line", number, start)))
    span = "line 1" if len(lines) == 1 else f"lines 1-{len(lines)}"
    return build_transcript(fragments, hints or RoleHints(), "text", span)
