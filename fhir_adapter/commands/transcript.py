"""`homework-fhir transcript PATH`: read a transcript and print its micro-dialogues.

One JSON object per line (see `mapping.dialogues.dialogue_record`): index, roles, speakers,
therapist text, client text, context and source position. Reading is pure mapping; this
command only reads the file (or stdin for "-") and prints.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

import typer

from fhir_adapter.commands._common import read_transcript_file
from mapping.domain import TranscriptFormat


class FormatOption(StrEnum):
    AUTO = "auto"
    TEXT = "text"
    VTT = "vtt"
    JSON = "json"
    FHIR = "fhir"


# --therapist/--client, shared by the commands that read a transcript.
TherapistOption = Annotated[
    list[str] | None,
    typer.Option("--therapist", help="Speaker label of a therapist (repeatable)."),
]
ClientOption = Annotated[
    list[str] | None, typer.Option("--client", help="Speaker label of a client (repeatable).")
]


_FORMATS: dict[FormatOption, TranscriptFormat | Literal["auto"]] = {
    FormatOption.AUTO: "auto",
    FormatOption.TEXT: "text",
    FormatOption.VTT: "vtt",
    FormatOption.JSON: "json",
    FormatOption.FHIR: "fhir",
}


_HELP = (
    "Print the micro-dialogues (therapist turn + client reply) of a transcript as JSON lines."
    "\n\n"
    "Speakers not named with --therapist/--client get their role from their label (Therapist, "
    "Counselor, Client, Patient, ...); failing that, the first speaker is the therapist and the "
    "second the client. Other speakers (interpreters, a third person) are left out."
)


def register(app: typer.Typer) -> None:
    app.command("transcript", help=_HELP)(transcript)


def transcript(
    path: Annotated[
        Path,
        typer.Argument(
            help="Transcript file (text, WebVTT, diarized JSON, or a FHIR DocumentReference/"
            "Binary JSON); '-' reads stdin.",
            show_default=False,
        ),
    ],
    fmt: Annotated[
        FormatOption,
        typer.Option("--format", help="Input format; auto detects it from content and name."),
    ] = FormatOption.AUTO,
    therapist: TherapistOption = None,
    client: ClientOption = None,
    context: Annotated[
        int, typer.Option("--context", min=0, help="Earlier turns to include as context.")
    ] = 0,
) -> None:
    """Print the micro-dialogues of a transcript as JSON lines (help: `_HELP`)."""
    from mapping.dialogues import build_micro_dialogues, dialogue_record

    result = read_transcript_file(path, _FORMATS[fmt], therapist or [], client or [])
    for dialogue in build_micro_dialogues(result, context_turns=context):
        typer.echo(json.dumps(dialogue_record(dialogue), ensure_ascii=False))
