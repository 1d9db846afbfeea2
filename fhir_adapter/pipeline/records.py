"""Detections <-> JSON, as the detect step stores them for the draft step."""

from __future__ import annotations

from typing import Any

from mapping.domain import Detection, HomeworkLabel, MicroDialogue, Role, SourcePosition, Turn


def _position(p: SourcePosition) -> dict[str, Any]:
    return {"unit": p.unit, "index": p.index, "start_s": p.start_s, "end_s": p.end_s}


def _turn(t: Turn) -> dict[str, Any]:
    return {
        "role": t.role.value,
        "speaker": t.speaker,
        "text": t.text,
        "first": _position(t.first),
        "last": _position(t.last),
    }


def detection_to_json(d: Detection) -> dict[str, Any]:
    return {
        "index": d.dialogue.index,
        "therapist": _turn(d.dialogue.therapist),
        "client": _turn(d.dialogue.client) if d.dialogue.client else None,
        "context": [_turn(t) for t in d.dialogue.context],
        "label": d.label.value,
        "review": d.review,
        "confidence": d.confidence,
        "review_confidence": d.review_confidence,
        "probabilities": {k.value: v for k, v in d.probabilities.items()},
        "evidence": d.evidence,
    }


def _position_from(p: dict[str, Any]) -> SourcePosition:
    return SourcePosition(p["unit"], int(p["index"]), p.get("start_s"), p.get("end_s"))


def _turn_from(t: dict[str, Any]) -> Turn:
    return Turn(
        Role(t["role"]),
        t["speaker"],
        t["text"],
        _position_from(t["first"]),
        _position_from(t["last"]),
    )


def detection_from_json(data: dict[str, Any]) -> Detection:
    dialogue = MicroDialogue(
        int(data["index"]),
        _turn_from(data["therapist"]),
        _turn_from(data["client"]) if data.get("client") else None,
        tuple(_turn_from(t) for t in data.get("context", [])),
    )
    return Detection(
        dialogue=dialogue,
        label=HomeworkLabel(data["label"]),
        review=bool(data["review"]),
        confidence=float(data["confidence"]),
        review_confidence=float(data["review_confidence"]),
        probabilities={HomeworkLabel(k): float(v) for k, v in data["probabilities"].items()},
        evidence=data.get("evidence"),
    )
