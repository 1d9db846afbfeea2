"""What the pipeline wrote, on both sides: the EHR (sekmet) and our store.

Every resource the pipeline writes carries one of our business identifiers (SID_*), or, for a
Provenance (no identifier element in R4), a logical id derived from one. These helpers count
them per identifier on both sides, so a duplicate anywhere shows up as a count of 2.
"""

from __future__ import annotations

import base64
from collections import Counter
from dataclasses import dataclass
from typing import Any

from fhir_adapter.store import Store
from mapping.fhir.codes import (
    P_REVIEW_ENCOUNTER,
    SID_CAREPLAN,
    SID_COMMUNICATION,
    SID_DEVICE,
    SID_MODEL_CARD,
    SID_NOTE,
    SID_OBSERVATION,
    SID_TASK,
)
from tests.fhir_adapter.pipeline.seed import Clinic, ehr_resources
from tests.fhir_adapter.pipeline.support import identifier_of, review_status, stored
from tests.fhir_adapter.sekmet_server import SekmetServer

# (resource type, identifier system) of everything with a business identifier.
KINDS: tuple[tuple[str, str], ...] = (
    ("CarePlan", SID_CAREPLAN),
    ("Task", SID_TASK),
    ("Device", SID_DEVICE),
    ("DocumentReference", SID_MODEL_CARD),
    ("DocumentReference", SID_NOTE),
    ("Communication", SID_COMMUNICATION),
    ("Observation", SID_OBSERVATION),
)
CARE_PLAN_KINDS = {SID_CAREPLAN, SID_TASK, SID_DEVICE, SID_MODEL_CARD}
CHART_KINDS = {SID_NOTE, SID_COMMUNICATION}


@dataclass
class Side:
    """Identifier value -> count, per identifier system; Provenance ids separately."""

    by_system: dict[str, Counter[str]]
    provenance: Counter[str]

    def count(self, system: str) -> int:
        return sum(self.by_system.get(system, Counter()).values())

    def duplicates(self) -> dict[str, list[str]]:
        dups = {s: [v for v, n in c.items() if n > 1] for s, c in self.by_system.items()}
        dups["Provenance"] = [v for v, n in self.provenance.items() if n > 1]
        return {s: v for s, v in dups.items() if v}


def store_side(store: Store) -> Side:
    """Our store (a fresh database per test: everything in it is this test's)."""
    by_system: dict[str, Counter[str]] = {}
    for rtype, system in KINDS:
        counter = by_system.setdefault(system, Counter())
        for body in stored(store, rtype):
            value = identifier_of(body, system)
            if value is not None:
                counter[value] += 1
    provenance = Counter(str(p["id"]) for p in stored(store, "Provenance"))
    return Side(by_system, provenance)


def ehr_side(server: SekmetServer, clinic: Clinic, store: Store) -> Side:
    """The EHR, limited to the clinic: its patients' resources, and the shared ones (Device,
    model card, Provenance) looked up by what our store says was written."""
    by_system: dict[str, Counter[str]] = {s: Counter() for _, s in KINDS}
    patient_types = {
        "CarePlan": "subject", "Task": "patient", "DocumentReference": "subject",
        "Communication": "subject", "Observation": "subject",
    }  # fmt: skip
    for seeded in clinic.patients.values():
        for rtype, param in patient_types.items():
            for body in ehr_resources(server, rtype, {param: seeded.patient}):
                for _, system in KINDS:
                    value = identifier_of(body, system)
                    if value is not None and _kind_matches(rtype, system):
                        by_system[system][value] += 1
    ours = store_side(store)
    for rtype, system in (("Device", SID_DEVICE), ("DocumentReference", SID_MODEL_CARD)):
        for value in ours.by_system[system]:
            found = ehr_resources(server, rtype, {"identifier": f"{system}|{value}"})
            if found:
                by_system[system][value] += len(found)
    provenance: Counter[str] = Counter()
    for pid in ours.provenance:
        response = server.admin_request("GET", f"Provenance/{pid}")
        if response.status_code == 200:
            provenance[pid] += 1
        else:
            assert response.status_code in (404, 410), response.text
    return Side(by_system, provenance)


def _kind_matches(rtype: str, system: str) -> bool:
    return any(t == rtype and s == system for t, s in KINDS)


def ehr_tasks(server: SekmetServer, clinic: Clinic) -> dict[str, dict[str, Any]]:
    """The clinic's Tasks in the EHR by id."""
    out: dict[str, dict[str, Any]] = {}
    for seeded in clinic.patients.values():
        for task in ehr_resources(server, "Task", {"patient": seeded.patient}):
            out[str(task["id"])] = task
    return out


def statuses(tasks: dict[str, dict[str, Any]] | list[dict[str, Any]]) -> dict[str, str | None]:
    items = tasks.values() if isinstance(tasks, dict) else tasks
    return {str(t["id"]): review_status(t) for t in items}


def note_text(note: dict[str, Any]) -> str:
    """The text/plain attachment of a note, decoded."""
    for content in note.get("content") or []:
        attachment = content.get("attachment") or {}
        if str(attachment.get("contentType", "")).startswith("text/plain"):
            return base64.b64decode(attachment["data"]).decode("utf-8")
    raise AssertionError(f"note {note.get('id')} has no text/plain attachment")


def notes_of(resources: list[dict[str, Any]], encounter: str) -> list[dict[str, Any]]:
    """Our notes (by identifier) about `encounter` among `resources`."""
    out = []
    for r in resources:
        named = [e.get("reference") for e in (r.get("context") or {}).get("encounter") or []]
        if identifier_of(r, SID_NOTE) is not None and encounter in named:
            out.append(r)
    return out


def review_encounter(task: dict[str, Any]) -> str | None:
    """The encounter a Task's review outcome cites (Task.output review-encounter)."""
    for output in task.get("output") or []:
        codes = {c.get("code") for c in (output.get("type") or {}).get("coding") or []}
        if P_REVIEW_ENCOUNTER in codes:
            return str(output["valueReference"]["reference"])
    return None


def note_provenance(server: SekmetServer, note: dict[str, Any]) -> list[dict[str, Any]]:
    """The Provenance resources in the EHR whose target is this note."""
    return ehr_resources(server, "Provenance", {"target": f"DocumentReference/{note['id']}"})


def note_provenance_counts(server: SekmetServer, clinic: Clinic) -> dict[str, int]:
    """Note identifier -> how many Provenance resources in the EHR target that note."""
    counts: dict[str, int] = {}
    for seeded in clinic.patients.values():
        for doc in ehr_resources(server, "DocumentReference", {"subject": seeded.patient}):
            value = identifier_of(doc, SID_NOTE)
            if value is not None:
                counts[value] = len(note_provenance(server, doc))
    return counts
