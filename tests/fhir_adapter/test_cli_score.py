"""`homework-fhir score`: Observation JSON on stdout; bad input exits 2 with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fhir_adapter.cli import app
from mapping.fhir.validate import problems

SCORES = Path(__file__).resolve().parents[1] / "data" / "scores"
runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["score", *args])
    return result.exit_code, result.stdout, result.stderr


def test_questionnaire_response_prints_one_observation() -> None:
    code, out, err = invoke(str(SCORES / "phq9-severe-item9" / "input.json"))
    assert (code, err) == (0, "")
    obs = json.loads(out)
    assert obs["resourceType"] == "Observation"
    assert (obs["valueInteger"], obs["code"]["coding"][0]["code"]) == (23, "44261-6")
    assert problems(obs) == []
    expected = json.loads((SCORES / "phq9-severe-item9" / "expected.json").read_text())
    assert obs == expected["observations"][0]


def test_several_scores_print_a_collection_bundle() -> None:
    code, out, _ = invoke(str(SCORES / "bundle-mixed" / "input.json"))
    assert code == 0
    bundle = json.loads(out)
    assert (bundle["resourceType"], bundle["type"]) == ("Bundle", "collection")
    assert [e["resource"]["valueInteger"] for e in bundle["entry"]] == [6, 20]
    assert problems(bundle) == []


def test_screening_observation_input() -> None:
    code, out, _ = invoke(str(SCORES / "observation-oracle-phq9-quantity" / "input.json"))
    assert code == 0
    obs = json.loads(out)
    assert obs["derivedFrom"] == [{"reference": "Observation/M-448271"}]
    assert obs["interpretation"][0]["coding"][0]["code"] == "moderate"


def test_questionnaire_option() -> None:
    case = SCORES / "phq9-questionnaire-linkids"
    code, out, _ = invoke(
        str(case / "input.json"), "--questionnaire", str(case / "questionnaire.json")
    )
    assert code == 0 and json.loads(out)["valueInteger"] == 9
    code, _, err = invoke(str(case / "input.json"))
    assert code == 2 and "no PHQ-9 or GAD-7 items" in err


def _bad(tmp_path: Path, name: str, text: str | bytes) -> str:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return str(path)


STRING_CODINGS = json.dumps(
    {
        "resourceType": "Bundle",
        "entry": [{"resource": {"resourceType": "Observation", "code": {"coding": ["x"]}}}],
    }
)


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p: str(p / "missing.json"), "no such file"),
        (lambda p: str(p), "expected a file"),
        (lambda p: _bad(p, "a.json", '{"resourceType": '), "is not JSON"),
        (lambda p: _bad(p, "b.json", "[1, 2]"), "holds a JSON list"),
        (lambda p: _bad(p, "c.json", '{"resourceType": "Patient"}'), "cannot score a Patient"),
        (lambda p: str(SCORES / "phq9-two-missing" / "input.json"), "2 unanswered items"),
        (lambda p: str(SCORES / "phq9-out-of-range" / "input.json"), "outside 0-3"),
        (lambda p: str(SCORES / "observation-out-of-range" / "input.json"), "0-21"),
        (lambda p: _bad(p, "d.json", b'{"resourceType": "\xff"}'), "not UTF-8"),
        (lambda p: _bad(p, "e.json", STRING_CODINGS), "Bundle entry 0: Observation.code is not"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path: Path, make: object, fragment: str) -> None:
    code, out, err = invoke(make(tmp_path))  # type: ignore[operator]
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
    assert "Traceback" not in err


def test_help_lists_the_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "score" in result.stdout
