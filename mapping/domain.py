"""Domain types shared by every mapping step: transcripts, micro-dialogues, detections.

These are plain frozen dataclasses, independent of FHIR and of the model, so that the readers,
the micro-dialogue builder, the FHIR builders and the pipeline agree on one vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal


class Role(StrEnum):
    """Who spoke, as the model and the resources need it."""

    THERAPIST = "therapist"
    CLIENT = "client"
    OTHER = "other"


class HomeworkLabel(StrEnum):
    """What the therapist turn of a micro-dialogue does (see shared LABELING.md)."""

    PRACTICE = "practice"
    TAKE_ACTION = "take_action"
    JOURNAL = "journal"
    LEARN = "learn"
    NONE = "none"


PositionUnit = Literal["line", "cue", "segment"]


@dataclass(frozen=True)
class SourcePosition:
    """Where a piece of text sits in its source document.

    `index` is 1-based: the line number of a plain-text transcript, the cue number of a WebVTT
    file, the segment number of a diarized JSON transcript. `start_s`/`end_s` are the media
    offsets in seconds when the source carries them.
    """

    unit: PositionUnit
    index: int
    start_s: float | None = None
    end_s: float | None = None


@dataclass(frozen=True)
class Utterance:
    """One fragment as the source wrote it (a line, a cue's voice span, a segment)."""

    speaker: str
    role: Role
    text: str
    position: SourcePosition


RoleMethod = Literal["explicit", "participant-name", "patient-name", "speaker-label", "fallback"]


@dataclass(frozen=True)
class RoleDecision:
    """How one speaker label was resolved to a role, so a reviewer can check it."""

    speaker: str
    role: Role
    method: RoleMethod
    detail: str = ""


@dataclass(frozen=True)
class RoleHints:
    """What the caller knows about the speakers.

    `explicit` maps a speaker label (case-insensitive) to a role and wins over everything else;
    `therapist_names` come from the Encounter's participants, `client_names` from its Patient.
    """

    explicit: dict[str, Role] = field(default_factory=dict)
    therapist_names: tuple[str, ...] = ()
    client_names: tuple[str, ...] = ()


TranscriptFormat = Literal["text", "vtt", "json", "fhir"]


@dataclass(frozen=True)
class Transcript:
    utterances: tuple[Utterance, ...]
    roles: tuple[RoleDecision, ...]
    source_format: TranscriptFormat


@dataclass(frozen=True)
class Turn:
    """Consecutive utterances of one speaker merged into one turn."""

    role: Role
    speaker: str
    text: str
    first: SourcePosition
    last: SourcePosition


@dataclass(frozen=True)
class MicroDialogue:
    """The unit the model classifies: a therapist turn and the client's reply.

    `index` is 0-based in transcript order; `context` holds earlier turns when a window asks
    for them; `client` is None when the therapist turn has no client reply after it.
    """

    index: int
    therapist: Turn
    client: Turn | None
    context: tuple[Turn, ...] = ()


@dataclass(frozen=True)
class Detection:
    """What the model said about one micro-dialogue."""

    dialogue: MicroDialogue
    label: HomeworkLabel
    review: bool
    confidence: float
    review_confidence: float
    probabilities: dict[HomeworkLabel, float] = field(default_factory=dict)
    # The sentences of a long therapist turn that the decision came from (None: the whole
    # turn, which fitted the model's input).
    evidence: str | None = None
