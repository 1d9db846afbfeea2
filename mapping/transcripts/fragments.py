"""The step all readers share: speaker fragments -> a `Transcript` with resolved roles.

Readers only split their format into `Fragment`s (speaker label, text, position). Here speaker
labels that differ only in case or spacing become one speaker (spelled as first seen), roles are
resolved once for the whole transcript, and an input without any text is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mapping.domain import RoleHints, SourcePosition, Transcript, TranscriptFormat, Utterance
from mapping.errors import TranscriptError
from mapping.transcripts.roles import resolve_roles, speaker_key


@dataclass(frozen=True)
class Fragment:
    """A piece of text and who said it, before roles are known."""

    speaker: str
    text: str
    position: SourcePosition


def squash(text: str) -> str:
    """Collapse runs of whitespace (line breaks of multi-line cues included) to one space."""
    return " ".join(text.split())


def describe(position: SourcePosition) -> str:
    """Render a position for an error message, e.g. "cue 4"."""
    return f"{position.unit} {position.index}"


def build_transcript(
    fragments: Sequence[Fragment],
    hints: RoleHints,
    source_format: TranscriptFormat,
    empty_position: str,
) -> Transcript:
    """Resolve roles and build the transcript; `empty_position` names where text was expected."""
    if not fragments:
        raise TranscriptError(
            "the transcript has no utterances; check that it is the right file and format",
            empty_position,
        )
    spelling: dict[str, str] = {}
    for fragment in fragments:
        _check_unicode(fragment)
        spelling.setdefault(speaker_key(fragment.speaker), squash(fragment.speaker))
    decisions = resolve_roles(tuple(spelling.values()), hints)
    role_of = {speaker_key(d.speaker): d.role for d in decisions}
    utterances = tuple(
        Utterance(
            speaker=spelling[speaker_key(f.speaker)],
            role=role_of[speaker_key(f.speaker)],
            text=f.text,
            position=f.position,
        )
        for f in fragments
    )
    return Transcript(utterances=utterances, roles=decisions, source_format=source_format)


def _check_unicode(fragment: Fragment) -> None:
    # JSON escapes can smuggle lone surrogates in; they cannot be written back out as UTF-8.
    for value in (fragment.speaker, fragment.text):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise TranscriptError(
                "the text holds an invalid Unicode character (a lone surrogate)",
                describe(fragment.position),
            ) from exc
