"""The chart note's Provenance: the EHR holds no Device, so the model is a logical reference."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from fhir.resources.R4B.provenance import Provenance

from mapping.fhir.codes import SID_DEVICE
from mapping.fhir.provenance import build_chart_provenance
from mapping.fhir.validate import as_json
from tests.mapping.fhir_cases import load_case

CASE = Path(__file__).parents[1] / "data" / "fhir"


def test_chart_provenance_targets_the_note_and_names_the_model_by_identifier() -> None:
    case = load_case(json.loads((CASE / "two-homework" / "input.json").read_text()))
    ctx, info = case["ctx"], case["model"]
    built = as_json(
        build_chart_provenance(ctx, info, "DocumentReference/note-9", now=datetime.now(UTC))
    )
    Provenance.model_validate(built)
    assert "id" not in built  # the EHR assigns it
    assert built["target"] == [{"reference": "DocumentReference/note-9"}]
    who = built["agent"][0]["who"]
    assert "reference" not in who and who["identifier"]["system"] == SID_DEVICE
    assert info.version in who["display"]
    # Only the transcript as source: the model card lives in our store, not in the EHR.
    assert [e["role"] for e in built["entity"]] == ["source"]
    assert built["entity"][0]["what"]["reference"] == ctx.transcript.reference
