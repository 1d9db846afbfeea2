"""Stable business identifiers and logical ids, so that processing a session twice is idempotent.

Derivation: value = first 32 hex digits (128 bits) of SHA-256 over the UTF-8 of the parts joined
with U+001F (unit separator, which no reference or code contains):

    CarePlan        ("careplan", encounter)
    Task            ("task", encounter, "<unit>:<index>", category code)
                    where unit/index are the SourcePosition of the therapist turn that set it
                    (e.g. "line:12", "cue:4"), and the code is "take-action", not "take_action"
    note            ("note", encounter)
    Communication   ("communication", encounter)
    Provenance      ("provenance", encounter, model name, model version)
    Device          ("device", model name, model version)
    model card      ("model-card", model name, model version)
    Observation     ("observation", source reference, total LOINC code)
    Task added by a clinician
                    ("task-added", encounter, category code, description)
                    with the description's space collapsed and case folded, so that a double
                    submit of the same item gives the same Task
    note version    ("note-version", encounter, digest of the note's text), the masterIdentifier
                    of each version of the note (the identifier stays the note's, per encounter);
                    a version whose text an earlier version had (an amendment undone):
                    ("note-version", that value, number of versions before it)
    clinician Provenance
                    ("provenance-clinician", decision, clinician, targets sorted), the targets
                    with the versions written ("Task/1/_history/3"), so that each decision on
                    a resource has its own Provenance and a retried write the same one
    AuditEvent      ("audit-event", decision, outcome, clinician, instant, session, entities
                    sorted)

`encounter` is `EncounterContext.encounter_key`: the reference made absolute with the EHR's FHIR
base (so that several EHRs can feed one store), or the bare reference for a local backfill, with
any "/_history/n" dropped.

The same value is the resource's logical id in our FHIR store (CarePlan, Task, Device, model
card, Observation, and Provenance, which has no identifier element in R4), so the store is
written with PUT Type/id (update-as-create) and resources reference each other as "Type/id"
before the store has seen them. Chart resources
(note, Communication) go to the EHR, which assigns ids; they carry only the identifier.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from mapping.domain import SourcePosition

_SEP = "\x1f"
_DIGITS = 32


def normalize_reference(reference: str) -> str:
    """The reference without surrounding space or a version ("/_history/n")."""
    return reference.strip().split("/_history/")[0]


def stable_value(*parts: str) -> str:
    """32 hex digits of SHA-256 over the parts; equal parts give equal values, always."""
    digest = hashlib.sha256(_SEP.join(parts).encode("utf-8")).hexdigest()
    return digest[:_DIGITS]


def position_key(position: SourcePosition) -> str:
    """ "line:12", "cue:4", "segment:7": the part of a position that identifies a turn."""
    return f"{position.unit}:{position.index}"


def careplan_value(encounter: str) -> str:
    return stable_value("careplan", normalize_reference(encounter))


def task_value(encounter: str, position: SourcePosition, category_code: str) -> str:
    return stable_value(
        "task", normalize_reference(encounter), position_key(position), category_code
    )


def note_value(encounter: str) -> str:
    return stable_value("note", normalize_reference(encounter))


def communication_value(encounter: str) -> str:
    return stable_value("communication", normalize_reference(encounter))


def provenance_value(encounter: str, model_name: str, model_version: str) -> str:
    return stable_value("provenance", normalize_reference(encounter), model_name, model_version)


def device_value(model_name: str, model_version: str) -> str:
    return stable_value("device", model_name, model_version)


def model_card_value(model_name: str, model_version: str) -> str:
    return stable_value("model-card", model_name, model_version)


def observation_value(source: str, total_code: str) -> str:
    return stable_value("observation", normalize_reference(source), total_code)


def _folded(text: str) -> str:
    return " ".join(text.split()).casefold()


def added_task_value(encounter: str, category_code: str, description: str) -> str:
    return stable_value(
        "task-added", normalize_reference(encounter), category_code, _folded(description)
    )


def note_version_value(encounter: str, text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return stable_value("note-version", normalize_reference(encounter), digest)


def repeated_note_version_value(value: str, versions: int) -> str:
    """The key of a note version whose text an earlier version had (`note_version_value`
    `value`): distinct, as each version is a note of its own in the chart."""
    return stable_value("note-version", value, str(versions))


def clinician_provenance_value(decision: str, clinician: str, targets: Sequence[str]) -> str:
    return stable_value("provenance-clinician", decision, clinician.strip(), *sorted(targets))


def audit_event_value(
    decision: str,
    outcome: str,
    clinician: str,
    recorded: str,
    session: str,
    entities: Sequence[str],
) -> str:
    return stable_value(
        "audit-event", decision, outcome, clinician.strip(), recorded, session, *sorted(entities)
    )


def identifier(system: str, value: str) -> dict[str, str]:
    """An Identifier as JSON; `use` official, as these are the resources' business keys."""
    return {"use": "official", "system": system, "value": value}
