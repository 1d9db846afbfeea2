"""The `homework-fhir` command line.

Each command lives in its own module under `fhir_adapter/commands/` and registers itself on
`app`; heavy imports (torch, transformers, the FHIR client) happen inside the commands so that
`--help` stays fast. Bad input exits with code 2 and one line on stderr, never a stack trace.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="homework-fhir",
    help="Detect therapy homework in session transcripts and write it back over FHIR R4.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Modules that define commands; each has `register(app: typer.Typer) -> None`.
COMMAND_MODULES: tuple[str, ...] = (
    "fhir_adapter.commands.transcript",
)

for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:
    app()
