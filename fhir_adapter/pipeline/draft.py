"""The draft step: detections -> FHIR resources in our store, review status, queued writes.

Review status: every `awaiting-review` Task of the patient from an earlier session is settled
by this session, per task (mapping.review_matching): a review turn makes the Task(s) it is about
`reviewed`, citing this encounter and quoting that turn; a general follow-up ("did you manage
the things we agreed?") settles those no specific turn did; the rest become `not-reviewed`.

Where resources go (per connection, `write` settings):
- our store: everything, always (the record of what the service produced, and what the API
  serves to quality teams);
- the care-plan store (`ehr` or a separate FHIR store): CarePlan, Tasks, Device, model card
  and Provenance, written by id (PUT; ids derive from business identifiers);
- the chart: the note and, if enabled, the Communication, created after a search by
  identifier (the big EHRs have no conditional create). A session drafted again (amended
  transcript) on an EHR that refuses note update gets a new note replacing the one that may
  be in the chart (`note_versions`); our store's note is updated in place.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from fhir_adapter.ehr.vendors import vendor_profile
from fhir_adapter.pipeline import note_versions
from fhir_adapter.pipeline.records import detection_from_json
from fhir_adapter.pipeline.staging import encounter_period
from fhir_adapter.pipeline.steps import Step, WorkItem
from fhir_adapter.runtime import Runtime
from fhir_adapter.settings import EhrConnection, FhirStore
from fhir_adapter.store import outbox, resources, work
from fhir_adapter.store.outbox import CARE_PLAN_STORE, CHART, NOTE_PROVENANCE, outbox_key
from fhir_adapter.store.resources import Query
from mapping.domain import Detection
from mapping.errors import MappingError
from mapping.fhir.codes import SID_NOTE_VERSION
from mapping.fhir.context import (
    EarlierTask,
    EncounterContext,
    NoteOptions,
    Ref,
    ReviewStatus,
)
from mapping.fhir.provenance import build_chart_provenance
from mapping.fhir.references import reference_id
from mapping.fhir.session import SessionResources, build_session_resources
from mapping.fhir.supersede import revoked_careplan, superseded_task
from mapping.fhir.task import is_homework
from mapping.fhir.validate import as_json
from mapping.review_matching import match_reviews
from mapping.scores import build_observation, score_resource

log = logging.getLogger(__name__)

# Stands for the note's EHR id until the note is written (see writeback).
UNASSIGNED_NOTE = "DocumentReference/unassigned"


@dataclass(frozen=True)
class DraftResult:
    tasks: int
    reviewed: int
    not_reviewed: int
    observations: int


def _context(
    row_encounter: str, row_patient: str, enc: dict[str, Any], transcript: str | None,
    source: str | None = None,
) -> EncounterContext:  # fmt: skip
    start, end = encounter_period(enc)
    if start is None:
        raise MappingError(f"{row_encounter} has no period.start; cannot date the drafts")
    practitioners = tuple(
        Ref(p["individual"]["reference"], p["individual"].get("display"))
        for p in enc.get("participant") or []
        if str((p.get("individual") or {}).get("reference", "")).split("/")[0]
        in ("Practitioner", "PractitionerRole")
    )
    if not practitioners:
        raise MappingError(
            f"{row_encounter} names no Practitioner participant; the note needs an author"
        )
    provider = enc.get("serviceProvider") or {}
    return EncounterContext(
        patient=Ref(row_patient, (enc.get("subject") or {}).get("display")),
        encounter=Ref(row_encounter),
        practitioners=practitioners,
        period_start=start,
        # A finished encounter without an end is taken to end when it started.
        period_end=end or start,
        transcript=Ref(transcript) if transcript else None,
        # The display names the clinic for quality teams (fidelity by clinic).
        organization=(
            Ref(provider["reference"], provider.get("display"))
            if provider.get("reference")
            else None
        ),
        source=source,
    )


# The clinician's actions build the same context for the session they decide on.
encounter_context = _context


def _earlier_tasks(
    session: Session, patient: str, before: datetime, detections: list[Detection],
    connection: str,
) -> list[EarlierTask]:  # fmt: skip
    reviews = [d for d in detections if d.review]
    earlier_encounters = {
        row.encounter
        for row in work.patient_encounters(session, connection, patient)
        if row.period_start is not None and row.period_start < before
    }
    awaiting, _ = resources.search(
        session,
        Query("Task", patient=patient, business_status=[ReviewStatus.AWAITING.value], count=1000),
    )
    # A cancelled (superseded) or rejected draft was never set: nothing to review.
    waiting = [
        task for task in awaiting
        if (task.get("encounter") or {}).get("reference") in earlier_encounters
        and is_homework(task)
    ]  # fmt: skip
    # Per task: a review turn settles the homework it is about (mapping.review_matching).
    return match_reviews(waiting, reviews)


# Statuses the model's drafting may (re)write: its own drafts, and what an earlier amendment
# cancelled or revoked. Anything else a clinician decided (approved, rejected, added).
_MODEL_OWNED = {"Task": frozenset({"draft", "cancelled"}),
                "CarePlan": frozenset({"draft", "revoked"})}  # fmt: skip


def clinician_decided(resource: dict[str, Any] | None) -> bool:
    """A stored Task or CarePlan that a clinician approved, rejected or added: drafting leaves
    it alone (a reprocessed session must not turn the clinician's plan back into drafts)."""
    if resource is None:
        return False
    owned = _MODEL_OWNED.get(str(resource.get("resourceType")))
    return owned is not None and resource.get("status") not in owned


def _superseded(session: Session, encounter: str, built: SessionResources) -> list[dict[str, Any]]:
    """Drafts (Tasks, the CarePlan) of this encounter in our store that `built` no longer
    holds; what a clinician decided stays as it is."""
    kept = {task.id for task in built.tasks}
    tasks, _ = resources.search(session, Query("Task", encounter=encounter, count=1000))
    out = [superseded_task(t) for t in tasks if t["id"] not in kept and t.get("status") == "draft"]
    if built.careplan is None:
        plans, _ = resources.search(session, Query("CarePlan", encounter=encounter, count=10))
        out += [revoked_careplan(p) for p in plans if p.get("status") == "draft"]
    return out


def _not_decided(
    session: Session, encounter: str, items: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """`items` less this encounter's Tasks and CarePlan that a clinician has decided on."""
    out = []
    for body in items:
        mine = body.get("resourceType") in _MODEL_OWNED and (
            (body.get("encounter") or {}).get("reference") == encounter
        )
        if mine and clinician_decided(resources.get(session, body["resourceType"], body["id"])):
            continue
        out.append(body)
    return out


def _clinician_reviewed(session: Session, encounter: str) -> bool:
    """Whether a clinician decided on any of this encounter's Tasks or its CarePlan."""
    for rtype in ("Task", "CarePlan"):
        found, _ = resources.search(session, Query(rtype, encounter=encounter, count=1000))
        if any(clinician_decided(body) for body in found):
            return True
    return False


def _scores(session: Session, connection: str, encounter: str) -> list[dict[str, Any]]:
    observations = []
    for rtype in ("QuestionnaireResponse", "Observation"):
        for body in work.sources_for(session, connection, encounter, rtype):
            try:
                for score in score_resource(body):
                    observations.append(as_json(build_observation(score)))
            except MappingError as exc:
                # Not a PHQ-9/GAD-7, or unscoreable: said in the log, never a wrong total.
                log.warning("%s/%s not scored: %s", rtype, body.get("id"), exc)
    return observations


def _chart_note(
    session: Session, conn: EhrConnection, note: dict[str, Any], version: str
) -> tuple[tuple[str, str], dict[str, Any]] | None:
    """The key and payload under which the drafted note goes to the chart; None where the chart
    has (or is getting) this very note. `version` is the key the note takes as a new version.

    Where the vendor refuses note update (Epic, Oracle Health) and a version of the note may be
    in the chart (the session drafted again after its transcript was amended), the note goes
    out as a new version replacing the latest one, as a reviewed note does
    (`note_versions.next_version`): queued under the drafted note's key, its update would be
    refused and the amended note would never reach the chart.
    """
    key = outbox_key(note)
    if vendor_profile(conn.vendor).refusal("DocumentReference", "update") is None:
        return key, note
    # Locked (again: `draft` took the lock first): a writer claiming the note now waits for
    # this draft (`next_version`).
    original = outbox._by_key(session, conn.name, CHART, "DocumentReference", *key, lock=True)
    if original is None:
        return key, note  # first drafted: no version of it anywhere yet
    earlier = note_versions.versions(session, conn.name, key[1], lock=True)
    if note_versions.in_chart_already(session, [original, *earlier], note):
        return None  # drafted again unchanged: a new version would repeat the note
    found = note_versions.next_version(session, conn.name, key[1], original, version)
    if found is None:
        return key, note
    return (SID_NOTE_VERSION, found[0]), note_versions.versioned(note, *found)


def _queue_writes(
    session: Session,
    conn: EhrConnection,
    store_items: list[dict[str, Any]],
    note: dict[str, Any] | None,
    note_version: str,
    communication: dict[str, Any],
    note_provenance: dict[str, Any],
) -> None:
    chart = conn.write.chart
    queued = _chart_note(session, conn, note, note_version) if chart.note and note else None
    if queued is not None:
        outbox.enqueue(session, conn.name, CHART, *queued)
    if chart.communication:
        outbox.enqueue(session, conn.name, CHART, outbox_key(communication), communication)
    if chart.provenance and queued is not None:
        # Keyed by the note's row: it targets that note once written (a new version, never
        # the note it replaces).
        system, value = queued[0]
        key = (NOTE_PROVENANCE, f"{system}|{value}")
        outbox.enqueue(session, conn.name, CHART, key, note_provenance)
    target = conn.write.care_plan_store
    if target == "ehr" or isinstance(target, FhirStore):
        for body in store_items:
            outbox.enqueue(session, conn.name, CARE_PLAN_STORE, outbox_key(body), body)


def draft(runtime: Runtime, item: WorkItem, now: datetime | None = None) -> DraftResult | None:
    """Build, store and queue everything for one encounter at step DRAFT.

    Work under no configured EHR (a local backfill) keeps everything in our store.
    """
    now = now or datetime.now(UTC)
    conn = runtime.connection(item.connection)
    # On PostgreSQL a clinician's decision on the session or an operator's `outbox retry` can
    # hold rows this draft waits on while waiting on one it holds: the database aborts one of
    # them, and a draft run again redrafts on what the other committed.
    return runtime.store.run(lambda session: _draft(session, runtime, conn, item, now))


def _draft(
    session: Session, runtime: Runtime, conn: EhrConnection | None, item: WorkItem,
    now: datetime,
) -> DraftResult | None:  # fmt: skip
    model = runtime.model
    connection, encounter = item.connection, item.encounter
    row = work.get_encounter(session, connection, encounter)
    if row is None or row.step != Step.DRAFT:
        return None
    enc = work.source(session, connection, "Encounter", str(reference_id(encounter))) or {}
    detections = [detection_from_json(d) for d in row.state.get("detections", [])]
    try:
        source = conn.base_url if conn is not None else None
        ctx = _context(encounter, row.patient, enc, row.state["transcript"], source)
    except MappingError as exc:
        work.advance(session, row, Step.SKIPPED, {"skipped": str(exc)})
        log.warning("%s skipped: %s", encounter, exc)
        return None
    earlier = _earlier_tasks(session, row.patient, ctx.period_start, detections, connection)
    final = conn is not None and vendor_profile(conn.vendor).document_reference_requires_final
    options = NoteOptions(doc_status="final" if final else "preliminary")
    built = build_session_resources(ctx, detections, model, earlier, now=now, options=options)
    store_items = [as_json(r) for r in built.store_resources()]
    # A session processed again (its transcript was amended): what the new run no longer
    # drafts is cancelled (Tasks) or revoked (the CarePlan), on every target.
    store_items += _superseded(session, encounter, built)
    reviewed_note = _clinician_reviewed(session, encounter)
    store_items = _not_decided(session, encounter, store_items)
    note, communication = as_json(built.note), as_json(built.communication)
    observations = _scores(session, connection, encounter)
    # A session a clinician already reviewed keeps its reviewed note (what they approved);
    # the next decision on the review screen writes the note anew.
    notes = [] if reviewed_note else [note]
    if conn is not None and conn.write.chart.note and notes:
        # Lock order: the note's outbox row, then our store's resources, as a decision
        # takes them (`actions.decide`). The other way round, on PostgreSQL, a draft
        # holding our store's note (or a Task) would wait for the outbox row while a
        # decision holding that row waits for the note (or the Task): a deadlock.
        outbox._by_key(session, conn.name, CHART, "DocumentReference", *outbox_key(note),
                       lock=True)  # fmt: skip
    for body in [*store_items, *notes, communication, *observations]:
        resources.put(session, body, now=now)
    if conn is not None:
        provenance = as_json(build_chart_provenance(ctx, model, UNASSIGNED_NOTE, now=now))
        _queue_writes(session, conn, store_items, None if reviewed_note else note,
                      str(built.note_version["value"]), communication,
                      provenance)  # fmt: skip
    reviewed = sum(1 for e in earlier if e.outcome is ReviewStatus.REVIEWED)
    work.advance(
        session,
        row,
        Step.DONE,
        {
            "tasks": len(built.tasks),
            "reviewed": reviewed,
            "not_reviewed": len(earlier) - reviewed,
            "observations": len(observations),
        },
    )
    return DraftResult(len(built.tasks), reviewed, len(earlier) - reviewed, len(observations))
