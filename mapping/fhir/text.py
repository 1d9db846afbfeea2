"""Small text helpers shared by the builders: positions, quotes, XHTML narrative, base64."""

from __future__ import annotations

import base64
import html
import re
from datetime import datetime

from mapping.domain import SourcePosition

XHTML_NS = "http://www.w3.org/1999/xhtml"

# XML 1.0 forbids most C0 controls; transcripts (especially pasted ones) sometimes carry them.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_PLURAL = {"line": "lines", "cue": "cues", "segment": "segments"}


def clean(text: str) -> str:
    """Text without control characters and surrounding space."""
    return _CONTROL.sub("", text).strip()


def clock(seconds: float) -> str:
    """12.5 -> "00:00:12"."""
    whole = int(seconds)
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def describe_position(first: SourcePosition, last: SourcePosition | None = None) -> str:
    """ "line 12", "lines 12-14", "cue 4 at 00:01:05": where a turn sits, for people."""
    if last is None or (last.unit == first.unit and last.index == first.index):
        where = f"{first.unit} {first.index}"
    else:
        where = f"{_PLURAL[first.unit]} {first.index}-{last.index}"
    if first.start_s is not None:
        where += f" at {clock(first.start_s)}"
    return where


def quoted(text: str) -> str:
    return f"\u201c{clean(text)}\u201d"


def esc(text: str) -> str:
    """Escape for XHTML element content."""
    return html.escape(clean(text), quote=False)


def xhtml_div(body: str) -> str:
    """A FHIR narrative div: XHTML namespace, `body` already escaped."""
    return f'<div xmlns="{XHTML_NS}">{body}</div>'


def b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def instant(value: datetime) -> str:
    """ISO 8601 with seconds and offset, as FHIR dateTime/instant want it."""
    return value.isoformat(timespec="seconds")


def day(value: datetime) -> str:
    return value.date().isoformat()
