"""PHQ-9 / GAD-7 golden cases: tests/data/scores/<case>/input.json -> expected.json.

expected.json is {"observations": [...]} or, for input that must be refused, {"error": "..."}.
A case may add questionnaire.json (the form that explains private linkIds).
"""

from __future__ import annotations

from typing import Any

import pytest

from mapping.errors import QuestionnaireError
from mapping.fhir.codes import OBSERVATION_CATEGORY, PROFILE_SCREENING
from mapping.fhir.validate import as_json, problems
from mapping.scores import build_observation, score_resource
from tests.mapping import golden

AREA = "scores"
CASES = golden.cases(AREA)

# The cases whose input must be refused; every other case must score.
REFUSED = {
    "phq9-two-missing",
    "phq9-item9-missing",
    "phq9-out-of-range",
    "phq9-bad-answer-code",
    "phq9-total-mismatch",
    "phq9-in-progress",
    "observation-out-of-range",
    "observation-not-a-screening-total",
    "observation-entered-in-error",
    "not-scorable-patient",
}


def run(case: str) -> dict[str, Any]:
    data = golden.load(AREA, case)
    path = golden.DATA / AREA / case / "questionnaire.json"
    form = golden.load(AREA, case, "questionnaire.json") if path.exists() else None
    try:
        scores = score_resource(data, questionnaire=form)
    except QuestionnaireError as exc:
        return {"error": str(exc)}
    return {"observations": [as_json(build_observation(s)) for s in scores]}


def test_refused_cases_exist() -> None:
    assert set(CASES) >= REFUSED


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    result = run(case)
    assert ("error" in result) == (case in REFUSED), result
    golden.check(AREA, case, result)


@pytest.mark.parametrize("case", sorted(set(CASES) - REFUSED))
def test_observations_follow_us_core_screening_assessment(case: str) -> None:
    for obs in run(case)["observations"]:
        assert problems(obs) == []
        assert obs["meta"]["profile"] == [PROFILE_SCREENING]
        assert obs["status"] == "final"
        assert {"system": OBSERVATION_CATEGORY, "code": "survey", "display": "Survey"} in [
            c for cat in obs["category"] for c in cat["coding"]
        ]
        assert obs["subject"]["reference"] == "Patient/pat-ana"
        assert obs["code"]["coding"][0]["code"] in {"44261-6", "70274-6"}
        assert isinstance(obs["valueInteger"], int)
        assert obs["effectiveDateTime"].startswith("2024-05-02")
        assert obs["derivedFrom"][0]["reference"].split("/")[0] in {
            "QuestionnaireResponse",
            "Observation",
        }
        assert obs["interpretation"]


def test_refusals_are_one_line_and_say_what_to_do() -> None:
    for case in sorted(REFUSED):
        message = run(case)["error"]
        assert "\n" not in message and len(message) < 300, case
