"""A reviewed session for the approval tests: the drafts of a tests/data/fhir case and the
clinician's decisions from tests/data/fhir-approval/<case>/input.json."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from mapping.fhir import EncounterContext, ModelInfo, Ref, as_json, build_session_resources
from mapping.fhir.approval import Add, Approve, Approved, Edit, Reject, add, approve, edit, reject
from mapping.fhir.audit import LaunchContext
from tests.mapping import golden
from tests.mapping.fhir_cases import load_case, ref

AREA = "fhir-approval"


@dataclass(frozen=True)
class Drafts:
    ctx: EncounterContext
    model: ModelInfo
    careplan: dict[str, Any]
    tasks: list[dict[str, Any]]
    note: dict[str, Any]


def drafts(case: str) -> Drafts:
    """What the pipeline wrote for tests/data/fhir/<case>; the note as the EHR stored it."""
    args = load_case(golden.load("fhir", case))
    ctx, detections, model = args.pop("ctx"), args.pop("detections"), args.pop("model")
    built = build_session_resources(ctx, detections, model, **args)
    assert built.careplan is not None
    return Drafts(
        ctx=ctx,
        model=model,
        careplan=as_json(built.careplan),
        tasks=[as_json(t) for t in built.tasks],
        note=as_json(built.note),
    )


def stored(resource: dict[str, Any], version: str = "1") -> dict[str, Any]:
    """The resource as a FHIR server returns it: with versionId and lastUpdated."""
    server = {"versionId": version, "lastUpdated": "2024-05-02T23:00:00Z"}
    return {**resource, "meta": {**resource.get("meta", {}), **server}}


def decoded(note: dict[str, Any], content_type: str = "text/plain") -> str:
    [data] = [
        c["attachment"]["data"]
        for c in note["content"]
        if c["attachment"]["contentType"] == content_type
    ]
    return base64.b64decode(data).decode("utf-8")


@dataclass(frozen=True)
class Flow:
    """One review: edit the first draft, reject the second, add an item, approve the plan."""

    data: dict[str, Any]
    drafts: Drafts
    clinician: Ref
    now: datetime
    launch: LaunchContext
    observer: Ref
    edit: Edit
    reject: Reject
    add: Add
    edited: dict[str, Any]
    rejected: dict[str, Any]
    added: dict[str, Any]
    approved: Approved


def flow(case: str) -> Flow:
    data = golden.load(AREA, case)
    d = drafts(data["session"])
    clinician = ref(data["clinician"])
    observer = ref(data["observer"])
    assert clinician is not None and observer is not None
    now = datetime.fromisoformat(data["now"])
    launch_data = data["launch"]
    launch = LaunchContext(
        session=launch_data["session"],
        launch=launch_data.get("launch"),
        encounter=ref(launch_data.get("encounter")),
        organization=ref(launch_data.get("organization")),
    )
    e, r, a = data["edit"], data["reject"], data["add"]
    edit_decision = Edit(
        clinician,
        now,
        description=e.get("description"),
        category=e.get("category"),
        due=date.fromisoformat(e["due"]) if e.get("due") else None,
    )
    reject_decision = Reject(clinician, now, r["reason"])
    add_decision = Add(
        clinician,
        now,
        a["category"],
        a["description"],
        date.fromisoformat(a["due"]) if a.get("due") else None,
    )
    edited = edit(stored(d.tasks[e["task"]]), edit_decision)
    rejected = reject(stored(d.tasks[r["task"]]), reject_decision)
    added = add(d.ctx, add_decision)
    approved = approve(stored(d.careplan), [edited, rejected, added], Approve(clinician, now))
    return Flow(
        data=data,
        drafts=d,
        clinician=clinician,
        now=now,
        launch=launch,
        observer=observer,
        edit=edit_decision,
        reject=reject_decision,
        add=add_decision,
        edited=edited,
        rejected=rejected,
        added=added,
        approved=approved,
    )
