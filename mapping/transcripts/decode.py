"""Bytes to text, and text to JSON, with failures as `TranscriptError` naming the position.

Every reader goes through `decode_text`, so a transcript in any format is refused the same way
when it is not text: invalid UTF-8 names the byte, a NUL character names the line.
"""

from __future__ import annotations

import codecs
import json
import re

from mapping.errors import TranscriptError

# The line terminators of WebVTT; `str.splitlines` would also break on form feeds and U+2028,
# which would make our line numbers disagree with an editor's.
LINE_BREAK = re.compile(r"\r\n|\r|\n")

_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def decode_text(content: bytes | str, charset: str | None = None) -> str:
    """Return the text of `content`: UTF-8 unless a BOM or `charset` says otherwise."""
    if isinstance(content, str):
        text = content.removeprefix("\ufeff")
    else:
        text = _decode_bytes(content, charset)
    nul = text.find("\x00")
    if nul >= 0:
        line = len(LINE_BREAK.findall(text, 0, nul)) + 1
        raise TranscriptError(
            "the file holds NUL characters, so it is binary data, not a transcript; "
            "export the transcript as text, WebVTT or JSON",
            f"line {line}",
        )
    return text


def _decode_bytes(content: bytes, charset: str | None) -> str:
    encoding = "utf-8"
    skip = 0
    if content.startswith(codecs.BOM_UTF8):
        skip = len(codecs.BOM_UTF8)
    elif content.startswith(_UTF16_BOMS):
        encoding, skip = "utf-16", 0  # the utf-16 codec reads and drops the BOM itself
    elif charset:
        try:
            encoding = codecs.lookup(charset).name
        except LookupError as exc:
            raise TranscriptError(
                f"unknown charset {charset!r}; send the transcript as UTF-8", "contentType"
            ) from exc
    try:
        return content[skip:].decode(encoding)
    except UnicodeDecodeError as exc:
        raise TranscriptError(
            f"the file is not valid {encoding} text; convert it to UTF-8 and retry",
            f"byte {exc.start + skip + 1}",  # 1-based, as cmp counts
        ) from exc


def parse_json(text: str) -> object:
    """Parse JSON text; a syntax error names its line and column."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TranscriptError(
            f"not valid JSON ({exc.msg}); fix the JSON or pick another --format",
            f"line {exc.lineno}, column {exc.colno}",
        ) from exc
    except RecursionError as exc:
        raise TranscriptError("the JSON is nested too deeply to read", "top level") from exc
    except ValueError as exc:  # e.g. an integer longer than Python converts
        raise TranscriptError(f"the JSON cannot be read: {exc}", "top level") from exc
