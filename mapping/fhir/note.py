"""The chart note: a US Core DocumentReference following "Writing Clinical Notes".

It lists the homework set this session and the review status of earlier homework, as
text/plain and as text/html attachments (base64), with a stable identifier, category
clinical-note, a configurable LOINC type and docStatus (Oracle Health requires final),
`context.encounter` and `context.period`. The treating practitioner is the author (the note is
filed for them to sign); meta.security AIAST and the text say a model drafted it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fhir.resources.R4B.documentreference import DocumentReference

from mapping.fhir.codes import (
    IHE_FORMAT_CODE,
    LOINC,
    MIME_SUFFICIENT,
    PROFILE_DOCUMENTREFERENCE,
    SID_NOTE,
    US_CORE_DOCREF_CATEGORY,
    ai_asserted,
    coding,
)
from mapping.fhir.context import EncounterContext, NoteOptions
from mapping.fhir.identifiers import identifier, note_value
from mapping.fhir.summary import SessionSummary
from mapping.fhir.text import b64, esc, instant
from mapping.fhir.validate import parse

__all__ = ["build_note", "html_document"]


def html_document(summary: SessionSummary, title: str) -> str:
    """The summary as a small standalone XHTML page (the text/html attachment)."""
    return (
        '<!DOCTYPE html><html xmlns="http://www.w3.org/1999/xhtml"><head>'
        f'<meta charset="utf-8"/><title>{esc(title)}</title></head>'
        f"<body>{summary.xhtml()}</body></html>"
    )


def build_note(
    ctx: EncounterContext,
    summary: SessionSummary,
    *,
    now: datetime,
    options: NoteOptions = NoteOptions(),  # noqa: B008 - frozen dataclass, never mutated
) -> DocumentReference:
    """The note for the EHR; no id (the EHR assigns one), identifier from the encounter."""
    fmt = coding(IHE_FORMAT_CODE, MIME_SUFFICIENT, "mimeType Sufficient")
    data: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "meta": {"profile": [PROFILE_DOCUMENTREFERENCE], "security": [ai_asserted()]},
        "identifier": [identifier(SID_NOTE, note_value(ctx.encounter_key))],
        "status": "current",
        "docStatus": options.doc_status,
        "type": {
            "coding": [coding(LOINC, options.type_code, options.type_display)],
            "text": options.type_display,
        },
        "category": [
            {
                "coding": [coding(US_CORE_DOCREF_CATEGORY, "clinical-note", "Clinical Note")],
                "text": "Clinical Note",
            }
        ],
        "subject": ctx.patient.as_json(),
        "date": instant(now),
        "author": [ctx.practitioners[0].as_json()],
        "description": options.title,
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain",
                    "language": "en",
                    "data": b64(summary.text()),
                    "title": options.title,
                    "creation": instant(now),
                },
                "format": fmt,
            },
            {
                "attachment": {
                    "contentType": "text/html",
                    "language": "en",
                    "data": b64(html_document(summary, options.title)),
                    "title": options.title,
                    "creation": instant(now),
                },
                "format": fmt,
            },
        ],
        "context": {
            "encounter": [ctx.encounter.as_json()],
            "period": {"start": instant(ctx.period_start), "end": instant(ctx.period_end)},
        },
    }
    if ctx.organization is not None:
        data["custodian"] = ctx.organization.as_json()
    return parse(data, DocumentReference)
