"""A clinician's decisions on drafts: golden review flow, R4B and profile validation, labels,
idempotence, refusals, added items and the model team's feedback."""

from __future__ import annotations

import copy
import dataclasses
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from mapping.errors import DecisionError, ResourceError
from mapping.fhir import Ref, problems
from mapping.fhir.approval import (
    MAX_DESCRIPTION,
    MAX_REASON,
    Add,
    Approve,
    Edit,
    Reject,
    add,
    approve,
    clinician_careplan,
    edit,
    feedback_record,
    reject,
)
from mapping.fhir.audit import audit_event, clinician_provenance
from mapping.fhir.codes import (
    AI_ADDED_PROVENANCE,
    AIAST,
    CLINAST_AIRPT,
    CS_HOMEWORK_CATEGORY,
    CS_TASK_PARAMETER,
    EXT_AI_CONFIDENCE,
    P_MODEL_CATEGORY,
    PROFILE_CAREPLAN,
    SID_TASK,
    V3_OBSERVATION_VALUE,
)
from mapping.fhir.note import superseding_note
from mapping.fhir.summary import Approval, approved_summary
from mapping.fhir.supersede import superseded_note
from mapping.fhir.validate import as_json
from tests.mapping import golden
from tests.mapping.approval_cases import AREA, Flow, decoded, drafts, flow, stored

CASES = golden.cases(AREA)
CLINICIAN = Ref("Practitioner/pr-lee", "Dr. Mei Lee")
NOW = datetime(2024, 5, 3, 9, 30, tzinfo=UTC)
LATER = NOW + timedelta(minutes=7)

CLINAST = {
    "system": AI_ADDED_PROVENANCE,
    "code": CLINAST_AIRPT,
    "display": "Clinician Asserted from AI Reported",
}
AI = {"system": V3_OBSERVATION_VALUE, "code": AIAST, "display": "Artificial Intelligence asserted"}
CONFIDENTIAL = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
    "code": "R",
    "display": "restricted",
}


def note_of(f: Flow) -> dict[str, Any]:
    summary = approved_summary(
        f.drafts.ctx.period_start.date().isoformat(),
        f.approved.tasks,
        f.drafts.model,
        Approval(f.clinician.display or f.clinician.reference, f.now.date().isoformat()),
    )
    previous = {**f.drafts.note, "id": f.data["previous_note_id"]}
    return as_json(
        superseding_note(previous, f.drafts.ctx, summary, clinician=f.clinician, now=f.now)
    )


def dump(f: Flow) -> dict[str, Any]:
    targets = [f"CarePlan/{f.approved.careplan['id']}"]
    targets += [f"Task/{t['id']}" for t in f.approved.tasks]
    entities = [*targets]
    note = note_of(f)
    return {
        "edited": f.edited,
        "rejected": f.rejected,
        "added": f.added,
        "careplan": f.approved.careplan,
        "tasks": list(f.approved.tasks),
        "provenance": as_json(
            clinician_provenance(targets, f.clinician, "approve", now=f.now, launch=f.launch)
        ),
        "audit_event": as_json(
            audit_event(
                "approve",
                clinician=f.clinician,
                patient=f.drafts.ctx.patient,
                entities=entities,
                now=f.now,
                launch=f.launch,
                observer=f.observer,
            )
        ),
        "note": note,
        "note_text": decoded(note),
        "feedback": [
            feedback_record(f.drafts.tasks[f.data["edit"]["task"]], f.edit),
            feedback_record(f.drafts.tasks[f.data["reject"]["task"]], f.reject),
            feedback_record(f.added, f.add),
        ],
    }


@pytest.fixture(scope="module")
def review() -> Flow:
    return flow("review-flow")


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    golden.check(AREA, case, dump(flow(case)))


@pytest.mark.parametrize("case", CASES)
def test_every_output_validates_with_its_profiles(case: str) -> None:
    out = dump(flow(case))
    resources = [out["edited"], out["rejected"], out["added"], out["careplan"], *out["tasks"]]
    resources += [out["provenance"], out["audit_event"], out["note"]]
    for resource in resources:
        assert problems(resource) == [], resource["resourceType"]
    assert out["careplan"]["meta"]["profile"] == [PROFILE_CAREPLAN]


# --- approve -------------------------------------------------------------------------------------


def test_approve_makes_the_plan_active_and_the_drafts_requested_plans(review: Flow) -> None:
    plan = review.approved.careplan
    assert (plan["status"], plan["intent"]) == ("active", "plan")
    assert plan["author"] == {"reference": "Practitioner/pr-lee", "display": "Dr. Mei Lee"}
    edited, rejected, added = review.approved.tasks
    assert (edited["status"], edited["intent"]) == ("requested", "plan")
    assert (rejected["status"], rejected["intent"]) == ("rejected", "proposal")
    assert (added["status"], added["intent"]) == ("requested", "plan")
    activities = [a["reference"]["reference"] for a in plan["activity"]]
    assert activities == [f"Task/{t['id']}" for t in review.approved.tasks]
    assert "Dr. Mei Lee on 2024-05-03" in plan["text"]["div"]
    assert "Rejected (Not agreed" in plan["text"]["div"]


def test_labels_exactly_as_specified(review: Flow) -> None:
    edited, rejected, added = review.approved.tasks
    assert review.approved.careplan["meta"]["security"] == [CLINAST]
    assert edited["meta"]["security"] == [CLINAST]
    assert rejected["meta"]["security"] == [AI]  # nobody asserted a rejected draft
    assert "security" not in added.get("meta", {})
    # The AI-reported confidence stays on the approved Task; none on the added one.
    assert edited["extension"] == [{"url": EXT_AI_CONFIDENCE, "valueDecimal": 0.93}]
    assert "extension" not in added


def test_approval_keeps_other_labels_in_place() -> None:
    d = drafts("two-homework")
    task = copy.deepcopy(d.tasks[0])
    task["meta"]["security"] = [CONFIDENTIAL, AI]
    plan = copy.deepcopy(d.careplan)
    plan["meta"]["security"] = [AI, CONFIDENTIAL]
    out = approve(plan, [task, d.tasks[1]], Approve(CLINICIAN, NOW, (task["id"],)))
    assert out.tasks[0]["meta"]["security"] == [CONFIDENTIAL, CLINAST]
    assert out.careplan["meta"]["security"] == [CLINAST, CONFIDENTIAL]
    assert out.tasks[1]["status"] == "draft"  # not named: stays a draft
    assert out.tasks[1]["meta"]["security"] == [AI]


def test_approve_twice_is_approve_once(review: Flow) -> None:
    again = approve(
        review.approved.careplan, review.approved.tasks, Approve(review.clinician, review.now)
    )
    assert again == review.approved
    later = approve(
        stored(review.approved.careplan, "2"),
        [stored(t, "2") for t in review.approved.tasks],
        Approve(Ref("Practitioner/pr-other"), LATER),
    )
    assert later == review.approved  # a double submit changes nothing, not even the dates
    spelled = [{**t, "lastModified": t["lastModified"].replace("Z", "+00:00")} for t in later.tasks]
    assert approve(later.careplan, spelled, Approve(CLINICIAN, LATER)) == review.approved


def test_approve_after_edit_keeps_the_edit(review: Flow) -> None:
    edited = review.approved.tasks[0]
    assert edited["description"] == review.data["edit"]["description"]
    assert edited["restriction"] == {"period": {"end": "2024-05-09"}}
    assert edited["note"] == review.edited["note"]
    assert edited["lastModified"] == "2024-05-03T09:30:00Z"


def test_reject_then_approve_is_refused(review: Flow) -> None:
    rejected = review.rejected
    with pytest.raises(
        DecisionError, match=r"is rejected: it cannot be approved.*add the homework"
    ):
        approve(
            review.approved.careplan,
            review.approved.tasks,
            Approve(CLINICIAN, NOW, (rejected["id"],)),
        )


def test_approving_a_plan_whose_drafts_were_all_rejected_is_refused() -> None:
    d = drafts("two-homework")
    tasks = [reject(t, Reject(CLINICIAN, NOW, "not homework")) for t in d.tasks]
    with pytest.raises(DecisionError, match="nothing to approve"):
        approve(d.careplan, tasks, Approve(CLINICIAN, NOW))


def test_approve_needs_every_task_of_the_plan_and_only_its_tasks() -> None:
    d = drafts("two-homework")
    with pytest.raises(ResourceError, match="pass every Task"):
        approve(d.careplan, d.tasks[:1], Approve(CLINICIAN, NOW))
    other = copy.deepcopy(d.tasks[1])
    other["basedOn"] = [{"reference": "CarePlan/another"}]
    with pytest.raises(ResourceError, match="is not based on"):
        approve(d.careplan, [d.tasks[0], other], Approve(CLINICIAN, NOW))
    with pytest.raises(DecisionError, match="not a Task of"):
        approve(d.careplan, d.tasks, Approve(CLINICIAN, NOW, ("nope",)))
    revoked = {**d.careplan, "status": "revoked"}
    with pytest.raises(DecisionError, match="is revoked"):
        approve(revoked, d.tasks, Approve(CLINICIAN, NOW))


def test_inputs_are_not_changed_and_server_meta_is_dropped() -> None:
    d = drafts("two-homework")
    plan, tasks = stored(d.careplan), [stored(t) for t in d.tasks]
    before = copy.deepcopy((plan, tasks))
    out = approve(plan, tasks, Approve(CLINICIAN, NOW))
    assert (plan, tasks) == before
    assert "versionId" not in out.careplan["meta"]
    assert all("versionId" not in t["meta"] for t in out.tasks)


# --- edit --------------------------------------------------------------------------------------


def test_edit_changes_what_was_asked_and_notes_it() -> None:
    task = drafts("two-homework").tasks[0]
    decision = Edit(CLINICIAN, NOW, category="journal", due=date(2024, 5, 9))
    out = edit(task, decision)
    assert out["code"]["coding"] == [
        {"system": CS_HOMEWORK_CATEGORY, "code": "journal", "display": "Journal or self-monitor"}
    ]
    assert out["description"] == task["description"]
    assert out["restriction"]["period"]["end"] == "2024-05-09"
    assert "executionPeriod" not in out
    [note] = out["note"]
    assert note["authorReference"] == {"reference": "Practitioner/pr-lee", "display": "Dr. Mei Lee"}
    assert note["time"] == "2024-05-03T09:30:00Z"
    assert note["text"] == (
        "Edited by Dr. Mei Lee: category changed from Practise a skill to Journal or "
        "self-monitor; due date 2024-05-09."
    )
    # The model's category is kept for feedback; status and labels are unchanged.
    kept = [i for i in out["input"] if i["type"]["coding"][0]["code"] == P_MODEL_CATEGORY]
    assert kept[0]["valueCodeableConcept"]["coding"][0]["code"] == "practice"
    assert kept[0]["type"]["coding"][0]["system"] == CS_TASK_PARAMETER
    assert (out["status"], out["meta"]["security"]) == ("draft", [AI])
    assert out["id"] == task["id"] and out["identifier"] == task["identifier"]
    assert problems(out) == []


def test_edit_is_idempotent_and_a_second_change_keeps_the_model_category() -> None:
    task = drafts("two-homework").tasks[0]
    decision = Edit(CLINICIAN, NOW, category="journal", description="  Write it down  ")
    once = edit(task, decision)
    assert edit(once, decision) == once
    assert edit(once, dataclasses.replace(decision, now=LATER)) == once
    twice = edit(once, Edit(CLINICIAN, LATER, category="learn"))
    assert len(twice["note"]) == 2
    models = [i for i in twice["input"] if i["type"]["coding"][0]["code"] == P_MODEL_CATEGORY]
    assert len(models) == 1 and models[0]["valueCodeableConcept"]["coding"][0]["code"] == "practice"
    assert feedback_record(once, Edit(CLINICIAN, LATER, category="learn"))["model_category"] == (
        "practice"
    )


def test_edit_refusals() -> None:
    task = drafts("two-homework").tasks[0]
    with pytest.raises(ResourceError, match="groups the homework kinds"):
        Edit(CLINICIAN, NOW, category="homework")
    with pytest.raises(ResourceError, match="take_action"):
        Edit(CLINICIAN, NOW, category="take_action")
    with pytest.raises(ResourceError, match="at least one"):
        Edit(CLINICIAN, NOW)
    with pytest.raises(ResourceError, match="time zone"):
        Edit(CLINICIAN, NOW.replace(tzinfo=None), description="x")
    with pytest.raises(ResourceError, match="Practitioner"):
        Edit(Ref("Patient/pat-ana"), NOW, description="x")
    with pytest.raises(DecisionError, match="before the session"):
        edit(task, Edit(CLINICIAN, NOW, due=date(2024, 5, 1)))
    rejected = reject(task, Reject(CLINICIAN, NOW, "not homework"))
    with pytest.raises(DecisionError, match="is rejected: it cannot be edited"):
        edit(rejected, Edit(CLINICIAN, NOW, description="x"))


def test_text_is_held_to_the_forms_limits() -> None:
    """The review screen's maxlength, on the server: a character of any script counts one, a
    line break (CRLF from a browser) one; only a changed description is held to it."""
    assert Add(CLINICIAN, NOW, "learn", "字" * MAX_DESCRIPTION)
    assert Add(CLINICIAN, NOW, "learn", "a\r\n" * (MAX_DESCRIPTION // 2))
    with pytest.raises(ResourceError, match="2001 characters long; shorten it to 2000"):
        Add(CLINICIAN, NOW, "learn", "字" * (MAX_DESCRIPTION + 1))
    with pytest.raises(ResourceError, match="reason for rejecting is 501 characters"):
        Reject(CLINICIAN, NOW, "x" * (MAX_REASON + 1))
    task = drafts("two-homework").tasks[0]
    with pytest.raises(ResourceError, match="description is 2001 characters"):
        edit(task, Edit(CLINICIAN, NOW, description="y" * (MAX_DESCRIPTION + 1)))
    # A drafted description over the limit, sent back unchanged with another change, stands.
    long = {**task, "description": "z" * (MAX_DESCRIPTION + 500)}
    out = edit(long, Edit(CLINICIAN, NOW, description=long["description"], category="journal"))
    assert out["description"] == long["description"] and problems(out) == []


def test_a_change_from_a_stale_page_is_refused_and_a_repeat_stands() -> None:
    """prac-1 rewords a draft; a page loaded before (version 1) sends the old wording with a
    new category: refused, not a silent undo. A resend of a decision already applied changes
    nothing, whatever version its page showed."""
    d = drafts("two-homework")
    first, second = stored(d.tasks[0], "1"), stored(d.tasks[1], "1")
    reword = Edit(CLINICIAN, NOW, description="Walk ten minutes a day", version="1")
    reworded = edit(first, reword)
    now = stored(reworded, "2")
    stale = Edit(CLINICIAN, LATER, description=first["description"], category="journal",
                 version="1")  # fmt: skip
    with pytest.raises(DecisionError, match=f"Task/{first['id']} was changed by someone else.*"
                       "reload the page"):  # fmt: skip
        edit(now, stale)
    with pytest.raises(DecisionError, match="changed by someone else"):
        reject(now, Reject(CLINICIAN, LATER, "not homework", version="1"))
    with pytest.raises(DecisionError, match="changed by someone else"):
        edit(now, dataclasses.replace(stale, version=""))  # a form that names no version
    assert edit(now, dataclasses.replace(reword, now=LATER)) == reworded  # the double submit
    assert edit(now, dataclasses.replace(stale, version="2"))["code"]["coding"][0]["code"] == (
        "journal"
    )
    # Approve: each draft it would change as the page showed it; one the page never showed
    # (drafted since) is refused too.
    plan = stored(d.careplan)
    for versions in ({first["id"]: "1", second["id"]: "1"}, {first["id"]: "2"}):
        with pytest.raises(DecisionError, match="changed by someone else"):
            approve(plan, [now, second], Approve(CLINICIAN, LATER, versions=versions))
    seen = {first["id"]: "2", second["id"]: "1"}
    done = approve(plan, [now, second], Approve(CLINICIAN, LATER, versions=seen))
    assert {t["status"] for t in done.tasks} == {"requested"}
    again = [stored(t, "3") for t in done.tasks]
    assert approve(stored(done.careplan, "2"), again, Approve(CLINICIAN, LATER, versions=seen)) == (
        done
    )


def test_an_approved_task_can_still_be_edited(review: Flow) -> None:
    approved = review.approved.tasks[0]
    out = edit(approved, Edit(CLINICIAN, LATER, due=date(2024, 5, 16)))
    assert (out["status"], out["meta"]["security"]) == ("requested", [CLINAST])
    assert out["restriction"]["period"]["end"] == "2024-05-16"


# --- reject ------------------------------------------------------------------------------------


def test_reject_records_the_reason_and_is_idempotent(review: Flow) -> None:
    out = review.rejected
    assert out["status"] == "rejected"
    assert out["statusReason"] == {"text": review.data["reject"]["reason"]}
    assert "businessStatus" not in out  # homework never set is never followed up
    assert out["extension"][0]["url"] == EXT_AI_CONFIDENCE
    assert reject(out, review.reject) == out
    assert reject(out, dataclasses.replace(review.reject, now=LATER)) == out
    assert problems(out) == []


def test_a_rejected_task_is_not_rejected_again_for_another_reason() -> None:
    """The same rejection resent stands; another reason would overwrite the first decision and
    give the model team a second, contradictory label."""
    once = reject(drafts("two-homework").tasks[1], Reject(CLINICIAN, NOW, "Not homework"))
    assert reject(stored(once, "2"), Reject(CLINICIAN, LATER, " Not homework ", "1")) == once
    with pytest.raises(DecisionError, match="is rejected: it cannot be rejected again; it was "
                       "rejected already \\(“Not homework”\\)"):  # fmt: skip
        reject(stored(once, "2"), Reject(CLINICIAN, LATER, "Small talk", "2"))


def test_only_a_draft_can_be_rejected(review: Flow) -> None:
    with pytest.raises(DecisionError, match="is requested: it cannot be rejected"):
        reject(review.approved.tasks[0], Reject(CLINICIAN, NOW, "changed my mind"))
    with pytest.raises(ResourceError, match="reason"):
        Reject(CLINICIAN, NOW, "   ")


# --- add ---------------------------------------------------------------------------------------


def test_added_task_is_clinician_asserted(review: Flow) -> None:
    task = review.added
    ctx = review.drafts.ctx
    assert (task["status"], task["intent"]) == ("requested", "plan")
    assert "meta" not in task and "extension" not in task
    assert task["basedOn"] == [{"reference": f"CarePlan/{review.drafts.careplan['id']}"}]
    assert task["identifier"] == [{"use": "official", "system": SID_TASK, "value": task["id"]}]
    assert task["authoredOn"] == "2024-05-02T10:00:00-04:00"  # dated by the session
    assert task["requester"] == ctx.practitioners[0].as_json()
    assert task["note"][0]["authorReference"]["reference"] == "Practitioner/pr-lee"
    assert task["restriction"]["period"]["end"] == "2024-05-09"
    assert problems(task) == []


def test_add_is_stable_under_double_submit(review: Flow) -> None:
    ctx, decision = review.drafts.ctx, review.add
    assert add(ctx, decision) == review.added
    spaced = dataclasses.replace(
        decision, now=LATER, description="  note how you slept each morning,  in a sentence or two."
    )
    again = add(ctx, spaced)
    assert again["id"] == review.added["id"]
    assert again["identifier"] == review.added["identifier"]
    other = add(ctx, dataclasses.replace(decision, description="Something else"))
    assert other["id"] != review.added["id"]
    assert add(ctx, dataclasses.replace(decision, category="learn"))["id"] != review.added["id"]


def test_clinician_careplan_for_a_session_without_drafts() -> None:
    d = drafts("two-homework")
    task = add(d.ctx, Add(CLINICIAN, NOW, "learn", "Read the handout on sleep"))
    plan = clinician_careplan(d.ctx, [task], Approve(CLINICIAN, NOW))
    assert plan["id"] == d.careplan["id"]
    assert (plan["status"], plan["intent"]) == ("active", "plan")
    assert "security" not in plan["meta"]
    assert plan["activity"] == [{"reference": {"reference": f"Task/{task['id']}"}}]
    assert problems(plan) == []
    assert approve(plan, [task], Approve(CLINICIAN, LATER)).careplan == plan
    with pytest.raises(ResourceError, match="drafted by the model"):
        clinician_careplan(d.ctx, [d.tasks[0]], Approve(CLINICIAN, NOW))


# --- feedback ------------------------------------------------------------------------------------


def test_feedback_records(review: Flow) -> None:
    edited, rejected, added = dump(review)["feedback"]
    assert rejected["decision"] == "reject"
    assert rejected["model_category"] == "take-action"
    assert rejected["model_confidence"] == 0.81
    assert rejected["therapist_quote"].startswith("Would you be willing to call your sister")
    assert rejected["client_reply"] == "That's hard, but yes, I'll call her Sunday."
    assert rejected["source_document"] == "DocumentReference/tr-0502"
    assert rejected["source_position"] == "line 20"
    assert rejected["reason"] == review.data["reject"]["reason"]
    assert rejected["clinician_category"] is None
    assert (rejected["decided_by"], rejected["decided_at"]) == (
        "Practitioner/pr-lee",
        "2024-05-03T09:30:00+00:00",
    )
    assert edited["decision"] == "edit"
    assert (edited["model_category"], edited["clinician_category"]) == ("practice", "practice")
    assert added["decision"] == "add" and added["model_category"] is None
    assert added["clinician_category"] == "journal"
    approved = feedback_record(review.drafts.tasks[0], Approve(CLINICIAN, NOW))
    assert (approved["decision"], approved["clinician_category"]) == ("approve", "practice")
    for record in (edited, rejected, added):
        assert "patient" not in record and "for" not in record


# --- the note's new version --------------------------------------------------------------------


def test_superseding_note(review: Flow) -> None:
    note = note_of(review)
    previous = review.drafts.note
    assert note["relatesTo"] == [
        {"code": "replaces", "target": {"reference": "DocumentReference/note-0502"}}
    ]
    assert note["identifier"] == previous["identifier"]
    assert note["masterIdentifier"]["value"] != previous["identifier"][0]["value"]
    assert (note["status"], note["docStatus"]) == ("current", "final")
    assert note["author"][0] == review.drafts.ctx.practitioners[0].as_json()
    assert note["meta"]["security"] == [CLINAST]
    assert note == note_of(review)  # the same review, the same version
    text = decoded(note)
    assert "reviewed by Dr. Mei Lee on 2024-05-03" in text
    assert "Rejected (Not agreed" in text
    assert "Added by the clinician" in text
    assert problems(note) == []
    old = superseded_note(stored({**previous, "id": "note-0502"}))
    assert old["status"] == "superseded" and problems(old) == []


def test_superseding_note_refuses_another_sessions_note(review: Flow) -> None:
    summary = approved_summary(
        "2024-05-02", review.approved.tasks, review.drafts.model, Approval("Dr. Mei Lee", "x")
    )
    other = {**review.drafts.note, "id": "n1", "identifier": [{"system": "x", "value": "y"}]}
    with pytest.raises(ResourceError, match="not this session's note"):
        superseding_note(other, review.drafts.ctx, summary, clinician=CLINICIAN, now=NOW)


def test_the_reviewed_note_lists_only_earlier_homework_that_was_set(review: Flow) -> None:
    """Earlier Tasks this session settled, as stored: one rejected since (its review status
    gone, it would read "awaiting review") or cancelled by an amended transcript (its
    replacement is listed) was never set, and the note leaves it out."""
    set_ = review.edited
    cancelled = {**set_, "id": "cancelled-1", "status": "cancelled"}
    summary = approved_summary(
        "2024-05-09", [], review.drafts.model, Approval("Dr. Mei Lee", "2024-05-09"),
        [set_, review.rejected, cancelled],
    )  # fmt: skip
    assert [line.description for line in summary.earlier] == [set_["description"]]
