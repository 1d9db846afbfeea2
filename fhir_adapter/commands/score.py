"""`homework-fhir score PATH`: PHQ-9 / GAD-7 scores as US Core Observation JSON.

PATH holds a QuestionnaireResponse, a PHQ-9/GAD-7 total Observation, or a Bundle of them.
Prints one Observation, or a collection Bundle when there are several. Bad input: exit 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from fhir_adapter.commands._common import bad_input_exits, fail


def _read_json(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{path} is not JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}")
    if not isinstance(data, dict):
        fail(f"{path} holds a JSON {type(data).__name__}, not a FHIR resource")
    return data


def register(app: typer.Typer) -> None:
    @app.command("score")
    def score(
        path: Annotated[
            Path,
            typer.Argument(
                help="QuestionnaireResponse, PHQ-9/GAD-7 total Observation, or a Bundle (JSON)."
            ),
        ],
        questionnaire: Annotated[
            Path | None,
            typer.Option(
                "--questionnaire",
                "-q",
                help="The Questionnaire (JSON), when the response's linkIds are not LOINC codes.",
            ),
        ] = None,
    ) -> None:
        """Score PHQ-9 / GAD-7 and print US Core screening Observation(s) as JSON."""
        from mapping.fhir.validate import as_json
        from mapping.scores import build_observation, score_resource

        with bad_input_exits():
            data = _read_json(path)
            form = _read_json(questionnaire) if questionnaire is not None else None
            observations = [
                as_json(build_observation(s)) for s in score_resource(data, questionnaire=form)
            ]
        if len(observations) == 1:
            out: dict[str, Any] = observations[0]
        else:
            out = {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": o} for o in observations],
            }
        typer.echo(json.dumps(out, indent=2, ensure_ascii=False))
