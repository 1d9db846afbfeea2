"""Turn a tests/data/fhir/<case>/input.json into the builders' arguments."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from mapping.domain import (
    Detection,
    HomeworkLabel,
    MicroDialogue,
    Role,
    SourcePosition,
    Turn,
)
from mapping.fhir import EarlierTask, EncounterContext, ModelInfo, NoteOptions, Ref, ReviewStatus


def ref(data: dict[str, Any] | None) -> Ref | None:
    return Ref(data["reference"], data.get("display")) if data else None


def position(data: dict[str, Any]) -> SourcePosition:
    return SourcePosition(data["unit"], data["index"], data.get("start_s"), data.get("end_s"))


def turn(role: Role, data: dict[str, Any] | None) -> Turn | None:
    if data is None:
        return None
    first = position(data["first"])
    last = position(data.get("last", data["first"]))
    return Turn(role, data["speaker"], data["text"], first, last)


def detection(data: dict[str, Any]) -> Detection:
    therapist = turn(Role.THERAPIST, data["therapist"])
    assert therapist is not None
    return Detection(
        dialogue=MicroDialogue(data["index"], therapist, turn(Role.CLIENT, data.get("client"))),
        label=HomeworkLabel(data["label"]),
        review=data["review"],
        confidence=data["confidence"],
        review_confidence=data["review_confidence"],
    )


def context(data: dict[str, Any]) -> EncounterContext:
    patient, encounter = ref(data["patient"]), ref(data["encounter"])
    transcript = ref(data["transcript"])
    assert patient and encounter and transcript
    return EncounterContext(
        patient=patient,
        encounter=encounter,
        practitioners=tuple(Ref(p["reference"], p.get("display")) for p in data["practitioners"]),
        period_start=datetime.fromisoformat(data["period_start"]),
        period_end=datetime.fromisoformat(data["period_end"]),
        transcript=transcript,
        organization=ref(data.get("organization")),
    )


def load_case(data: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for build_session_resources (plus positional ctx/detections/model)."""
    detections = [detection(d) for d in data["detections"]]
    by_index = {d.dialogue.index: d for d in detections}
    earlier = [
        EarlierTask(
            task=e["task"],
            outcome=ReviewStatus(e["outcome"]),
            evidence=by_index[e["evidence_index"]] if e.get("evidence_index") is not None else None,
        )
        for e in data.get("earlier", [])
    ]
    return {
        "ctx": context(data["context"]),
        "detections": detections,
        "model": ModelInfo(**data["model"]),
        "earlier": earlier,
        "now": datetime.fromisoformat(data["now"]),
        "options": NoteOptions(**data.get("options", {})),
    }
