"""Transcripts -> utterances with speaker roles (`mapping.domain.Transcript`).

One reader per format, all pure (bytes or text in, `Transcript` out, no IO), and all refusing
bad input with one exception type, `TranscriptError`, whose position names the line, cue or
segment:

    read_plain      text/plain, "Speaker: utterance" per line           (plain.py)
    read_vtt        text/vtt as Zoom and Teams export it                (vtt.py)
    read_diarized   application/json speaker segments                   (diarized.py)
    read_document   FHIR DocumentReference / Binary with inline data    (document.py)
    read_transcript any of the above, by name or detected (`detect_format`)

Roles are resolved for the whole transcript as `roles.py` documents.
"""

from __future__ import annotations

from typing import Literal

from mapping.domain import RoleHints, Transcript, TranscriptFormat
from mapping.transcripts.detect import detect_format
from mapping.transcripts.diarized import read_diarized
from mapping.transcripts.document import (
    AttachmentLink,
    attachment_urls,
    read_attachment,
    read_document,
)
from mapping.transcripts.plain import read_plain
from mapping.transcripts.roles import resolve_roles
from mapping.transcripts.vtt import read_vtt

__all__ = [
    "AttachmentLink",
    "attachment_urls",
    "detect_format",
    "read_attachment",
    "read_diarized",
    "read_document",
    "read_plain",
    "read_transcript",
    "read_vtt",
    "resolve_roles",
]


def read_transcript(
    content: bytes | str,
    fmt: TranscriptFormat | Literal["auto"] = "auto",
    hints: RoleHints | None = None,
    filename: str | None = None,
) -> Transcript:
    """Read a transcript of format `fmt`, or of the detected format when "auto".

    `filename` (a name, not opened) only helps detection when the content is ambiguous.
    """
    chosen = detect_format(content, filename) if fmt == "auto" else fmt
    if chosen == "text":
        return read_plain(content, hints)
    if chosen == "vtt":
        return read_vtt(content, hints)
    if chosen == "json":
        return read_diarized(content, hints)
    return read_document(content, hints)
