"""What the builders need besides the detections: the encounter, the model, earlier homework.

The adapter fills these from the EHR (Encounter, Patient, Practitioner, the transcript's
DocumentReference) and from its settings (organization, model card, note options). References
are kept as the EHR names them ("Encounter/123" or an absolute URL); identifiers are derived from
them, so the adapter must pass the same form every time (see `identifiers.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from mapping.domain import Detection
from mapping.errors import ResourceError


@dataclass(frozen=True)
class Ref:
    """A FHIR reference with an optional display, e.g. Ref("Patient/42", "Ana Díaz")."""

    reference: str
    display: str | None = None

    def __post_init__(self) -> None:
        if not self.reference.strip() or any(c.isspace() for c in self.reference):
            raise ResourceError(
                f"reference {self.reference!r} is empty or has spaces; pass 'Type/id' or a URL"
            )

    @property
    def resource_type(self) -> str:
        """The type named by the reference ("Patient" for ".../Patient/42/_history/3")."""
        parts = self.reference.split("/_history/")[0].rstrip("/").split("/")
        return parts[-2] if len(parts) >= 2 else ""

    def as_json(self) -> dict[str, str]:
        out = {"reference": self.reference}
        if self.display:
            out["display"] = self.display
        return out


def _expect(ref: Ref, *types: str, what: str) -> None:
    if ref.resource_type not in types:
        raise ResourceError(f"{what} must reference a {' or '.join(types)}, got {ref.reference!r}")


def _aware(value: datetime, what: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ResourceError(f"{what} {value.isoformat()} has no time zone; pass an aware datetime")


@dataclass(frozen=True)
class EncounterContext:
    """One finished session: who, when, and where its transcript came from.

    `practitioners[0]` is the treating practitioner: the note's author and the Tasks'
    requester; all of them receive the Communication. `organization` is the organization the
    AI acts for; US Core Provenance requires it (`onBehalfOf`) for a Device agent, so without
    it the Provenance claims only the AI Transparency profile. `transcript` is None for a
    session the pipeline read no transcript of (skipped): a clinician may still add homework
    to it, but nothing can be drafted from it (`source_transcript`).
    """

    patient: Ref
    encounter: Ref
    practitioners: tuple[Ref, ...]
    period_start: datetime
    period_end: datetime
    transcript: Ref | None
    organization: Ref | None = None
    # The FHIR base the encounter comes from. Identifiers derive from it and the reference, so
    # that two EHRs' "Encounter/1" never share a CarePlan, Task or note in one store; None
    # (a local backfill) derives them from the reference alone.
    source: str | None = None

    @property
    def encounter_key(self) -> str:
        """What identifiers derive from: the encounter reference, absolute when the source is
        known."""
        ref = self.encounter.reference
        return f"{self.source.rstrip('/')}/{ref}" if self.source else ref

    def source_transcript(self) -> Ref:
        """The transcript the model's drafts and their Provenance cite."""
        if self.transcript is None:
            raise ResourceError(
                f"{self.encounter.reference} has no transcript; drafts and their Provenance "
                "cite the transcript they came from, so pass its DocumentReference"
            )
        return self.transcript

    def __post_init__(self) -> None:
        _expect(self.patient, "Patient", what="patient")
        _expect(self.encounter, "Encounter", what="encounter")
        if self.transcript is not None:
            _expect(self.transcript, "DocumentReference", what="transcript")
        if not self.practitioners:
            raise ResourceError("no practitioner given; pass the Encounter's treating practitioner")
        for ref in self.practitioners:
            _expect(ref, "Practitioner", "PractitionerRole", what="practitioner")
        if self.organization is not None:
            _expect(self.organization, "Organization", what="organization")
        _aware(self.period_start, "period_start")
        _aware(self.period_end, "period_end")
        if self.period_end < self.period_start:
            raise ResourceError(
                f"encounter ends ({self.period_end.isoformat()}) before it starts "
                f"({self.period_start.isoformat()}); check the Encounter.period"
            )


AIKind = Literal[
    "Machine-Learning-Models",
    "Deep-Learning-Models",
    "Foundation-Models",
    "Large-Language-Models",
    "Hybrid-Models",
]


@dataclass(frozen=True)
class ModelInfo:
    """The model that made the detections, as the Device and model card will name it."""

    name: str
    version: str
    model_card_url: str
    manufacturer: str | None = None
    kind: AIKind = "Deep-Learning-Models"

    def __post_init__(self) -> None:
        if not self.name.strip() or not self.version.strip():
            raise ResourceError("model name and version must not be empty")
        if not self.model_card_url.startswith(("https://", "http://")):
            raise ResourceError(f"model card url {self.model_card_url!r} is not an http(s) URL")


class ReviewStatus(StrEnum):
    """Codes of our homework-review-status CodeSystem (Task.businessStatus)."""

    AWAITING = "awaiting-review"
    REVIEWED = "reviewed"
    NOT_REVIEWED = "not-reviewed"


@dataclass(frozen=True)
class EarlierTask:
    """A Task from an earlier session (JSON as read from the store) and what this session did.

    `evidence` is the detection (review=True) that followed it up; required when `outcome` is
    REVIEWED. AWAITING leaves the Task as it is and only lists it in the note.
    """

    task: Mapping[str, Any]
    outcome: ReviewStatus
    evidence: Detection | None = None

    def __post_init__(self) -> None:
        if self.outcome is ReviewStatus.REVIEWED and self.evidence is None:
            raise ResourceError("a reviewed earlier task needs the review detection as evidence")


DocStatus = Literal["preliminary", "final", "amended"]


@dataclass(frozen=True)
class NoteOptions:
    """How the chart note and inbox message are written; EHRs differ.

    Oracle Health accepts only `doc_status="final"`; Epic takes preliminary notes for signing.
    `type_code` is a LOINC document type (US Core requires one from its note type value set).
    """

    doc_status: DocStatus = "preliminary"
    type_code: str = "11506-3"
    type_display: str = "Progress note"
    title: str = "Between-session homework (AI draft)"
    communication_status: Literal["completed", "in-progress"] = "completed"
