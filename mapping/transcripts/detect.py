"""Which reader a transcript needs (`--format auto`).

Content first, since it is what the readers will see: a "WEBVTT" first line is WebVTT; a JSON
object or list is a FHIR resource when it has a `resourceType`, else diarized JSON. When the
content says nothing certain, the file extension decides (.vtt, .json, .txt), so that a broken
file gets the error of the format it was meant to be in; then text starting with "{" is taken
for broken JSON; anything else is plain text ("[00:01:02] Dr. Lee: ..." starts with "[" too).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import PurePath

from mapping.domain import TranscriptFormat
from mapping.errors import TranscriptError
from mapping.transcripts.decode import decode_text

_EXTENSIONS: dict[str, TranscriptFormat] = {
    ".vtt": "vtt",
    ".webvtt": "vtt",
    ".json": "json",
    ".txt": "text",
    ".text": "text",
}


def detect_format(content: bytes | str, filename: str | None = None) -> TranscriptFormat:
    """Guess the format of `content` (see the module docstring); never raises."""
    try:
        text: str | None = decode_text(content)
    except TranscriptError:
        text = None  # the chosen reader will report the decoding error with its position
    if text is not None and (certain := _certain_format(text)) is not None:
        return certain
    extension = PurePath(filename).suffix.lower() if filename else ""
    if extension in _EXTENSIONS:
        return _EXTENSIONS[extension]
    return sniff_format(text) if text is not None else "text"


def sniff_format(text: str) -> TranscriptFormat:
    """The format that `text` looks like, without a file name to help."""
    certain = _certain_format(text)
    if certain is not None:
        return certain
    return "json" if text.lstrip().startswith("{") else "text"


def _certain_format(text: str) -> TranscriptFormat | None:
    stripped = text.lstrip()
    if stripped.startswith("WEBVTT"):
        return "vtt"
    if not stripped.startswith(("{", "[")):
        return None
    try:
        data = json.loads(stripped)
    except (ValueError, RecursionError):
        return None  # "[00:01:02] Dr. Lee: ..." is text, and broken JSON is decided later
    if isinstance(data, Mapping):
        return "fhir" if "resourceType" in data else "json"
    return "json" if isinstance(data, list) else None
