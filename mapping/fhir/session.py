"""Everything one session writes, built in one call.

    build_session_resources(ctx, detections, model, earlier, now=...) -> SessionResources

Two destinations, two reference strategies:
- our FHIR store gets the Device, model card, CarePlan, Tasks (new and reviewed) and the
  Provenance. Each has a logical id derived from its business identifier (`identifiers.py`);
  they reference each other as "Type/id" and are written with PUT (`transaction_bundle` makes
  one atomic, idempotent transaction of them; CarePlan and Tasks reference each other, so write
  them together).
- the EHR gets the note (DocumentReference) and the Communication. EHRs assign ids and accept no
  conditional create, so these carry only their identifier: search by it before posting to
  avoid a duplicate.
Both kinds reference the EHR's Patient, Encounter, Practitioner and transcript as the context
names them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.careplan import CarePlan
from fhir.resources.R4B.communication import Communication
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.provenance import Provenance
from fhir.resources.R4B.task import Task
from fhir_core.fhirabstractmodel import FHIRAbstractModel

from mapping.domain import Detection
from mapping.errors import ResourceError
from mapping.fhir.careplan import build_careplan, careplan_id
from mapping.fhir.communication import build_communication
from mapping.fhir.context import (
    EarlierTask,
    EncounterContext,
    ModelInfo,
    NoteOptions,
    ReviewStatus,
)
from mapping.fhir.device import build_device, build_model_card, device_id
from mapping.fhir.note import build_note, note_version
from mapping.fhir.provenance import build_provenance
from mapping.fhir.summary import build_summary, homework_detections
from mapping.fhir.task import build_task, review_task, task_identifier_value
from mapping.fhir.text import describe_position
from mapping.fhir.validate import as_json, parse

__all__ = ["SessionResources", "build_session_resources", "transaction_bundle"]


@dataclass(frozen=True)
class SessionResources:
    """What one session produces. `careplan` is None when no homework was set;
    `provenance` is None when nothing goes to the store (no homework, no review outcome)."""

    careplan: CarePlan | None
    tasks: tuple[Task, ...]
    reviewed_tasks: tuple[Task, ...]
    device: Device
    model_card: DocumentReference
    provenance: Provenance | None
    note: DocumentReference
    communication: Communication
    # The `masterIdentifier` the note takes where it goes to the chart as a new version (the
    # drafted note carries none): a session drafted again on an EHR that refuses note update.
    note_version: dict[str, str]

    def store_resources(self) -> list[FHIRAbstractModel]:
        """For our FHIR store, in write order; empty when there is nothing to write."""
        if self.provenance is None:
            return []
        plan: list[FHIRAbstractModel] = [self.careplan] if self.careplan is not None else []
        return [
            self.device,
            self.model_card,
            *plan,
            *self.tasks,
            *self.reviewed_tasks,
            self.provenance,
        ]

    def chart_resources(self) -> list[FHIRAbstractModel]:
        """For the EHR: the note, then the inbox message."""
        return [self.note, self.communication]


def _reviewed(ctx: EncounterContext, item: EarlierTask, now: datetime) -> Task:
    evidence = item.evidence if item.outcome is ReviewStatus.REVIEWED else None
    therapist = evidence.dialogue.therapist if evidence else None
    return review_task(
        item.task,
        item.outcome,
        encounter=ctx.encounter,
        now=now,
        quote=therapist.text if therapist else None,
        position=therapist.first if therapist else None,
        confidence=evidence.review_confidence if evidence else None,
    )


def build_session_resources(
    ctx: EncounterContext,
    detections: Sequence[Detection],
    model: ModelInfo,
    earlier: Sequence[EarlierTask] = (),
    *,
    now: datetime,
    options: NoteOptions = NoteOptions(),  # noqa: B008 - frozen dataclass, never mutated
) -> SessionResources:
    """All resources for one session.

    Dates are the session's, never the clock's: homework is authored when the session starts,
    the note, the message and a review settled by this session date from its end. `now`, the
    processing time, is only the Provenance's `recorded` (the store stamps meta.lastUpdated).
    A backfill of last year's sessions carries last year's dates.
    """
    set_at, written_at = ctx.period_start, ctx.period_end
    homework = homework_detections(detections)
    seen: dict[str, Detection] = {}
    for detection in homework:
        key = task_identifier_value(ctx, detection)
        if key in seen:
            where = describe_position(detection.dialogue.therapist.first)
            raise ResourceError(
                f"two detections for the same turn ({where}, {detection.label.value}); "
                "pass one detection per micro-dialogue"
            )
        seen[key] = detection
    plan_id = careplan_id(ctx)
    tasks = tuple(build_task(ctx, d, careplan_id=plan_id, now=set_at) for d in homework)
    careplan = (
        build_careplan(ctx, tasks, device_id=device_id(model), now=set_at) if tasks else None
    )
    reviewed = tuple(
        _reviewed(ctx, item, written_at)
        for item in earlier
        if item.outcome is not ReviewStatus.AWAITING
    )
    for task in reviewed:
        if not task.id:
            raise ResourceError("an earlier Task has no id; pass it as read from the store")
    targets = [f"CarePlan/{careplan.id}"] if careplan is not None else []
    targets += [f"Task/{t.id}" for t in (*tasks, *reviewed)]
    provenance = (
        build_provenance(
            ctx, model, targets, now=now, activity="CREATE" if careplan is not None else "UPDATE"
        )
        if targets
        else None
    )
    summary = build_summary(ctx, detections, model, earlier)
    return SessionResources(
        careplan=careplan,
        tasks=tasks,
        reviewed_tasks=reviewed,
        device=build_device(model),
        model_card=build_model_card(model),
        provenance=provenance,
        note=build_note(ctx, summary, now=written_at, options=options),
        communication=build_communication(ctx, summary, now=written_at, options=options),
        note_version=note_version(ctx, summary),
    )


def transaction_bundle(resources: Sequence[FHIRAbstractModel], *, base_url: str) -> Bundle:
    """One transaction of PUT Type/id entries (update-as-create) for our FHIR store.

    `base_url` is the store's base ("https://store.example/fhir"); every resource needs an id.
    """
    entries: list[dict[str, Any]] = []
    for resource in resources:
        data = as_json(resource)
        rtype, rid = data["resourceType"], data.get("id")
        if not rid:
            raise ResourceError(f"{rtype} has no id; only store resources go in the transaction")
        entries.append(
            {
                "fullUrl": f"{base_url.rstrip('/')}/{rtype}/{rid}",
                "resource": data,
                "request": {"method": "PUT", "url": f"{rtype}/{rid}"},
            }
        )
    return parse({"resourceType": "Bundle", "type": "transaction", "entry": entries}, Bundle)
