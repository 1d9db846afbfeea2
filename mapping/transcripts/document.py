"""FHIR R4 `DocumentReference` and `Binary` resources holding a transcript.

Mapping does no IO, so it only decodes attachments carried inline (`data`, base64). When the
chosen attachment has only a `url`, `read_document` raises `AttachmentNotInlineError`; the
adapter then fetches the urls that `attachment_urls` lists (relative ones against the FHIR
base, e.g. "Binary/123") and passes the bytes to `read_attachment` with the content type.

Choosing the attachment of a DocumentReference with several `content` entries: only
transcript content types count (text/vtt, application/json, text/plain; parameters such as
"; charset=..." are allowed and the charset is honoured); inline data beats a url; then
text/vtt beats application/json beats text/plain (timed formats first); then document order.
An attachment without a contentType is used last, its format detected from its content.
A DocumentReference with status "entered-in-error" is refused. The attachment `hash` (SHA-1)
and `size`, when given, are checked against the decoded data.

Positions inside the transcript are those of its format (line, cue, segment); error positions
are prefixed with the attachment's place, e.g. "content[1].attachment, cue 4".
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from fhir.resources.R4B.attachment import Attachment
from fhir.resources.R4B.binary import Binary
from fhir.resources.R4B.documentreference import DocumentReference
from pydantic import ValidationError

from mapping.domain import RoleHints, Transcript, TranscriptFormat
from mapping.errors import AttachmentNotInlineError, TranscriptError
from mapping.transcripts.decode import decode_text, parse_json
from mapping.transcripts.detect import sniff_format
from mapping.transcripts.diarized import read_segments
from mapping.transcripts.plain import read_plain
from mapping.transcripts.vtt import read_vtt

CONTENT_TYPES: dict[str, TranscriptFormat] = {
    "text/vtt": "vtt",
    "application/json": "json",
    "text/plain": "text",
}
_PREFERENCE: tuple[str | None, ...] = ("text/vtt", "application/json", "text/plain", None)


@dataclass(frozen=True)
class AttachmentLink:
    """An attachment the adapter must fetch: its url, content type and place in the resource."""

    url: str
    content_type: str
    position: str


@dataclass(frozen=True)
class _Candidate:
    position: str
    media_type: str | None  # lower case, without parameters; None when contentType is absent
    content_type: str
    charset: str | None
    data: bytes | None
    url: str | None
    sha1: bytes | None
    size: int | None


def read_document(
    resource: Mapping[str, object] | bytes | str, hints: RoleHints | None = None
) -> Transcript:
    """Read the transcript carried inline by a DocumentReference or Binary (JSON or dict)."""
    candidates = sorted(_candidates(_load(resource)), key=_rank)
    inline = [(c, c.data) for c in candidates if c.data is not None]
    if inline:
        chosen, data = inline[0]
        _check_integrity(chosen, data)
        return _read_inline(data, chosen, hints or RoleHints())
    links = _links(candidates)
    if links:
        raise AttachmentNotInlineError(
            "the transcript attachment has only a url; the adapter must fetch it "
            "(mapping.transcripts.attachment_urls) and pass the bytes to read_attachment",
            urls=tuple(link.url for link in links),
            position=links[0].position,
        )
    raise TranscriptError(
        "the transcript attachment has neither data nor url", candidates[0].position
    )


def attachment_urls(resource: Mapping[str, object] | bytes | str) -> tuple[AttachmentLink, ...]:
    """The url-only transcript attachments of a DocumentReference or Binary, best first.

    Empty when there is nothing worth fetching (data inline, no transcript content type, or a
    document entered in error): `read_document` then reads it or says why not. Raises
    `TranscriptError` only when `resource` is not a valid DocumentReference or Binary.
    """
    loaded = _load(resource)
    if isinstance(loaded, DocumentReference) and loaded.status == "entered-in-error":
        return ()
    candidates = [
        c for c in _attachments(loaded) if c.media_type is None or c.media_type in CONTENT_TYPES
    ]
    return _links(sorted(candidates, key=_rank))


def _links(candidates: list[_Candidate]) -> tuple[AttachmentLink, ...]:
    return tuple(
        AttachmentLink(c.url, c.content_type, c.position)
        for c in candidates
        if c.url and c.data is None
    )


def _rank(candidate: _Candidate) -> int:
    """Preference by content type; `sorted` is stable, so document order breaks ties."""
    return _PREFERENCE.index(candidate.media_type)


def read_attachment(data: bytes, content_type: str, hints: RoleHints | None = None) -> Transcript:
    """Read a fetched attachment; `content_type` as the attachment (or the response) gives it."""
    media_type, charset = _split_content_type(content_type)
    if media_type is not None and media_type not in CONTENT_TYPES:
        raise TranscriptError(
            f"content type {media_type!r} is not a transcript; "
            f"expected one of {', '.join(CONTENT_TYPES)}",
            "contentType",
        )
    candidate = _Candidate("attachment", media_type, content_type, charset, data, None, None, None)
    return _read_inline(data, candidate, hints or RoleHints())


def _read_inline(data: bytes, candidate: _Candidate, hints: RoleHints) -> Transcript:
    try:
        text = decode_text(data, candidate.charset)
        fmt = CONTENT_TYPES[candidate.media_type] if candidate.media_type else sniff_format(text)
        readers: dict[TranscriptFormat, Callable[[str], Transcript]] = {
            "text": lambda t: read_plain(t, hints),
            "vtt": lambda t: read_vtt(t, hints),
            "json": lambda t: read_segments(parse_json(t), hints),
        }
        if fmt not in readers:
            raise TranscriptError("the attachment holds a FHIR resource, not a transcript")
        transcript = readers[fmt](text)
    except TranscriptError as exc:
        inner = f"{candidate.position}, {exc.position}" if exc.position else candidate.position
        raise TranscriptError(exc.message, inner) from exc
    return Transcript(transcript.utterances, transcript.roles, "fhir")


def _load(resource: Mapping[str, object] | bytes | str) -> DocumentReference | Binary:
    data = resource if isinstance(resource, Mapping) else parse_json(decode_text(resource))
    if not isinstance(data, Mapping):
        raise TranscriptError("expected a FHIR resource (a JSON object)", "top level")
    kind = data.get("resourceType")
    model: type[DocumentReference] | type[Binary]
    if kind == "DocumentReference":
        model = DocumentReference
    elif kind == "Binary":
        model = Binary
    else:
        raise TranscriptError(
            f"expected a DocumentReference or Binary resource, not {_short(kind)}",
            "resourceType",
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise TranscriptError(
            f"invalid {kind}: {first['msg']} ({exc.error_count()} problem(s))",
            _path(first["loc"]),
        ) from exc
    except (ValueError, TypeError, AttributeError, KeyError, RecursionError) as exc:
        # fhir.resources' own validators can fail outside pydantic (a number as a url).
        raise TranscriptError(f"invalid {kind}: {type(exc).__name__}", "top level") from exc


def _candidates(resource: DocumentReference | Binary) -> list[_Candidate]:
    """The attachments that may hold the transcript, in document order; refuses when none can."""
    if isinstance(resource, DocumentReference) and resource.status == "entered-in-error":
        raise TranscriptError(
            "the DocumentReference is marked entered-in-error; do not read it", "status"
        )
    found = _attachments(resource)
    usable = [c for c in found if c.media_type is None or c.media_type in CONTENT_TYPES]
    if not usable:
        seen = sorted({c.content_type for c in found})
        raise TranscriptError(
            f"no transcript attachment (content types: {', '.join(seen) or 'none'}); "
            f"expected one of {', '.join(CONTENT_TYPES)}",
            "content" if isinstance(resource, DocumentReference) else "contentType",
        )
    return usable


def _attachments(resource: DocumentReference | Binary) -> list[_Candidate]:
    if isinstance(resource, Binary):
        return [_candidate("Binary", resource.contentType, resource.data, None, None, None)]
    return [
        _attachment(item.attachment, f"content[{i}].attachment")
        for i, item in enumerate(resource.content or [])
    ]


def _attachment(attachment: Attachment | None, position: str) -> _Candidate:
    if attachment is None:  # required by FHIR, yet fhir.resources lets null through
        raise TranscriptError("the content has no attachment", position)
    return _candidate(
        position,
        attachment.contentType,
        attachment.data,
        str(attachment.url) if attachment.url is not None else None,
        attachment.hash,
        attachment.size,
    )


def _candidate(
    position: str,
    content_type: str | None,
    data: bytes | None,
    url: str | None,
    sha1: bytes | None,
    size: int | None,
) -> _Candidate:
    media_type, charset = _split_content_type(content_type or "")
    return _Candidate(position, media_type, content_type or "", charset, data, url, sha1, size)


def _split_content_type(content_type: str) -> tuple[str | None, str | None]:
    """("text/plain", "utf-8") from "Text/Plain; charset=UTF-8"; (None, None) from ""."""
    media_type, *params = content_type.split(";")
    charset = None
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"') or None
    return media_type.strip().lower() or None, charset


def _check_integrity(candidate: _Candidate, data: bytes) -> None:
    if candidate.size is not None and candidate.size != len(data):
        raise TranscriptError(
            f"the attachment data is {len(data)} bytes but its size says {candidate.size}; "
            "the document may be truncated",
            candidate.position,
        )
    # FHIR defines Attachment.hash as SHA-1; it detects corruption, it is no security control.
    if candidate.sha1 is not None and hashlib.sha1(data, usedforsecurity=False).digest() != (
        candidate.sha1
    ):
        raise TranscriptError(
            "the attachment data does not match its hash; the document may be corrupted",
            candidate.position,
        )


def _path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as a FHIR path: ("content", 0, "attachment") -> content[0]..."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path or "top level"


def _short(kind: object) -> str:
    if kind is None:
        return "a JSON object without resourceType"
    return repr(kind) if isinstance(kind, str) and len(kind) <= 40 else "an unknown resourceType"
