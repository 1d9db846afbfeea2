"""The clinician's Provenance and the AuditEvent of each decision."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from mapping.errors import ResourceError
from mapping.fhir import Ref, problems
from mapping.fhir.audit import LaunchContext, audit_event, clinician_provenance
from mapping.fhir.codes import (
    CS_CLINICIAN_DECISION,
    PROFILE_PROVENANCE,
    PROVENANCE_PARTICIPANT_TYPE,
    SID_SMART_LAUNCH,
    V3_DATA_OPERATION,
)
from mapping.fhir.validate import as_json

CLINICIAN = Ref("Practitioner/pr-lee", "Dr. Mei Lee")
PATIENT = Ref("Patient/pat-ana")
ORG = Ref("Organization/org-riverside")
OBSERVER = Ref("Device/homework-fhir-app")
NOW = datetime(2024, 5, 3, 9, 30, tzinfo=UTC)
LAUNCH = LaunchContext(
    session="sess-7f3a", launch="launch-1", encounter=Ref("Encounter/enc-0502"), organization=ORG
)
TARGETS = ["CarePlan/cp1/_history/2", "Task/t1/_history/3"]


def agent_types(provenance: dict[str, Any]) -> list[str]:
    return [
        c["code"]
        for a in provenance["agent"]
        for c in a["type"]["coding"]
        if c["system"] == PROVENANCE_PARTICIPANT_TYPE
    ]


@pytest.mark.parametrize(
    ("decision", "types", "activity"),
    [
        ("approve", ["author", "verifier"], "UPDATE"),
        ("reject", ["author", "verifier"], "UPDATE"),
        ("edit", ["author"], "UPDATE"),
        ("add", ["author"], "CREATE"),
    ],
)
def test_clinician_provenance(decision: Any, types: list[str], activity: str) -> None:
    p = as_json(clinician_provenance(TARGETS, CLINICIAN, decision, now=NOW, launch=LAUNCH))
    assert p["meta"]["profile"] == [PROFILE_PROVENANCE]
    assert [t["reference"] for t in p["target"]] == TARGETS  # versions kept
    assert agent_types(p) == types
    assert all(a["who"] == CLINICIAN.as_json() for a in p["agent"])
    assert all(a["onBehalfOf"] == ORG.as_json() for a in p["agent"])
    assert p["activity"]["coding"][0] == {
        "system": V3_DATA_OPERATION,
        "code": activity,
        "display": activity.lower(),
    }
    assert p["recorded"] == "2024-05-03T09:30:00Z"
    assert "reason" not in p  # not AI-asserted
    assert problems(p) == []


def test_provenance_id_is_stable_and_without_organization_claims_no_us_core() -> None:
    one = clinician_provenance(TARGETS, CLINICIAN, "approve", now=NOW, launch=LAUNCH)
    two = clinician_provenance(TARGETS[::-1], CLINICIAN, "approve", now=NOW, launch=LAUNCH)
    assert one.id == two.id
    # Versioned targets: the next decision on the same Task is another Provenance.
    later = ["CarePlan/cp1/_history/2", "Task/t1/_history/4"]
    assert clinician_provenance(later, CLINICIAN, "approve", now=NOW, launch=LAUNCH).id != one.id
    bare = as_json(
        clinician_provenance(TARGETS, CLINICIAN, "approve", now=NOW, launch=LaunchContext("s"))
    )
    assert "meta" not in bare and "onBehalfOf" not in bare["agent"][0]
    assert problems(bare) == []


def test_provenance_refusals() -> None:
    with pytest.raises(ResourceError, match="at least one target"):
        clinician_provenance([], CLINICIAN, "approve", now=NOW, launch=LAUNCH)
    with pytest.raises(ResourceError, match="not a reference"):
        clinician_provenance(["not a ref"], CLINICIAN, "approve", now=NOW, launch=LAUNCH)
    with pytest.raises(ResourceError, match="Practitioner"):
        clinician_provenance(TARGETS, Ref("Device/x"), "approve", now=NOW, launch=LAUNCH)
    with pytest.raises(ResourceError, match="unknown decision"):
        clinician_provenance(TARGETS, CLINICIAN, "sign", now=NOW, launch=LAUNCH)  # type: ignore[arg-type]


def event(**kwargs: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "clinician": CLINICIAN,
        "patient": PATIENT,
        "entities": TARGETS,
        "now": NOW,
        "launch": LAUNCH,
        "observer": OBSERVER,
    }
    decision = kwargs.pop("decision", "approve")
    return as_json(audit_event(decision, **{**args, **kwargs}))


def test_audit_event_says_who_what_when_and_from_which_launch() -> None:
    e = event()
    assert e["type"]["code"] == "rest"
    assert [(s["code"]) for s in e["subtype"]] == ["update", "approve"]
    assert e["subtype"][1]["system"] == CS_CLINICIAN_DECISION
    assert (e["action"], e["outcome"], e["recorded"]) == ("U", "0", "2024-05-03T09:30:00Z")
    [agent] = e["agent"]
    assert agent["who"] == CLINICIAN.as_json() and agent["requestor"] is True
    assert agent["type"]["coding"][0]["code"] == "AUT"
    assert e["source"]["observer"] == OBSERVER.as_json()
    whats = [x.get("what", {}).get("reference") for x in e["entity"]]
    assert whats[:3] == ["Patient/pat-ana", *TARGETS]
    assert "Encounter/enc-0502" in whats
    [launch] = [x for x in e["entity"] if x["role"]["code"] == "13"]
    assert launch["what"]["identifier"] == {"system": SID_SMART_LAUNCH, "value": "launch-1"}
    assert launch["detail"] == [
        {"type": "launch", "valueString": "launch-1"},
        {"type": "session", "valueString": "sess-7f3a"},
    ]
    assert problems(e) == []


def test_audit_event_for_an_added_item_and_a_refused_decision() -> None:
    added = event(decision="add")
    assert (added["action"], added["subtype"][0]["code"]) == ("C", "create")
    refused = event(decision="approve", outcome="4", outcome_desc="Task/t1 is rejected")
    assert (refused["outcome"], refused["outcomeDesc"]) == ("4", "Task/t1 is rejected")
    assert refused["id"] != event()["id"]
    standalone = event(launch=LaunchContext("sess-9"))
    [entity] = [x for x in standalone["entity"] if x["role"]["code"] == "13"]
    assert "what" not in entity and entity["detail"] == [
        {"type": "session", "valueString": "sess-9"}
    ]
    assert problems(added) == [] and problems(refused) == [] and problems(standalone) == []


def test_audit_event_id_is_stable_per_event() -> None:
    assert event()["id"] == event(entities=TARGETS[::-1])["id"]
    assert event()["id"] != event(now=NOW.replace(second=1))["id"]
    assert event()["id"] != event(launch=LaunchContext("other"))["id"]


def test_audit_event_refusals() -> None:
    with pytest.raises(ResourceError, match="Patient"):
        event(patient=Ref("Group/g1"))
    with pytest.raises(ResourceError, match="observer"):
        event(observer=Ref("Practitioner/pr-lee"))
    with pytest.raises(ResourceError, match="names the resources"):
        event(entities=[])
    with pytest.raises(ResourceError, match="audit key"):
        LaunchContext(" ")
    with pytest.raises(ResourceError, match="Organization"):
        LaunchContext("s", organization=Ref("Practitioner/x"))
