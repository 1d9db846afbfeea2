"""The `homework-fhir` command line.

Each command lives in its own module under `fhir_adapter/commands/` and registers itself on
`app`; heavy imports (torch, transformers, the FHIR client) happen inside the commands so that
`--help` stays fast. Bad input exits with code 2 and one line on stderr, never a stack trace.
"""

from __future__ import annotations

import importlib
import os

import typer

# Idle OpenMP threads spin by default and starve the other core on small machines (measured:
# batch-1 inference 3-5 items/s spinning, ~38/s passive); set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
    "fhir_adapter.commands.score",
    "fhir_adapter.commands.keys",
    "fhir_adapter.commands.serve_model",
    "fhir_adapter.commands.train",
    "fhir_adapter.commands.dapt",
    "fhir_adapter.commands.evaluate",
    "fhir_adapter.commands.detect",
    "fhir_adapter.commands.run",
    "fhir_adapter.commands.serve",
    "fhir_adapter.commands.demo",
    "fhir_adapter.commands.ops",
    "fhir_adapter.commands.quality",
)

for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:
    app()
