"""FHIR DocumentReference / Binary: attachment choice, url-only attachments, and errors."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest

from mapping.errors import AttachmentNotInlineError, TranscriptError
from mapping.transcripts import (
    AttachmentLink,
    attachment_urls,
    read_attachment,
    read_document,
    read_transcript,
)

TEXT = b"Therapist: Did you keep the log?\nClient: Most days.\n"
VTT = b"WEBVTT\n\n00:00:01.000 --> 00:00:02.000\n<v Therapist>Did you keep the log?</v>\n"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _docref(*attachments: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "status": "current",
        "content": [{"attachment": a} for a in attachments],
        **extra,
    }


def test_inline_text_plain() -> None:
    transcript = read_document(_docref({"contentType": "text/plain", "data": _b64(TEXT)}))
    assert [u.text for u in transcript.utterances] == ["Did you keep the log?", "Most days."]
    assert transcript.source_format == "fhir"
    assert transcript.utterances[0].position.unit == "line"


def test_json_text_and_bytes_are_accepted() -> None:
    resource = _docref({"contentType": "text/plain", "data": _b64(TEXT)})
    assert read_document(json.dumps(resource)) == read_document(json.dumps(resource).encode())


def test_vtt_is_preferred_and_inline_beats_url() -> None:
    resource = _docref(
        {"contentType": "text/vtt", "url": "Binary/vtt-only-url"},
        {"contentType": "text/plain", "data": _b64(TEXT)},
        {"contentType": "text/vtt", "data": _b64(VTT)},
    )
    transcript = read_document(resource)
    assert transcript.utterances[0].position.unit == "cue"


def test_charset_is_honoured() -> None:
    latin1 = "Therapist: ¿Cómo está?\n".encode("latin-1")
    resource = _docref({"contentType": "text/plain; charset=ISO-8859-1", "data": _b64(latin1)})
    assert read_document(resource).utterances[0].text == "¿Cómo está?"


def test_missing_content_type_is_detected_from_data() -> None:
    transcript = read_document(_docref({"data": _b64(VTT)}))
    assert transcript.utterances[0].position.unit == "cue"


def test_binary() -> None:
    segments = json.dumps([{"speaker": "A", "text": "Hello"}]).encode()
    binary = {"resourceType": "Binary", "contentType": "application/json", "data": _b64(segments)}
    transcript = read_transcript(json.dumps(binary))
    assert transcript.source_format == "fhir"
    assert transcript.utterances[0].position.unit == "segment"


def test_hash_and_size_are_checked() -> None:
    good = {
        "contentType": "text/plain",
        "data": _b64(TEXT),
        "size": len(TEXT),
        "hash": _b64(hashlib.sha1(TEXT).digest()),
    }
    assert read_document(_docref(good)).utterances
    with pytest.raises(TranscriptError, match=r"its hash; .* \(content\[0\]\.attachment\)$"):
        read_document(_docref({**good, "hash": _b64(hashlib.sha1(b"other").digest())}))
    with pytest.raises(TranscriptError, match=r"truncated \(content\[0\]\.attachment\)$"):
        read_document(_docref({**good, "size": len(TEXT) + 1}))


def test_url_only_attachment_asks_the_adapter_to_fetch() -> None:
    resource = _docref(
        {"contentType": "application/pdf", "url": "Binary/pdf"},
        {"contentType": "text/plain", "url": "Binary/txt"},
        {"contentType": "text/vtt", "url": "https://ehr.example/files/t.vtt"},
    )
    with pytest.raises(AttachmentNotInlineError) as caught:
        read_document(resource)
    # best first: WebVTT before plain text
    assert caught.value.urls == ("https://ehr.example/files/t.vtt", "Binary/txt")
    assert str(caught.value).endswith("(content[2].attachment)")
    assert attachment_urls(resource) == (
        AttachmentLink("https://ehr.example/files/t.vtt", "text/vtt", "content[2].attachment"),
        AttachmentLink("Binary/txt", "text/plain", "content[1].attachment"),
    )
    # what the adapter does next, with the bytes it fetched
    link = attachment_urls(resource)[0]
    assert read_attachment(VTT, link.content_type).utterances[0].speaker == "Therapist"


def test_read_attachment_refuses_other_content_types() -> None:
    with pytest.raises(TranscriptError, match=r"\(contentType\)$"):
        read_attachment(b"%PDF-1.7", "application/pdf")


def test_inner_errors_are_prefixed_with_the_attachment() -> None:
    bad = b"Therapist: ok\n\x00"
    resource = _docref(
        {"contentType": "application/pdf", "url": "Binary/pdf"},
        {"contentType": "text/plain", "data": _b64(bad)},
    )
    with pytest.raises(TranscriptError) as caught:
        read_document(resource)
    assert str(caught.value).endswith("(content[1].attachment, line 2)")


@pytest.mark.parametrize(
    ("resource", "position"),
    [
        ({"resourceType": "DocumentReference", "status": "current"}, "(content)"),
        (_docref(), "(content)"),
        (_docref({"contentType": "application/pdf", "data": _b64(b"%PDF")}), "(content)"),
        (_docref({"contentType": "text/plain"}), "(content[0].attachment)"),
        (
            _docref({"contentType": "text/plain", "data": "!!not base64"}),
            "(content[0].attachment.data)",
        ),
        (
            _docref({"contentType": "text/plain", "data": _b64(TEXT)}, status="entered-in-error"),
            "(status)",
        ),
        ({"resourceType": "Patient", "id": "x"}, "(resourceType)"),
        ({"status": "current"}, "(resourceType)"),
        ({"resourceType": "Binary"}, "(contentType)"),
        ({"resourceType": "Binary", "contentType": "text/plain"}, "(Binary)"),
        (
            {"resourceType": "Binary", "contentType": "text/plain", "data": _b64(b"")},
            "(Binary, line 1)",
        ),
    ],
)
def test_errors_name_the_position(resource: dict[str, Any], position: str) -> None:
    with pytest.raises(TranscriptError) as caught:
        read_document(resource)
    assert str(caught.value).endswith(position)


@pytest.mark.parametrize("raw", [b"", b"[1, 2]", b"{not json", b"\xff\xfe\x00"])
def test_non_resources(raw: bytes) -> None:
    with pytest.raises(TranscriptError):
        read_document(raw)


def test_attachment_urls_is_empty_when_nothing_needs_fetching() -> None:
    pdf_only = _docref({"contentType": "application/pdf", "url": "Binary/pdf"})
    assert attachment_urls(pdf_only) == ()
    inline = _docref({"contentType": "text/plain", "data": _b64(TEXT)})
    assert attachment_urls(inline) == ()
    retracted = _docref({"contentType": "text/vtt", "url": "Binary/v"}, status="entered-in-error")
    assert attachment_urls(retracted) == ()
    with pytest.raises(TranscriptError, match=r"\(resourceType\)$"):
        attachment_urls({"resourceType": "Patient"})
