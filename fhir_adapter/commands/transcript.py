"""`homework-fhir transcript PATH`: read a transcript and print its micro-dialogues.

One JSON object per line (see `mapping.dialogues.dialogue_record`): index, roles, speakers,
therapist text, client text, context and source position. Reading is pure mapping; this
command only reads the file (or stdin for "-") and prints.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

import typer

from fhir_adapter.commands._common import bad_input_exits, fail
from mapping.domain import Role, RoleHints, Transcript, TranscriptFormat


class FormatOption(StrEnum):
    AUTO = "auto"
    TEXT = "text"
    VTT = "vtt"
    JSON = "json"
    FHIR = "fhir"


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
    therapist: Annotated[
        list[str] | None,
        typer.Option("--therapist", help="Speaker label of a therapist (repeatable)."),
    ] = None,
    client: Annotated[
        list[str] | None, typer.Option("--client", help="Speaker label of a client (repeatable).")
    ] = None,
    context: Annotated[
        int, typer.Option("--context", min=0, help="Earlier turns to include as context.")
    ] = 0,
) -> None:
    """Print the micro-dialogues of a transcript as JSON lines (help: `_HELP`)."""
    from mapping.dialogues import build_micro_dialogues, dialogue_record
    from mapping.errors import AttachmentNotInlineError
    from mapping.transcripts import read_transcript

    hints = _hints(therapist or [], client or [])
    with bad_input_exits():
        content = _read(path)
        try:
            result = read_transcript(content, _FORMATS[fmt], hints, filename=path.name)
        except AttachmentNotInlineError as exc:
            fail(
                f"the resource does not hold the transcript but links to {', '.join(exc.urls)}; "
                "download it and pass that file instead"
            )
        _check_named_speakers(hints, result)
        for dialogue in build_micro_dialogues(result, context_turns=context):
            typer.echo(json.dumps(dialogue_record(dialogue), ensure_ascii=False))


def _hints(therapists: list[str], clients: list[str]) -> RoleHints:
    from mapping.transcripts.roles import speaker_key

    both = {speaker_key(n) for n in therapists} & {speaker_key(n) for n in clients}
    if both:
        fail(f"{sorted(both)[0]!r} is given as both --therapist and --client; give it once")
    explicit = {name: Role.THERAPIST for name in therapists}
    explicit.update({name: Role.CLIENT for name in clients})
    return RoleHints(explicit=explicit)


def _check_named_speakers(hints: RoleHints, result: Transcript) -> None:
    """A --therapist/--client name that matches no speaker is a typo, not a hint to ignore."""
    from mapping.transcripts.roles import speaker_key

    known = {speaker_key(d.speaker) for d in result.roles}
    for name in hints.explicit:
        if speaker_key(name) not in known:
            speakers = ", ".join(d.speaker for d in result.roles)
            fail(f"no speaker {name!r} in the transcript; its speakers are: {speakers}")


def _read(path: Path) -> bytes:
    if str(path) == "-":
        return sys.stdin.buffer.read()
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise  # bad_input_exits words these
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}; check the path and its permissions")
