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
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fhir_adapter.commands._common import bad_input_exits, fail
from fhir_adapter.commands._predict import TRITON_HELP, predict_texts
from fhir_adapter.commands.transcript import FormatOption

if TYPE_CHECKING:
    from inference_server.classifier import Predictions
    from mapping.domain import Detection, MicroDialogue, Turn


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
    therapist: Annotated[
        list[str] | None,
        typer.Option("--therapist", help="Speaker label of a therapist (repeatable)."),
    ] = None,
    client: Annotated[
        list[str] | None, typer.Option("--client", help="Speaker label of a client (repeatable).")
    ] = None,
    show_all: Annotated[
        bool, typer.Option("--all", help="Print every micro-dialogue, `none` ones too.")
    ] = False,
) -> None:
    """Detect homework and homework review in a transcript; one JSON line per detection."""
    from inference_server.text import format_dialogue
    from mapping.dialogues import build_micro_dialogues, dialogue_turns
    from mapping.domain import Role, RoleHints
    from mapping.transcripts import read_transcript

    explicit = {name: Role.THERAPIST for name in therapist or ()}
    for name in client or ():
        if name in explicit:
            fail(f"{name!r} is given as both --therapist and --client; give it once")
        explicit[name] = Role.CLIENT
    with bad_input_exits():
        content = _read(path)
        transcript = read_transcript(
            content,
            fmt.value,
            RoleHints(explicit=explicit),
            filename=path.name,
        )
    dialogues = build_micro_dialogues(transcript)
    if not dialogues:
        fail("no therapist turns found; name the therapist's speaker label with --therapist")
    texts = [format_dialogue(dialogue_turns(d)) for d in dialogues]
    preds = predict_texts(texts, triton, weights)
    for found in detections(dialogues, preds, keep_none=show_all):
        typer.echo(json.dumps(detection_line(found), ensure_ascii=False))


def _read(path: Path) -> bytes:
    if str(path) == "-":
        return sys.stdin.buffer.read()
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise  # bad_input_exits words these
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}; check the path and its permissions")


def detections(
    dialogues: tuple[MicroDialogue, ...], preds: Predictions, keep_none: bool = False
) -> list[Detection]:
    """A `Detection` per micro-dialogue with homework or review (all with `keep_none`)."""
    from inference_server.labels import LABELS
    from mapping.domain import Detection, HomeworkLabel

    labels, reviews = preds.labels(), preds.reviews()
    out: list[Detection] = []
    for i, dialogue in enumerate(dialogues):
        label = HomeworkLabel(labels[i])
        if label is HomeworkLabel.NONE and not reviews[i] and not keep_none:
            continue
        probs = preds.label_probs[i]
        out.append(
            Detection(
                dialogue=dialogue,
                label=label,
                review=reviews[i],
                confidence=float(probs[LABELS.index(label.value)]),
                review_confidence=float(preds.review_probs[i]),
                probabilities={
                    HomeworkLabel(name): float(p) for name, p in zip(LABELS, probs, strict=True)
                },
            )
        )
    return out


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
        "position": _position(therapist),
    }
