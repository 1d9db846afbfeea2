"""The chart note: a US Core DocumentReference following "Writing Clinical Notes".

It lists the homework set this session and the review status of earlier homework, as
text/plain and as text/html attachments (base64), with a stable identifier, category
clinical-note, a configurable LOINC type and docStatus (Oracle Health requires final),
`context.encounter` and `context.period`. The treating practitioner is the author (the note is
filed for them to sign); meta.security AIAST and the text say a model drafted it.

After a clinician's review, `superseding_note` gives the note's next version: the same
renderer over `summary.approved_summary`, `relatesTo` replaces the previous version, a
`masterIdentifier` per version and labels for what it now holds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from fhir.resources.R4B.documentreference import DocumentReference

from mapping.errors import ResourceError
from mapping.fhir.codes import (
    IHE_FORMAT_CODE,
    LOINC,
    MIME_SUFFICIENT,
    PROFILE_DOCUMENTREFERENCE,
    SID_NOTE,
    SID_NOTE_VERSION,
    US_CORE_DOCREF_CATEGORY,
    ai_asserted,
    clinician_asserted_ai_reported,
    coding,
)
from mapping.fhir.context import DocStatus, EncounterContext, NoteOptions, Ref
from mapping.fhir.identifiers import identifier, note_value, note_version_value
from mapping.fhir.summary import Decided, SessionSummary
from mapping.fhir.text import b64, esc, instant
from mapping.fhir.validate import as_json, parse

__all__ = ["REVIEWED_TITLE", "build_note", "html_document", "note_version", "superseding_note"]

REVIEWED_TITLE = "Between-session homework (reviewed by clinician)"


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


def note_version(ctx: EncounterContext, summary: SessionSummary) -> dict[str, str]:
    """The `masterIdentifier` of the note's version that holds `summary`: derived from its text,
    so the adapter finds an already written version by it, and the same text gives the same
    version."""
    return identifier(SID_NOTE_VERSION, note_version_value(ctx.encounter_key, summary.text()))


def _labels(summary: SessionSummary) -> list[dict[str, str]]:
    """CLINAST_AIRPT for approved model drafts; AIAST while it also carries what only the model
    asserts (drafts awaiting review, the review status of earlier homework)."""
    decided = {item.decided for item in summary.plan}
    labels = []
    if Decided.APPROVED in decided:
        labels.append(clinician_asserted_ai_reported())
    if Decided.AWAITING in decided or summary.earlier:
        labels.append(ai_asserted())
    return labels


def superseding_note(
    previous: Mapping[str, Any],
    ctx: EncounterContext,
    summary: SessionSummary,
    *,
    clinician: Ref,
    now: datetime,
    options: NoteOptions = NoteOptions(),  # noqa: B008 - frozen dataclass, never mutated
    doc_status: DocStatus = "final",
) -> DocumentReference:
    """The note's next version, replacing `previous` (as read from the EHR, with its id).

    `summary` comes from `summary.approved_summary`. The note keeps its identifier (one per
    session) and gets a `masterIdentifier` derived from its text, so the adapter finds an
    already written version by it; the same review gives the same version. docStatus is
    `final` (a clinician has reviewed the content): pass `amended` where the EHR wants a
    correction of a final note marked so. The treating practitioner stays the first author
    (the quality measures attribute the session to them); the reviewing clinician follows.
    """
    if summary.approval is None:
        raise ResourceError("the superseding note needs a reviewed summary (approved_summary)")
    if previous.get("resourceType") != "DocumentReference" or not previous.get("id"):
        raise ResourceError("the previous note must be a DocumentReference as read, with its id")
    expected = identifier(SID_NOTE, note_value(ctx.encounter_key))
    if not any(
        i.get("system") == SID_NOTE and i.get("value") == expected["value"]
        for i in previous.get("identifier") or ()
    ):
        raise ResourceError(
            f"DocumentReference/{previous['id']} is not this session's note (no {SID_NOTE} "
            f"identifier {expected['value']}); pass the note written for {ctx.encounter.reference}"
        )
    opts = dataclasses.replace(options, title=REVIEWED_TITLE, doc_status=doc_status)
    data = as_json(build_note(ctx, summary, now=now, options=opts))
    data["masterIdentifier"] = note_version(ctx, summary)
    data["relatesTo"] = [
        {"code": "replaces", "target": {"reference": f"DocumentReference/{previous['id']}"}}
    ]
    if all(a.get("reference") != clinician.reference for a in data["author"]):
        data["author"].append(clinician.as_json())
    labels = _labels(summary)
    if labels:
        data["meta"]["security"] = labels
    else:
        data["meta"].pop("security", None)
    return parse(data, DocumentReference)
