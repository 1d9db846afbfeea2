"""`homework-fhir detect PATH`: find homework and homework review in a transcript.

The whole chain on one file: read the transcript (`mapping.transcripts`), build the
micro-dialogues (`mapping.dialogues`), render each as text (`inference_server.text`), classify
in process or through Triton (`--triton`). Prints one JSON line per detection, i.e. per
micro-dialogue whose label is not `none` or whose review flag is set: its index, label, review,
confidence (probability of the label), review confidence, the therapist turn quoted, and the
turn's position in the source (line, cue or segment; media times when the source has them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fhir_adapter.commands._common import fail, read_transcript_file
from fhir_adapter.commands._predict import (
    TRITON_HELP,
    PointOption,
    operating_point,
    predict_dialogues,
)
from fhir_adapter.commands.transcript import ClientOption, FormatOption, TherapistOption

if TYPE_CHECKING:
    from mapping.domain import Detection, Turn


def register(app: typer.Typer) -> None:
    app.command("detect")(detect)


def detect(
    path: Annotated[
        Path,
        typer.Argument(
            help="Transcript file (text, WebVTT, diarized JSON, FHIR JSON); '-' reads stdin.",
            show_default=False,
        ),
    ],
    fmt: Annotated[
        FormatOption,
        typer.Option("--format", help="Input format; auto detects it from content and name."),
    ] = FormatOption.AUTO,
    triton: Annotated[str | None, typer.Option("--triton", help=TRITON_HELP)] = None,
    weights: Annotated[
        Path | None,
        typer.Option(
            "--weights", help="Weights folder for the in-process model (default: shipped)."
        ),
    ] = None,
    therapist: TherapistOption = None,
    client: ClientOption = None,
    show_all: Annotated[
        bool, typer.Option("--all", help="Print every micro-dialogue, `none` ones too.")
    ] = False,
    point_name: Annotated[
        PointOption,
        typer.Option("--operating-point", help="The model card's decision thresholds to use."),
    ] = PointOption.BALANCED,
) -> None:
    """Detect homework and homework review in a transcript; one JSON line per detection."""
    from fhir_adapter.pipeline.detect import detections_from
    from mapping.dialogues import build_micro_dialogues, dialogue_turns

    transcript = read_transcript_file(path, fmt.value, therapist or [], client or [])
    dialogues = build_micro_dialogues(transcript)
    if not dialogues:
        fail("no therapist turns found; name the therapist's speaker label with --therapist")
    point = operating_point(weights, point_name.value)
    preds = predict_dialogues([dialogue_turns(d) for d in dialogues], triton, weights)
    found_all = detections_from(dialogues, preds, point, show_all)
    for found in found_all:
        typer.echo(json.dumps(detection_line(found), ensure_ascii=False))


def _position(turn: Turn) -> dict[str, Any]:
    end = turn.last.end_s if turn.last.end_s is not None else turn.last.start_s
    return {
        "unit": turn.first.unit,
        "index": turn.first.index,
        "last_index": turn.last.index,
        "start_s": turn.first.start_s,
        "end_s": end,
    }


def detection_line(found: Detection) -> dict[str, Any]:
    """The JSON object printed for one detection."""
    therapist = found.dialogue.therapist
    return {
        "index": found.dialogue.index,
        "label": found.label.value,
        "review": found.review,
        "confidence": round(found.confidence, 4),
        "review_confidence": round(found.review_confidence, 4),
        "speaker": therapist.speaker,
        "therapist": therapist.text,
        "evidence": found.evidence,
        "position": _position(therapist),
    }
