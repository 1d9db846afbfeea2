"""Format detection for `--format auto`."""

from __future__ import annotations

import pytest

from mapping.transcripts import detect_format


@pytest.mark.parametrize(
    ("content", "filename", "expected"),
    [
        (b"WEBVTT\n\n", None, "vtt"),
        (b"\xef\xbb\xbf\nWEBVTT\n", "notes.txt", "vtt"),  # content beats the extension
        (b'[{"speaker": "A", "text": "hi"}]', None, "json"),
        (b'{"segments": []}', "x.txt", "json"),
        (b'{"resourceType": "DocumentReference"}', None, "fhir"),
        (b'{"resourceType": "Binary"}', "t.json", "fhir"),
        (b"[00:00:01] Dr. Lee: hi", None, "text"),
        (b"Dr. Lee: hi", None, "text"),
        (b"{broken", None, "json"),
        (b"{broken", "t.txt", "text"),
        (b"Dr. Lee: hi", "t.vtt", "vtt"),  # the vtt reader will say the header is missing
        (b"[1, 2", "t.JSON", "json"),
        (b"\xff\xfe\xfa", None, "text"),  # undecodable: the text reader reports the byte
        (b"\xff\xfe\xfa", "t.vtt", "vtt"),
        ("WEBVTT", None, "vtt"),
        (b"", None, "text"),
    ],
)
def test_detect(content: bytes | str, filename: str | None, expected: str) -> None:
    assert detect_format(content, filename) == expected
