"""The detect step: transcript -> micro-dialogues -> model -> detections in the work state.

The model call happens outside any database transaction; its result and the step change are
written together, so a crash before that write just means the step runs again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from fhir_adapter.metrics import MODEL_SECONDS, timed
from fhir_adapter.pipeline.records import detection_to_json
from fhir_adapter.pipeline.steps import Step, WorkItem
from fhir_adapter.runtime import Runtime
from fhir_adapter.settings import PipelineSettings
from fhir_adapter.store import work
from inference_server.classifier import DialoguePredictions
from inference_server.client import predict_dialogues
from inference_server.decision import OperatingPoint
from inference_server.labels import LABELS
from mapping.dialogues import build_micro_dialogues, dialogue_turns
from mapping.domain import Detection, HomeworkLabel, MicroDialogue, RoleHints
from mapping.errors import TranscriptError
from mapping.fhir.codes import BASE_URL
from mapping.fhir.references import reference_id
from mapping.transcripts import read_document

log = logging.getLogger(__name__)

TRANSCRIPT_TYPES = ("text/plain", "text/vtt", "application/json")


def _names(resource: dict[str, Any] | None) -> list[str]:
    names: list[str] = []
    for name in (resource or {}).get("name") or []:
        if name.get("text"):
            names.append(str(name["text"]))
        parts = [*(name.get("given") or []), name.get("family") or ""]
        if any(parts):
            names.append(" ".join(p for p in parts if p))
    return names


def role_hints(encounter: dict[str, Any], patient: dict[str, Any] | None) -> RoleHints:
    """Speaker names from the Encounter's participants (therapists) and its Patient (client)."""
    therapists = [
        str(p["individual"]["display"])
        for p in encounter.get("participant") or []
        if (p.get("individual") or {}).get("display")
    ]
    clients = _names(patient)
    subject = (encounter.get("subject") or {}).get("display")
    if subject:
        clients.append(str(subject))
    return RoleHints(therapist_names=tuple(therapists), client_names=tuple(clients))


def is_transcript(doc: dict[str, Any]) -> bool:
    """A document of the session in a transcript format that is not one of our own notes.

    Our notes are text/plain too, and sit in the same chart: they carry our identifier system.
    """
    if any(str(i.get("system", "")).startswith(BASE_URL) for i in doc.get("identifier") or []):
        return False
    return any(
        str((c.get("attachment") or {}).get("contentType", "")).split(";")[0] in TRANSCRIPT_TYPES
        for c in doc.get("content") or []
    )


def detections_from(
    dialogues: Sequence[MicroDialogue],
    preds: DialoguePredictions,
    point: OperatingPoint,
    keep_none: bool = False,
) -> list[Detection]:
    """Keep what matters downstream: homework, or a review of earlier homework (or all).

    Decisions are the operating point's (decision.py). The confidence is the calibrated
    probability of what was decided: of the label, or of `none` for a micro-dialogue that sets
    no homework. A long therapist turn is read in windows, and `evidence` names the sentences of
    the one the label came from.
    """
    labels, reviews = preds.labels(point), preds.reviews(point)
    windows = np.bincount(preds.windows.owner, minlength=len(dialogues))
    found: list[Detection] = []
    for i, dialogue in enumerate(dialogues):
        label = HomeworkLabel(labels[i])
        if label is HomeworkLabel.NONE and not reviews[i] and not keep_none:
            continue
        probs = preds.label_probs[i]
        found.append(
            Detection(
                dialogue=dialogue,
                label=label,
                review=reviews[i],
                confidence=float(probs[LABELS.index(label.value)]),
                review_confidence=float(preds.review_probs[i]),
                probabilities={HomeworkLabel(LABELS[k]): float(p) for k, p in enumerate(probs)},
                evidence=preds.evidence(i, dialogue.therapist.text, label is HomeworkLabel.NONE)
                if windows[i] > 1
                else None,
            )
        )
    return found


def with_staged_binaries(session: Session, connection: str, doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` with attachments given as a url to a Binary that came along (a push, a Bulk
    export's Binary.ndjson) carrying that Binary's data inline."""
    content, changed = [], False
    for item in doc.get("content") or []:
        attachment = dict(item.get("attachment") or {})
        parts = str(attachment.get("url") or "").split("/_history/")[0].rstrip("/").split("/")
        if not attachment.get("data") and len(parts) >= 2 and parts[-2] == "Binary":
            binary = work.source(session, connection, "Binary", parts[-1])
            if binary is not None and binary.get("data"):
                attachment["data"] = binary["data"]
                attachment.setdefault("contentType", binary.get("contentType"))
                changed = True
        content.append({**item, "attachment": attachment})
    return {**doc, "content": content} if changed else doc


class OverLimitError(Exception):
    """A session over one of `pipeline`'s bounds; the message names the bound and the setting."""


def _micro_dialogues(
    doc: dict[str, Any], hints: RoleHints, limits: PipelineSettings
) -> Sequence[MicroDialogue]:
    """The transcript's micro-dialogues, refusing a session over the configured bounds before
    the model sees any of it (never a silent truncation)."""
    # Base64 is 4/3 of the bytes and a character is at most 4 bytes: a first check that
    # decodes nothing.
    encoded = max(
        (len(str((c.get("attachment") or {}).get("data") or "")) for c in doc.get("content") or []),
        default=0,
    )
    if encoded * 3 // 4 > 4 * limits.max_transcript_chars:
        raise OverLimitError(
            f"transcript of about {encoded * 3 // 4} bytes is over pipeline.max_transcript_chars "
            f"({limits.max_transcript_chars})"
        )
    transcript = read_document(doc, hints)
    chars = sum(len(u.text) for u in transcript.utterances)
    if chars > limits.max_transcript_chars:
        raise OverLimitError(
            f"transcript of {chars} characters is over pipeline.max_transcript_chars "
            f"({limits.max_transcript_chars})"
        )
    dialogues = build_micro_dialogues(transcript)
    if len(dialogues) > limits.max_micro_dialogues:
        raise OverLimitError(
            f"{len(dialogues)} micro-dialogues are over pipeline.max_micro_dialogues "
            f"({limits.max_micro_dialogues})"
        )
    return dialogues


def _inputs(
    runtime: Runtime, item: WorkItem
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None] | None:
    """(transcript document, Encounter, Patient) of an encounter at DETECT, or None (moved on
    by another process, or skipped here for want of a transcript)."""
    connection, encounter = item.connection, item.encounter
    with runtime.store.session() as session:
        row = work.get_encounter(session, connection, encounter)
        if row is None or row.step != Step.DETECT:
            return None
        docs = [
            d for d in work.sources_for(session, connection, encounter, "DocumentReference")
            if is_transcript(d) and d.get("status", "current") == "current"
        ]  # fmt: skip
        enc = work.source(session, connection, "Encounter", str(reference_id(encounter))) or {}
        patient = work.source(session, connection, "Patient", str(reference_id(row.patient)))
        if not docs:
            work.advance(session, row, Step.SKIPPED, {"skipped": "no transcript"})
            return None
        doc = sorted(docs, key=lambda d: (str(d.get("date", "")), str(d["id"])))[-1]
        return with_staged_binaries(session, connection, doc), enc, patient


def _set_aside(runtime: Runtime, item: WorkItem, doc_id: str, exc: Exception) -> None:
    """Record why the transcript cannot be used: unreadable (skipped) or over a bound (failed,
    for `work retry` once the bound is raised)."""
    with runtime.store.session() as session:
        row = work.get_encounter(session, item.connection, item.encounter)
        if row is None:
            return
        if isinstance(exc, OverLimitError):
            work.record_failure(session, row, f"DocumentReference/{doc_id}: {exc}")
            work.dead_letter(session, row, Step.FAILED)
        else:
            work.advance(session, row, Step.SKIPPED, {"skipped": f"transcript: {exc}"})


def _record(runtime: Runtime, item: WorkItem, state: dict[str, Any]) -> bool:
    with runtime.store.session() as session:
        row = work.get_encounter(session, item.connection, item.encounter)
        if row is None or row.step != Step.DETECT:
            return False
        work.advance(session, row, Step.DRAFT, state)
        return True


async def detect(runtime: Runtime, item: WorkItem) -> int:
    """Run the model on the encounter's transcript; returns the number of detections.

    Everything but the model call runs off the event loop (database and CPU work): in the API
    process the loop also answers health checks.
    """
    backend = runtime.backend
    inputs = await asyncio.to_thread(_inputs, runtime, item)
    if inputs is None:
        return 0
    doc, enc, patient = inputs
    try:
        dialogues = await asyncio.to_thread(
            _micro_dialogues, doc, role_hints(enc, patient), runtime.settings.pipeline
        )
    except (TranscriptError, OverLimitError) as exc:
        # The message names the problem and position (or the bound), never the text.
        await asyncio.to_thread(_set_aside, runtime, item, str(doc["id"]), exc)
        what = "set aside" if isinstance(exc, OverLimitError) else "unreadable"
        log.warning("%s: DocumentReference/%s %s: %s", item.encounter, doc["id"], what, exc)
        return 0
    with timed(MODEL_SECONDS):
        predictions = await predict_dialogues(backend, [dialogue_turns(d) for d in dialogues])
    found = detections_from(dialogues, predictions, backend.point)
    state = {
        "transcript": f"DocumentReference/{doc['id']}",
        "dialogues": len(dialogues),
        "detections": [detection_to_json(d) for d in found],
    }
    recorded = await asyncio.to_thread(_record, runtime, item, state)
    return len(found) if recorded else 0
