"""Who decided what, when, and from which launch: the clinician's Provenance and AuditEvent.

    clinician_provenance(targets, clinician, decision, now=..., launch=...) -> Provenance
    audit_event(decision, clinician=..., patient=..., entities=..., now=..., launch=...,
                observer=..., outcome=...)                                  -> AuditEvent

The Provenance is for the resources a decision wrote (US Core Provenance when the launch names
the organization the clinician acts for: US Core requires `onBehalfOf` for a Practitioner
agent, provenance-1). The clinician is its author, and also its verifier when the decision
reviews the model's output (approve, reject). Activity is v3-DataOperation CREATE for an added
item, UPDATE otherwise: the decision itself is named by the agents and the AuditEvent.

The AuditEvent follows IHE BALP's create/update pattern without claiming the profile (it has
no network agents): type audit-event-type#rest, subtype the RESTful interaction and our
clinician-decision code, action C or U, the clinician as the requesting agent (type
v3-ParticipationType#AUT, purpose of use TREAT), our service as the source observer, and as
entities the patient, each resource and the launch (SMART launch id and app session).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.provenance import Provenance

from mapping import terminology
from mapping.errors import ResourceError
from mapping.fhir.codes import (
    AUDIT_ENTITY_TYPE,
    AUDIT_EVENT_TYPE,
    AUDIT_OBJECT_ROLE,
    AUDIT_SOURCE_TYPE,
    CS_CLINICIAN_DECISION,
    PROFILE_PROVENANCE,
    PROVENANCE_PARTICIPANT_TYPE,
    RESTFUL_INTERACTION,
    SID_SMART_LAUNCH,
    V3_DATA_OPERATION,
    V3_PARTICIPATION_TYPE,
    coding,
)
from mapping.fhir.context import Ref
from mapping.fhir.identifiers import audit_event_value, clinician_provenance_value
from mapping.fhir.references import is_fhir_id, parse_reference
from mapping.fhir.text import instant
from mapping.fhir.validate import parse

__all__ = ["DecisionKind", "LaunchContext", "Outcome", "audit_event", "clinician_provenance"]

DecisionKind = Literal["approve", "edit", "reject", "add"]
# AuditEvent.outcome (R4 audit-event-outcome): success, minor, serious, major failure.
Outcome = Literal["0", "4", "8", "12"]

_V3_ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
_DECISIONS = ("approve", "edit", "reject", "add")


@dataclass(frozen=True)
class LaunchContext:
    """Where a decision came from: the app session, the SMART launch that opened it, and what
    the launch put in context.

    `session` is an audit key for our server-side session, never the cookie value (that is a
    credential). `launch` is the SMART `launch` parameter of an EHR launch (None for a
    standalone launch). `organization` is the organization the clinician acts for, which US Core
    Provenance requires.
    """

    session: str
    launch: str | None = None
    encounter: Ref | None = None
    organization: Ref | None = None

    def __post_init__(self) -> None:
        if not self.session.strip():
            raise ResourceError("the launch context needs the app session's audit key")
        if self.launch is not None and not self.launch.strip():
            raise ResourceError("an empty SMART launch id: pass None for a standalone launch")
        if self.encounter is not None and self.encounter.resource_type != "Encounter":
            raise ResourceError(f"launch encounter must be an Encounter: {self.encounter}")
        if self.organization is not None and self.organization.resource_type != "Organization":
            raise ResourceError(f"launch organization must be an Organization: {self.organization}")


def _check(decision: str, clinician: Ref, now: datetime) -> None:
    if decision not in _DECISIONS:
        raise ResourceError(f"unknown decision {decision!r}; one of {', '.join(_DECISIONS)}")
    if clinician.resource_type not in ("Practitioner", "PractitionerRole"):
        raise ResourceError(f"the clinician must be a Practitioner: {clinician.reference!r}")
    if now.tzinfo is None or now.utcoffset() is None:
        raise ResourceError(f"now {now.isoformat()} has no time zone; pass an aware datetime")


def _check_reference(value: str) -> str:
    ref = parse_reference(value)
    if ref is None or not is_fhir_id(ref.id) or value != value.strip():
        raise ResourceError(f"{value!r} is not a reference 'Type/id' or 'Type/id/_history/n'")
    return value


def clinician_provenance(
    targets: Sequence[str],
    clinician: Ref,
    decision: DecisionKind,
    *,
    now: datetime,
    launch: LaunchContext,
) -> Provenance:
    """Provenance for the resources one decision wrote: `targets` as "Type/id", or with the
    version written ("Task/1/_history/2") where the store has answered with it.

    Its id derives from the decision, clinician and targets, so a retried write is the same
    Provenance; pass the versions written, so that the next decision on the same resource is
    another one (not an overwrite of this one). `recorded` is `now`.
    """
    _check(decision, clinician, now)
    if not targets:
        raise ResourceError("a Provenance needs at least one target")
    refs = [_check_reference(t) for t in targets]
    roles = ["author", "verifier"] if decision in ("approve", "reject") else ["author"]
    agents: list[dict[str, Any]] = []
    for role in roles:
        agent: dict[str, Any] = {
            "type": {
                "coding": [coding(PROVENANCE_PARTICIPANT_TYPE, role, role.capitalize())],
            },
            "who": clinician.as_json(),
        }
        if launch.organization is not None:
            agent["onBehalfOf"] = launch.organization.as_json()
        agents.append(agent)
    activity = "CREATE" if decision == "add" else "UPDATE"
    data: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": clinician_provenance_value(decision, clinician.reference, refs),
        "target": [{"reference": r} for r in refs],
        "recorded": instant(now),
        "activity": {"coding": [coding(V3_DATA_OPERATION, activity, activity.lower())]},
        "agent": agents,
    }
    if launch.organization is not None:
        data["meta"] = {"profile": [PROFILE_PROVENANCE]}
    return parse(data, Provenance)


def audit_event(
    decision: DecisionKind,
    *,
    clinician: Ref,
    patient: Ref,
    entities: Sequence[str],
    now: datetime,
    launch: LaunchContext,
    observer: Ref,
    outcome: Outcome = "0",
    outcome_desc: str | None = None,
) -> AuditEvent:
    """The AuditEvent of one decision: who (the clinician, requestor), what (the patient and
    `entities`, the resources it wrote or tried to), when (`now`), from which launch.

    `observer` is what records the event: our service's Device or Organization. A refused
    decision is recorded too, with `outcome` "4" (minor failure) and the message in
    `outcome_desc`. The id derives from the decision, outcome, clinician, time, session and
    entities, so a retried write of the same event is one AuditEvent.
    """
    _check(decision, clinician, now)
    if patient.resource_type != "Patient":
        raise ResourceError(f"patient must be a Patient: {patient.reference!r}")
    if observer.resource_type not in ("Device", "Organization"):
        raise ResourceError(f"the observer must be our Device or Organization: {observer}")
    if not entities:
        raise ResourceError("an AuditEvent of a decision names the resources it touched")
    refs = [_check_reference(e) for e in entities]
    recorded = instant(now)
    interaction = "create" if decision == "add" else "update"
    entity: list[dict[str, Any]] = [
        {
            "what": patient.as_json(),
            "type": coding(AUDIT_ENTITY_TYPE, "1", "Person"),
            "role": coding(AUDIT_OBJECT_ROLE, "1", "Patient"),
        },
        *(
            {
                "what": {"reference": r},
                "type": coding(AUDIT_ENTITY_TYPE, "2", "System Object"),
                "role": coding(AUDIT_OBJECT_ROLE, "4", "Domain Resource"),
            }
            for r in refs
        ),
    ]
    if launch.encounter is not None:
        entity.append(
            {
                "what": launch.encounter.as_json(),
                "type": coding(AUDIT_ENTITY_TYPE, "2", "System Object"),
                "role": coding(AUDIT_OBJECT_ROLE, "4", "Domain Resource"),
                "description": "Encounter in the launch context",
            }
        )
    details = [{"type": "session", "valueString": launch.session}]
    session_entity: dict[str, Any] = {
        "type": coding(AUDIT_ENTITY_TYPE, "2", "System Object"),
        "role": coding(AUDIT_OBJECT_ROLE, "13", "Security Resource"),
        "description": "SMART App Launch and app session",
        "detail": details,
    }
    if launch.launch is not None:
        launch_id = {"system": SID_SMART_LAUNCH, "value": launch.launch}
        session_entity["what"] = {"identifier": launch_id}
        details.insert(0, {"type": "launch", "valueString": launch.launch})
    entity.append(session_entity)
    data: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": audit_event_value(
            decision, outcome, clinician.reference, recorded, launch.session, refs
        ),
        "type": coding(AUDIT_EVENT_TYPE, "rest", "Restful Operation"),
        "subtype": [
            coding(RESTFUL_INTERACTION, interaction, interaction),
            coding(
                CS_CLINICIAN_DECISION,
                decision,
                terminology.display(CS_CLINICIAN_DECISION, decision),
            ),
        ],
        "action": "C" if decision == "add" else "U",
        "recorded": recorded,
        "outcome": outcome,
        "agent": [
            {
                "type": {"coding": [coding(V3_PARTICIPATION_TYPE, "AUT", "author (originator)")]},
                "who": clinician.as_json(),
                "requestor": True,
                "purposeOfUse": [{"coding": [coding(_V3_ACT_REASON, "TREAT", "treatment")]}],
            }
        ],
        "source": {
            "observer": observer.as_json(),
            "type": [coding(AUDIT_SOURCE_TYPE, "4", "Application Server")],
        },
        "entity": entity,
    }
    if outcome_desc is not None:
        data["outcomeDesc"] = outcome_desc
    return parse(data, AuditEvent)
