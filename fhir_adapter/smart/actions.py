"""A clinician's decisions from the review screen, applied to our store and queued for every
write target in one transaction.

    decide(store, actor, action, now) -> Decided   approve / edit / reject / add

The transitions are `mapping.fhir.approval`'s pure functions; this module reads what they
need (for the session's patient only: a Task of another patient is `NotFound`), writes what
changed, and queues it exactly as the draft step does:

- our store: the Tasks and CarePlan, the clinician's Provenance, the AuditEvent (ours only),
  the note's reviewed version;
- the care-plan store (`ehr` or a separate FHIR store): the Tasks, CarePlan and Provenance,
  PUT by id through the outbox;
- the chart: the note's reviewed version (`note.superseding_note`), per vendor profile. Where
  the EHR allows DocumentReference update (generic), the same note is updated in place (PUT
  with If-Match; its earlier version stays in the server's history, so `relatesTo` is
  dropped: it would name the note itself). Where it does not (Epic, Oracle Health), the
  reviewed version is a new note, `relatesTo` replaces the version before it, queued under
  its version's key (`masterIdentifier`); while that one has no EHR id yet (its write in
  flight or unconfirmed) the new note waits for it. A note never sent is simply written in its
  reviewed form. (`pipeline.note_versions`, shared with the draft step's re-drafted note.)

Idempotent: a decision that changes nothing (a rerun, a double submit) writes nothing, queues
nothing and records nothing. Every outbox row commits with the store change it carries, and
is sent later by the normal write-back (the route kicks it after the commit).

Stale pages: approve, edit and reject carry the Task versions the clinician's page showed; a
decision that would change a Task since changed by someone else is refused (DecisionError,
`mapping.fhir.approval`), one that changes nothing is the idempotent repeat.

Provenance: one per decision, its targets the versions the decision wrote ("Task/1/_history/3"
in our store), so two decisions on one Task never share one, and a retried write of the same
decision is the same one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy.orm import Session

from fhir_adapter.ehr.vendors import vendor_profile
from fhir_adapter.pipeline.draft import encounter_context
from fhir_adapter.pipeline.jobs import LOCAL
from fhir_adapter.pipeline.note_versions import next_version, versioned
from fhir_adapter.pipeline.steps import Step
from fhir_adapter.settings import EhrConnection, FhirStore
from fhir_adapter.store import Store, outbox, resources, work
from fhir_adapter.store.models import FeedbackRow, OutboxRow
from fhir_adapter.store.outbox import CARE_PLAN_STORE, CHART, outbox_key
from fhir_adapter.store.resources import Query
from mapping.errors import DecisionError
from mapping.fhir import approval
from mapping.fhir.audit import DecisionKind, LaunchContext, audit_event, clinician_provenance
from mapping.fhir.codes import P_REVIEW_ENCOUNTER, SID_NOTE, SID_NOTE_VERSION
from mapping.fhir.context import EncounterContext, ModelInfo, NoteOptions, Ref
from mapping.fhir.device import device_id
from mapping.fhir.identifiers import normalize_reference, note_value
from mapping.fhir.note import superseding_note
from mapping.fhir.references import is_fhir_id, reference_id
from mapping.fhir.summary import Approval, approved_summary, model_confidence
from mapping.fhir.supersede import without_server_meta
from mapping.fhir.text import day
from mapping.fhir.validate import as_json

__all__ = ["Actor", "AddItem", "ApproveItems", "Decided", "EditItem", "NotFound", "RejectItem",
           "decide"]  # fmt: skip

# Tasks of one session read at most (a session drafts a handful).
MAX_TASKS = 500
# The pipeline's steps before the session's drafts are stored: an item added then would meet
# the draft step's guard for decided sessions, which keeps the clinician's plan and so writes
# no note for the session.
PROCESSING = frozenset({Step.FETCH, Step.DETECT, Step.DRAFT})


class NotFound(Exception):
    """No such Task (or session) for the session's patient."""


@dataclass(frozen=True)
class Actor:
    """Who decides, for which patient, from which launch: all from the server-side session."""

    connection: EhrConnection | None
    patient: str  # "Patient/<id>"
    encounter: str | None  # the launch's encounter, if any
    clinician: Ref
    launch: LaunchContext
    model: ModelInfo


@dataclass(frozen=True)
class ApproveItems:
    task_ids: tuple[str, ...] | None = None  # None: the whole plan
    # Task id -> the versionId the clinician's page showed (None: not checked).
    versions: Mapping[str, str] | None = None


@dataclass(frozen=True)
class EditItem:
    task_id: str
    description: str | None = None
    category: str | None = None
    due: date | None = None
    version: str | None = None  # the Task's versionId the page showed (None: not checked)


@dataclass(frozen=True)
class RejectItem:
    task_id: str
    reason: str
    version: str | None = None  # the Task's versionId the page showed (None: not checked)


@dataclass(frozen=True)
class AddItem:
    category: str
    description: str
    due: date | None = None


Action = ApproveItems | EditItem | RejectItem | AddItem


@dataclass(frozen=True)
class Decided:
    kind: DecisionKind
    written: tuple[str, ...]  # "Type/id" of what changed; empty for a rerun
    # The connection whose outbox the decision queued rows for (None: our store only, as for
    # work filed under `local`): the one to write back.
    queued_for: str | None = None

    @property
    def changed(self) -> bool:
        return bool(self.written)


def _search(session: Session, rtype: str, **query: Any) -> list[dict[str, Any]]:
    found, _ = resources.search(session, Query(rtype, count=MAX_TASKS, **query))
    return found


def _task(session: Session, actor: Actor, task_id: str) -> dict[str, Any]:
    if not is_fhir_id(task_id):
        raise NotFound(task_id)
    body = resources.get(session, "Task", task_id)
    if body is None or (body.get("for") or {}).get("reference") != actor.patient:
        raise NotFound(task_id)
    return body


def _encounter_of(task: dict[str, Any]) -> str:
    return str((task.get("encounter") or {}).get("reference", ""))


def _context(
    session: Session, actor: Actor, encounter: str, adding: bool = False
) -> tuple[EncounterContext, Actor]:
    """The session's context from the work filed under the actor's connection, or under
    `local` (a backfill, the demo): then the actor writes to our store only.

    Without a transcript where the pipeline skipped the session (none found, or unreadable):
    a clinician's own item needs only the session, patient and practitioner. An item added
    while the session is still being processed is a DecisionError (see PROCESSING)."""
    names = [actor.connection.name] if actor.connection is not None else []
    bare = str(reference_id(encounter))
    for name in [*names, LOCAL]:
        row = work.get_encounter(session, name, encounter)
        enc = work.source(session, name, "Encounter", bare)
        if row is not None and enc is not None and row.patient == actor.patient:
            if adding and row.step in PROCESSING:
                raise DecisionError(
                    "this session's transcript is still being processed, so nothing was "
                    "added; the homework the model drafts appears on this page within a few "
                    "minutes: reload it then, and add what the model missed"
                )
            # A session that failed before its drafts were stored goes back to that step when
            # an operator retries it (`work retry`): the same guard holds.
            failed_at = row.state.get("failed_at", "fetch")  # as `work retry` reads it
            if adding and row.step == Step.FAILED and failed_at in PROCESSING:
                raise DecisionError(
                    "this session's transcript could not be processed yet, so nothing was "
                    "added; ask your administrator to retry it (homework-fhir work retry), "
                    "then reload this page and add what the model missed"
                )
            source = actor.connection.base_url if name != LOCAL and actor.connection else None
            ctx = encounter_context(encounter, actor.patient, enc, row.state.get("transcript"),
                                    source)  # fmt: skip
            return ctx, actor if name != LOCAL else dataclasses.replace(actor, connection=None)
    raise NotFound(encounter)


def _plan_and_tasks(
    session: Session, actor: Actor, encounter: str
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The session's CarePlan (if any) and every Task of it (cancelled drafts that are no
    longer its activities left out)."""
    plans = [p for p in _search(session, "CarePlan", encounter=encounter)
             if (p.get("subject") or {}).get("reference") == actor.patient]  # fmt: skip
    plan = next((p for p in plans if p.get("status") != "revoked"), None)
    tasks = [t for t in _search(session, "Task", encounter=encounter, patient=actor.patient)]
    if plan is None:
        return None, tasks
    ref = f"CarePlan/{plan['id']}"
    activities = {(a.get("reference") or {}).get("reference") for a in plan.get("activity") or ()}
    mine = [
        t for t in tasks
        if any((b.get("reference") == ref) for b in t.get("basedOn") or ())
        and (f"Task/{t['id']}" in activities or t.get("status") != "cancelled")
    ]  # fmt: skip
    return plan, mine


class _Writes:
    """What one decision changes, written to our store and queued for the care-plan store."""

    def __init__(self, session: Session, actor: Actor, now: datetime) -> None:
        self.session, self.actor, self.now = session, actor, now
        self.written: list[str] = []  # "Type/id"
        self.versions: list[str] = []  # the same, "Type/id/_history/n": the versions written

    def put(self, body: dict[str, Any]) -> bool:
        rtype, rid = body["resourceType"], body["id"]
        before = resources.get(self.session, rtype, rid)
        stored = resources.put(self.session, body, now=self.now)
        if before is not None and before["meta"]["versionId"] == stored["meta"]["versionId"]:
            return False
        self.written.append(f"{rtype}/{rid}")
        self.versions.append(f"{rtype}/{rid}/_history/{stored['meta']['versionId']}")
        self._care_plan_store(without_server_meta(stored))
        return True

    def _care_plan_store(self, body: dict[str, Any]) -> None:
        conn = self.actor.connection
        if conn is None:
            return
        target = conn.write.care_plan_store
        if target == "ehr" or isinstance(target, FhirStore):
            if body["resourceType"] == "Provenance":
                # Our version numbers are not the care-plan store's (it counts its own writes,
                # and queued writes of one resource coalesce): there the targets are unversioned.
                body = {**body, "target": [{**t, "reference": normalize_reference(t["reference"])}
                                           for t in body["target"]]}  # fmt: skip
            outbox.enqueue(self.session, conn.name, CARE_PLAN_STORE, outbox_key(body), body)


def _note(writes: _Writes, ctx: EncounterContext, tasks: list[dict[str, Any]]) -> None:
    """The chart note's reviewed version, in our store and for the chart (per vendor)."""
    session, actor, now = writes.session, writes.actor, writes.now
    value = note_value(ctx.encounter_key)
    ours = next(
        (n for n in _search(session, "DocumentReference", encounter=ctx.encounter.reference)
         if any(i.get("system") == SID_NOTE and i.get("value") == value
                for i in n.get("identifier") or ())),
        None,
    )  # fmt: skip
    if ours is None:
        return
    conn = actor.connection
    chart = conn is not None and conn.write.chart.note
    original = _note_row(session, actor, ctx)
    earlier = [
        t for t in _search(session, "Task", patient=actor.patient)
        if any(o.get("valueReference", {}).get("reference") == ctx.encounter.reference
               and any(c.get("code") == P_REVIEW_ENCOUNTER
                       for c in o.get("type", {}).get("coding", []))
               for o in t.get("output") or ())
    ]  # fmt: skip
    shown = [t for t in tasks if t.get("status") not in ("cancelled", "entered-in-error")]
    approval_of = Approval(clinician=actor.clinician.display or actor.clinician.reference,
                           day=day(now))  # fmt: skip
    summary = approved_summary(day(ctx.period_start), shown, actor.model, approval_of, earlier)
    doc_status = str(ours.get("docStatus") or "preliminary")
    options = NoteOptions(doc_status="final" if doc_status == "final" else "preliminary")
    new = as_json(superseding_note(ours, ctx, summary, clinician=actor.clinician, now=now,
                                   options=options))  # fmt: skip
    refused = conn is not None and vendor_profile(conn.vendor).refusal("DocumentReference",
                                                                      "update")  # fmt: skip
    version = (
        next_version(session, conn.name, value, original, str(new["masterIdentifier"]["value"]))
        if conn is not None and chart and refused
        else None
    )
    if version is not None:
        new = versioned(new, *version)
    in_place = {k: v for k, v in new.items() if k != "relatesTo"}
    # Our store: the note updated in place (its history keeps the drafted version).
    stored = resources.put(session, {**in_place, "id": ours["id"]}, now=now)
    if stored["meta"]["versionId"] != ours["meta"]["versionId"]:
        writes.written.append(f"DocumentReference/{ours['id']}")
    if conn is None or not chart:
        return
    if version is None:
        # PUT in place where the EHR allows it; a note not yet in the chart goes out reviewed.
        outbox.enqueue(session, conn.name, CHART, (SID_NOTE, value), in_place)
    else:
        # A new note replacing the version before it, keyed by its own version.
        outbox.enqueue(session, conn.name, CHART, (SID_NOTE_VERSION, version[0]), new)


def _note_row(session: Session, actor: Actor, ctx: EncounterContext) -> OutboxRow | None:
    """The session's chart note in the outbox, read locked (a writer claiming it waits for
    this decision: `next_version`); None where the actor writes no note to the chart."""
    conn = actor.connection
    if conn is None or not conn.write.chart.note:
        return None
    value = note_value(ctx.encounter_key)
    return outbox._by_key(session, conn.name, CHART, "DocumentReference", SID_NOTE, value,
                          lock=True)  # fmt: skip


def _feedback(session: Session, before: dict[str, Any], decision: approval.Decision,
              now: datetime) -> None:  # fmt: skip
    record = approval.feedback_record(before, decision)
    session.add(FeedbackRow(task=record["task"], decision=record["decision"], record=record,
                            created_at=now))  # fmt: skip


def decide(store: Store, actor: Actor, action: Action, now: datetime) -> Decided:
    """Apply `action` for `actor`; NotFound for a Task or session not of the actor's patient,
    DecisionError for a decision the Task's state refuses, ResourceError for bad input."""
    # On PostgreSQL a re-draft of the session or an operator's `outbox retry` can hold rows this
    # decision waits on while waiting on one it holds: the database aborts one of them, and
    # this one, run again, decides on what the other committed.
    return store.run(lambda session: _decide(session, actor, action, now))


def _decide(session: Session, actor: Actor, action: Action, now: datetime) -> Decided:
    clinician = actor.clinician
    writes = _Writes(session, actor, now)
    kind: DecisionKind
    if isinstance(action, AddItem):
        kind = "add"
        encounter = actor.encounter or _latest_encounter(session, actor)
        ctx, actor = _context(session, actor, encounter, adding=True)
        writes.actor = actor
        # Lock order: the note's outbox row before anything this decision writes, as the
        # draft step takes them (`draft.draft`): the other order can deadlock.
        _note_row(session, actor, ctx)
        decision_add = approval.Add(clinician, now, action.category, action.description,
                                    action.due)  # fmt: skip
        task = approval.add(ctx, decision_add)
        existing = resources.get(session, "Task", task["id"])
        if existing is not None:
            task = existing  # a double submit: the same item, as it is now
        elif writes.put(task):
            _feedback(session, task, decision_add, now)
        plan, tasks = _plan_and_tasks(session, actor, encounter)
        if plan is None:
            added = [t for t in tasks if model_confidence(t) is None]
            writes.put(
                approval.clinician_careplan(ctx, added, approval.Approve(clinician, now))
            )
        elif plan.get("status") == "active":
            done = approval.approve(plan, tasks, approval.Approve(clinician, now, ()))
            writes.put(done.careplan)
    else:
        task_ids = (action.task_ids or ()) if isinstance(action, ApproveItems) else (
            action.task_id,)  # fmt: skip
        first = [_task(session, actor, t) for t in task_ids]
        if isinstance(action, ApproveItems) and not first:
            encounter = actor.encounter or _latest_encounter(session, actor)
        else:
            encounter = _encounter_of(first[0])
        ctx, actor = _context(session, actor, encounter)
        writes.actor = actor
        # Lock order: the note's outbox row before anything this decision writes, as the
        # draft step takes them (`draft.draft`): the other order can deadlock.
        _note_row(session, actor, ctx)
        plan, tasks = _plan_and_tasks(session, actor, encounter)
        if isinstance(action, ApproveItems):
            kind = "approve"
            if plan is None:
                raise NotFound(f"no homework plan for {encounter}")
            approve = approval.Approve(clinician, now, action.task_ids, action.versions)
            decision: approval.Decision = approve
            done = approval.approve(plan, tasks, approve)
            before = {t["id"]: t for t in tasks}
            for after in done.tasks:
                if writes.put(after):
                    _feedback(session, before[after["id"]], decision, now)
            writes.put(done.careplan)
        elif isinstance(action, EditItem):
            kind = "edit"
            decision = approval.Edit(clinician, now, action.description, action.category,
                                     action.due, action.version)  # fmt: skip
            if writes.put(approval.edit(first[0], decision)):
                _feedback(session, first[0], decision, now)
        else:
            kind = "reject"
            decision = approval.Reject(clinician, now, action.reason, action.version)
            if writes.put(approval.reject(first[0], decision)):
                _feedback(session, first[0], decision, now)
    if not writes.written:
        return Decided(kind, ())
    plan, tasks = _plan_and_tasks(session, actor, encounter)
    if (plan is not None and plan.get("status") == "active") or any(
        t.get("status") == "requested" for t in tasks
    ):
        _note(writes, ctx, tasks)
    care = [v for v in writes.versions if not v.startswith("DocumentReference/")]
    provenance = as_json(clinician_provenance(care, clinician, kind, now=now,
                                              launch=actor.launch))  # fmt: skip
    writes.put(provenance)
    event = as_json(
        audit_event(kind, clinician=clinician, patient=Ref(actor.patient),
                    entities=writes.written, now=now, launch=actor.launch,
                    observer=Ref(f"Device/{device_id(actor.model)}"))
    )  # fmt: skip
    resources.put(session, event, now=now)  # ours only: the EHR keeps its own audit
    conn = actor.connection
    return Decided(kind, tuple(writes.written), conn.name if conn is not None else None)


def _latest_encounter(session: Session, actor: Actor) -> str:
    """The patient's latest session with homework (what the review screen shows without an
    encounter in the launch)."""
    tasks = _search(session, "Task", patient=actor.patient)
    if not tasks:
        raise NotFound("no session with homework")
    latest = max(tasks, key=lambda t: (str(t.get("authoredOn", "")), t["id"]))
    return _encounter_of(latest)


_KINDS: dict[type, DecisionKind] = {
    ApproveItems: "approve", EditItem: "edit", RejectItem: "reject", AddItem: "add",
}  # fmt: skip


def refused(store: Store, actor: Actor, action: Action, message: str, now: datetime) -> None:
    """Audit a decision the Task's state refused: the attempt is an action too."""
    if isinstance(action, EditItem | RejectItem):
        entities = [f"Task/{action.task_id}"]
    elif isinstance(action, ApproveItems) and action.task_ids:
        entities = [f"Task/{t}" for t in action.task_ids]
    else:
        entities = [f"Patient/{actor.patient.removeprefix('Patient/')}"]
    record_refusal(store, actor, _KINDS[type(action)], entities, message, now)


def record_refusal(store: Store, actor: Actor, kind: DecisionKind, entities: list[str],
                   message: str, now: datetime) -> None:  # fmt: skip
    """An AuditEvent (outcome minor failure) for a decision the Task's state refused."""
    if not entities:
        return
    event = as_json(
        audit_event(kind, clinician=actor.clinician, patient=Ref(actor.patient),
                    entities=entities, now=now, launch=actor.launch,
                    observer=Ref(f"Device/{device_id(actor.model)}"), outcome="4",
                    outcome_desc=message)
    )  # fmt: skip
    with store.session() as session:
        resources.put(session, event, now=now)
