"""Stage incoming resources and register their encounters (poll, push and backfill alike).

Resources are linked to an encounter by reference (`DocumentReference.context.encounter`,
`QuestionnaireResponse.encounter`, `Observation.encounter`). A questionnaire or screening
Observation without an encounter is linked to the same patient's encounter whose day it falls
on (one day either side, since questionnaires are often filled in the day before a session);
one that matches no encounter is kept, unlinked, and counted, never dropped silently.

A transcript that is new or changed (another document, an amended one, the same one with
other content) for a session already processed or skipped sends the session back to DETECT,
with the patient's later sessions, as a session charted late does (`_resettle_after`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from fhir_adapter.pipeline.detect import is_transcript
from fhir_adapter.pipeline.steps import Step
from fhir_adapter.store import resources, work
from fhir_adapter.store.resources import Query
from fhir_adapter.store.search_index import parse_datetime
from mapping.fhir.references import RESOURCE_TYPE, is_fhir_id, parse_reference
from mapping.fhir.task import awaiting_again, is_homework, review_encounter

log = logging.getLogger(__name__)

# Encounter statuses that mean the session happened and is over.
FINISHED = frozenset({"finished"})
STAGED_TYPES = frozenset(
    {"Encounter", "Patient", "Practitioner", "DocumentReference", "Binary",
     "QuestionnaireResponse", "Observation", "Questionnaire"}
)  # fmt: skip
# How far from an encounter's day an unlinked questionnaire may be and still belong to it.
LINK_WINDOW = timedelta(days=1)


@dataclass
class StageSummary:
    encounters_new: int = 0
    encounters_known: int = 0
    encounters_not_finished: int = 0
    # Processed sessions whose transcript is new or changed in this batch: processed again.
    encounters_amended: int = 0
    # Processed sessions after a session charted late (new here, earlier than they) or amended:
    # processed again, so review statuses are settled in session order.
    encounters_resettled: int = 0
    staged: int = 0
    unlinked: int = 0
    ignored_types: dict[str, int] = field(default_factory=dict)
    # The finished encounters of this batch (new or known), in the order they came.
    encounters: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "encounters"}


def _ref(value: Any) -> str | None:
    """ "Type/id" of the (first) reference in `value`: an EHR that answers with absolute
    references files its work under the same keys as one that answers with relative ones."""
    ref = parse_reference(value)
    # A reference outside FHIR's grammar (an id over 64 characters, say) links nothing.
    if ref is None or not is_fhir_id(ref.id) or not RESOURCE_TYPE.fullmatch(ref.resource_type):
        return None
    return ref.relative


def transcript_changed(before: dict[str, Any] | None, after: dict[str, Any]) -> bool:
    """Whether `after` is a new or amended version of the transcript staged as `before`.

    Compared on what means a new version (a newer server version, another docStatus, other
    content), not on the shape: the same document fetched by the poller (its Binary inlined)
    and read from an export (a url to the Binary) is the same transcript.
    """
    if before is None:
        return True
    old_meta, new_meta = before.get("meta") or {}, after.get("meta") or {}
    for key in ("versionId", "lastUpdated"):
        if old_meta.get(key) and new_meta.get(key) and old_meta[key] != new_meta[key]:
            return True
    if before.get("docStatus") != after.get("docStatus"):
        return True
    old_items, new_items = before.get("content") or [], after.get("content") or []
    if len(old_items) != len(new_items):
        return True
    for old_item, new_item in zip(old_items, new_items, strict=True):
        old_att = old_item.get("attachment") or {}
        new_att = new_item.get("attachment") or {}
        for key in ("data", "url", "hash"):
            if old_att.get(key) and new_att.get(key) and old_att[key] != new_att[key]:
                return True
    return False


def encounter_period(encounter: dict[str, Any]) -> tuple[datetime | None, datetime | None]:
    period = encounter.get("period") or {}
    start = parse_datetime(period["start"]) if period.get("start") else None
    end = parse_datetime(period["end"]) if period.get("end") else None
    return start, end


def resource_time(resource: dict[str, Any]) -> datetime | None:
    """When a questionnaire or screening Observation was filled in, if it says."""
    for key in ("authored", "effectiveDateTime", "issued"):
        if resource.get(key):
            try:
                return parse_datetime(str(resource[key]))
            except ValueError:
                return None
    return None


def _links(resource: dict[str, Any]) -> tuple[str | None, str | None]:
    """(encounter, patient) references a resource names."""
    rtype = resource["resourceType"]
    if rtype == "Encounter":
        return f"Encounter/{resource['id']}", _ref(resource.get("subject"))
    if rtype == "Patient":
        return None, f"Patient/{resource['id']}"
    if rtype == "DocumentReference":
        return _ref((resource.get("context") or {}).get("encounter")), _ref(resource.get("subject"))
    if rtype in ("QuestionnaireResponse", "Observation"):
        return _ref(resource.get("encounter")), _ref(resource.get("subject"))
    return None, None


def stage(
    session: Session,
    connection: str,
    resources: Iterable[dict[str, Any]],
    first_step: Step,
) -> StageSummary:
    """Stage `resources` and register their finished encounters at `first_step`.

    Push and backfill hand over every input, so their encounters start at DETECT; the poller
    knows only the Encounter, so its encounters start at FETCH.
    """
    summary = StageSummary()
    pending_links: list[tuple[dict[str, Any], str | None]] = []
    encounters: dict[str, tuple[str | None, datetime | None, datetime | None]] = {}
    # Encounter -> a transcript of it that is new or changed in this batch.
    changed_transcripts: dict[str, str] = {}
    for resource in resources:
        rtype = resource.get("resourceType")
        if rtype not in STAGED_TYPES or not is_fhir_id(str(resource.get("id") or "")):
            key = str(rtype or "unknown")[:64]
            summary.ignored_types[key] = summary.ignored_types.get(key, 0) + 1
            continue
        encounter, patient = _links(resource)
        if rtype == "Encounter":
            start, end = encounter_period(resource)
            if resource.get("status") not in FINISHED:
                summary.encounters_not_finished += 1
            else:
                encounters[str(encounter)] = (patient, start, end)
        if rtype in ("QuestionnaireResponse", "Observation") and encounter is None:
            pending_links.append((resource, patient))
            continue
        if rtype == "DocumentReference" and encounter is not None and is_transcript(resource):
            before = work.source(session, connection, "DocumentReference", str(resource["id"]))
            if transcript_changed(before, resource):
                changed_transcripts.setdefault(str(encounter), str(resource["id"]))
        work.stage_source(session, connection, resource, encounter, patient)
        summary.staged += 1
    for ref, (patient, start, end) in encounters.items():
        if patient is None:
            log.warning("%s has no subject; skipped", ref)
            continue
        _, created = work.upsert_encounter(
            session, connection, ref, patient, start, end, first_step
        )
        summary.encounters.append(ref)
        if created:
            summary.encounters_new += 1
            if start is not None:
                summary.encounters_resettled += _resettle_after(
                    session, connection, patient, ref, start
                )
        else:
            summary.encounters_known += 1
    amended: list[tuple[str, str, datetime]] = []
    for encounter, document in changed_transcripts.items():
        row = work.get_encounter(session, connection, encounter)
        if row is not None and row.step in (Step.DONE, Step.SKIPPED):
            # An amended (or first readable) transcript of a processed session: run it again;
            # the draft step supersedes what the earlier transcript produced.
            work.reopen(session, row, Step.DETECT, f"DocumentReference/{document}")
            summary.encounters_amended += 1
            if encounter not in summary.encounters:
                summary.encounters.append(encounter)
            log.info("%s: transcript DocumentReference/%s is new or changed; reprocessing",
                     encounter, document)  # fmt: skip
            if row.period_start is not None:
                amended.append((row.patient, encounter, row.period_start))
    # Once every amended session is reopened (one may be another's later session): its new
    # Tasks must be settled by its next session again, and what it settled settled anew.
    for patient, encounter, start in amended:
        summary.encounters_resettled += _resettle_after(
            session, connection, patient, encounter, start, amended=True
        )
    for resource, patient in pending_links:
        encounter = _nearest_encounter(session, connection, patient, resource_time(resource))
        if encounter is None:
            summary.unlinked += 1
            log.info("%s/%s matches no encounter; kept unlinked",
                     resource["resourceType"], resource["id"])  # fmt: skip
        work.stage_source(session, connection, resource, encounter, patient)
        summary.staged += 1
    return summary


def _resettle_after(
    session: Session,
    connection: str,
    patient: str,
    encounter: str,
    start: datetime,
    *,
    amended: bool = False,
) -> int:
    """A session charted late or `amended`: the patient's processed sessions after it go back
    to DETECT (the runner takes them again in session order), and the Tasks those sessions
    settled go back to awaiting-review, so each Task is settled by its own next session. An
    amended session's own settling goes back too: it is done again from the new transcript.
    Tasks that are no homework (cancelled, rejected) are left as they are.
    The targets are updated when the sessions are processed again. Returns the sessions sent
    back."""
    later = [
        row for row in work.patient_encounters(session, connection, patient, (Step.DONE,))
        if row.period_start is not None and row.period_start > start and row.encounter != encounter
    ]  # fmt: skip
    again = {row.encounter for row in later} | ({encounter} if amended else set())
    if not again:
        return 0
    found, _ = resources.search(session, Query("Task", patient=patient, count=10_000))
    for task in found:
        # A cancelled or rejected Task was never set: nothing settles it again, so it keeps
        # what it has (a rejected one has no review status to go back to).
        if is_homework(task) and review_encounter(task) in again:
            resources.put(session, awaiting_again(task))
    cause = f"{encounter} {'amended' if amended else 'charted late'}"
    for row in later:
        work.reopen(session, row, Step.DETECT, cause)
    if later:
        log.info("%s; %d later session(s) of its patient settle again in order",
                 cause, len(later))  # fmt: skip
    return len(later)


def _nearest_encounter(
    session: Session, connection: str, patient: str | None, when: datetime | None
) -> str | None:
    if patient is None or when is None:
        return None
    best: tuple[timedelta, str] | None = None
    for row in work.patient_encounters(session, connection, patient):
        if row.period_start is None:
            continue
        end = row.period_end or row.period_start
        if row.period_start - LINK_WINDOW <= when <= end + LINK_WINDOW:
            distance = abs(when - row.period_start)
            if best is None or distance < best[0]:
                best = (distance, row.encounter)
    return None if best is None else best[1]
