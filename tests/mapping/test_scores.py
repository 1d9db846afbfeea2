"""Scoring rules checked against the published thresholds, written out here independently."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from mapping.errors import QuestionnaireError
from mapping.fhir.validate import as_json
from mapping.scores import (
    build_observation,
    instrument,
    score_observation,
    score_questionnaire_response,
    score_resource,
)
from mapping.scores.instruments import answer_by_code, instruments, prorate
from mapping.scores.questionnaire import score_items
from tests.mapping import golden

PHQ9 = instrument("phq-9")
GAD7 = instrument("gad-7")


def loinc_check_digit(number: str) -> int:
    """LOINC's mod-10 check digit (Luhn over the digits before the hyphen)."""
    total = 0
    for n, ch in enumerate(reversed(number)):
        digit = int(ch) * (2 if n % 2 == 0 else 1)
        total += digit // 10 + digit % 10
    return (10 - total % 10) % 10


def expected_band(key: str, total: int) -> str:
    # Kroenke 2001 (PHQ-9) and Spitzer 2006 (GAD-7), as the brief states them.
    if key == "phq-9":
        cuts = [
            (4, "minimal"),
            (9, "mild"),
            (14, "moderate"),
            (19, "moderately-severe"),
            (27, "severe"),
        ]
    else:
        cuts = [(4, "minimal"), (9, "mild"), (14, "moderate"), (21, "severe")]
    return next(code for high, code in cuts if total <= high)


def test_item_codes_are_the_published_ones() -> None:
    assert [i.code for i in PHQ9.items] == [
        "44250-9",
        "44255-8",
        "44259-0",
        "44254-1",
        "44251-7",
        "44258-2",
        "44252-5",
        "44253-3",
        "44260-8",
    ]
    assert (PHQ9.panel.code, PHQ9.total.code, PHQ9.safety_item) == ("44249-1", "44261-6", "44260-8")
    assert [i.code for i in GAD7.items] == [
        "69725-0",
        "68509-9",
        "69733-4",
        "69734-2",
        "69735-9",
        "69689-8",
        "69736-7",
    ]
    assert (GAD7.panel.code, GAD7.total.code) == ("69737-5", "70274-6")


def test_every_loinc_code_has_a_valid_check_digit() -> None:
    codes = [c for inst in instruments() for c in (inst.panel.code, inst.total.code)]
    codes += [i.code for inst in instruments() for i in inst.items] + ["69722-7"]
    for code in codes:
        number, check = code.split("-")
        assert loinc_check_digit(number) == int(check), code
    # The brief's "68509-2" fails the check digit; LOINC's code for GAD-7 item 2 is 68509-9.
    assert loinc_check_digit("68509") == 9


def test_answer_codes() -> None:
    assert [answer_by_code(c).value for c in ("LA6568-5", "LA6569-3", "LA6570-1", "LA6571-9")] == [
        0,
        1,
        2,
        3,
    ]  # type: ignore[union-attr]
    assert answer_by_code("LA6572-7") is None  # a difficulty answer is not a score


@pytest.mark.parametrize("inst", [PHQ9, GAD7], ids=lambda i: i.key)
def test_every_total_falls_in_the_published_band(inst: Any) -> None:
    for total in range(inst.max_total + 1):
        assert inst.band(total).code == expected_band(inst.key, total), total
    with pytest.raises(ValueError, match="outside"):
        inst.band(inst.max_total + 1)


@pytest.mark.parametrize(
    ("raw", "items", "answered", "expected"),
    [(10, 9, 8, 11), (4, 9, 8, 5), (12, 9, 8, 14), (24, 9, 8, 27), (6, 7, 6, 7), (3, 7, 6, 4)],
)
def test_prorate_rounds_half_up(raw: int, items: int, answered: int, expected: int) -> None:
    assert prorate(raw, items, answered) == expected


def test_score_items_rules() -> None:
    full = {i.code: 1 for i in PHQ9.items}
    assert score_items(PHQ9, full)[0] == 9
    one_missing = {**full, "44251-7": None}
    total, items, prorated = score_items(PHQ9, one_missing)
    assert (total, prorated) == (9, True)  # 8 x 9 / 8
    assert [s.value for s in items].count(None) == 1
    with pytest.raises(QuestionnaireError, match="2 unanswered items"):
        score_items(PHQ9, {**one_missing, "44252-5": None})
    with pytest.raises(QuestionnaireError, match="self-harm"):
        score_items(PHQ9, {**full, "44260-8": None})
    # GAD-7 has no safety item: any one item may be missing.
    gad = {i.code: 2 for i in GAD7.items}
    assert score_items(GAD7, {**gad, "69736-7": None})[0] == 14


def _qr(case: str) -> dict[str, Any]:
    data: dict[str, Any] = golden.load("scores", case)
    return data


def _answer(qr: dict[str, Any], n: int) -> dict[str, Any]:
    answer: dict[str, Any] = qr["item"][n]["answer"][0]
    return answer


def test_prorated_golden_case_is_marked_and_explained() -> None:
    [score] = score_resource(_qr("phq9-prorated"))
    assert (score.total, score.prorated, score.answered) == (11, True, 8)
    obs = as_json(build_observation(score))
    assert any("prorated from 8 of 9" in n["text"] for n in obs["note"])
    [absent] = [c for c in obs["component"] if "dataAbsentReason" in c]
    assert absent["code"]["coding"][0]["code"] == "44251-7"


@pytest.mark.parametrize(
    ("case", "total", "band", "self_harm"),
    [
        ("phq9-minimal", 3, "minimal", False),
        ("phq9-mild", 7, "mild", False),
        ("phq9-moderate-reported-total", 12, "moderate", False),
        ("phq9-moderately-severe", 17, "moderately-severe", False),
        ("phq9-severe-item9", 23, "severe", True),
        ("phq9-minimal-item9", 4, "minimal", True),
        ("phq9-questionnaire-linkids", 9, "mild", True),
        ("gad7-minimal", 2, "minimal", None),
        ("gad7-mild", 6, "mild", None),
        ("gad7-moderate-integers", 11, "moderate", None),
        ("gad7-severe-ordinal", 18, "severe", None),
        ("observation-oracle-phq9-quantity", 14, "moderate", None),
        ("observation-gad7-integer", 16, "severe", None),
    ],
)
def test_case_scores(case: str, total: int, band: str, self_harm: bool | None) -> None:
    path = golden.DATA / "scores" / case / "questionnaire.json"
    form = golden.load("scores", case, "questionnaire.json") if path.exists() else None
    [score] = score_resource(_qr(case), questionnaire=form)
    assert (score.total, score.band.code, score.self_harm) == (total, band, self_harm)
    obs = as_json(build_observation(score))
    flagged = any(c["code"] == "self-harm-risk" for i in obs["interpretation"] for c in i["coding"])
    assert flagged == bool(self_harm)


def test_item9_flag_is_on_the_component_and_in_a_note() -> None:
    obs = as_json(build_observation(score_resource(_qr("phq9-minimal-item9"))[0]))
    [item9] = [c for c in obs["component"] if c["code"]["coding"][0]["code"] == "44260-8"]
    assert item9["interpretation"][0]["coding"][0]["code"] == "A"
    assert item9["valueCodeableConcept"]["coding"][0]["code"] == "LA6569-3"
    assert any("self-harm" in n["text"] for n in obs["note"])


def test_observation_round_trips_through_the_reader() -> None:
    for case in ("phq9-severe-item9", "phq9-prorated", "gad7-severe-ordinal"):
        [score] = score_resource(_qr(case))
        again = score_observation(as_json(build_observation(score)))
        assert (again.total, again.band, again.self_harm, again.prorated) == (
            score.total,
            score.band,
            score.self_harm,
            score.prorated,
        )
        assert [i.value for i in again.items] == [i.value for i in score.items]


def test_combined_form_gives_both_instruments_and_drops_shared_difficulty() -> None:
    phq, gad = score_resource(_qr("phq9-gad7-combined"))
    assert (phq.instrument.key, phq.total, gad.instrument.key, gad.total) == (
        "phq-9",
        4,
        "gad-7",
        8,
    )
    assert phq.difficulty is None


def test_difficulty_is_kept_but_not_scored() -> None:
    [score] = score_resource(_qr("phq9-moderate-reported-total"))
    assert score.total == 12 and score.difficulty and score.difficulty["code"] == "LA6573-5"


def test_reported_total_alone_is_the_score() -> None:
    qr = _qr("phq9-minimal")
    qr["item"] = [{"linkId": "/44261-6", "answer": [{"valueInteger": 16}]}]
    [score] = score_questionnaire_response(qr)
    assert (score.total, score.band.code, score.items, score.self_harm) == (
        16,
        "moderately-severe",
        (),
        None,
    )
    obs = as_json(build_observation(score))
    assert any("item 9 (self-harm) answer was not available" in n["text"] for n in obs["note"])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda q: _answer(q, 0).update(
                {
                    "valueCoding": {
                        **_answer(q, 0)["valueCoding"],
                        "extension": [
                            {
                                "url": "http://hl7.org/fhir/StructureDefinition/ordinalValue",
                                "valueDecimal": 3,
                            }
                        ],
                    }
                }
            ),
            "means 0",
        ),
        (lambda q: q["item"][0].update({"answer": [_answer(q, 0), _answer(q, 1)]}), "2 answers"),
        (lambda q: q["item"].append(copy.deepcopy(q["item"][0])), "appears twice"),
        (lambda q: q["item"][2].update({"answer": [{"valueString": "often"}]}), "valueString"),
        (lambda q: q["item"][2].update({"answer": [{"valueDecimal": 1.5}]}), "not a whole number"),
        (lambda q: q["item"][2].update({"answer": [{"valueInteger": -1}]}), "outside 0-3"),
        (
            lambda q: q.update({"item": [{"linkId": "mood", "answer": [{"valueInteger": 2}]}]}),
            "no PHQ-9 or GAD-7 items",
        ),
        (lambda q: q.update({"status": "entered-in-error"}), "only completed or amended"),
        (lambda q: q.update({"status": "done"}), "only completed or amended"),
        (lambda q: q.update({"authored": "yesterday"}), "not a valid QuestionnaireResponse"),
    ],
)
def test_refusals(mutate: Any, message: str) -> None:
    qr = _qr("phq9-minimal")
    mutate(qr)
    with pytest.raises(QuestionnaireError, match=message):
        score_questionnaire_response(qr)


def test_subject_is_required_for_the_observation() -> None:
    qr = _qr("phq9-minimal")
    del qr["subject"]
    [score] = score_questionnaire_response(qr)
    with pytest.raises(QuestionnaireError, match="no subject"):
        build_observation(score)


def test_link_ids_map_private_link_ids() -> None:
    qr = _qr("gad7-mild")
    for n, item in enumerate(qr["item"], 1):
        item["linkId"] = f"anx{n}"
    mapping = {f"anx{n}": i.code for n, i in enumerate(GAD7.items, 1)}
    [score] = score_questionnaire_response(qr, link_ids=mapping)
    assert score.total == 6
    with pytest.raises(QuestionnaireError, match="no PHQ-9 or GAD-7 items"):
        score_questionnaire_response(qr)


def test_observation_value_string_and_partial_components() -> None:
    obs = _qr("observation-gad7-integer")
    obs.pop("valueInteger")
    obs["valueString"] = " 7 "
    assert score_observation(obs).total == 7
    phq = _qr("observation-oracle-phq9-quantity")
    phq["component"] = [
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "44260-8"}]},
            "valueCodeableConcept": {
                "coding": [{"system": "http://loinc.org", "code": "LA6570-1"}]
            },
        }
    ]
    score = score_observation(phq)
    assert (score.total, score.self_harm, score.items) == (14, True, ())


def test_observation_components_must_agree_with_value() -> None:
    [score] = score_resource(_qr("phq9-mild"))
    obs = as_json(build_observation(score))
    obs["valueInteger"] = 8
    with pytest.raises(QuestionnaireError, match="disagrees with its item components"):
        score_observation(obs)


def test_same_response_gives_same_observation_id() -> None:
    a = build_observation(score_resource(_qr("phq9-mild"))[0])
    b = build_observation(score_resource(_qr("phq9-mild"))[0])
    c = build_observation(score_resource(_qr("phq9-minimal"))[0])
    assert a.id == b.id != c.id
    assert a.identifier and a.identifier[0].value == a.id


def test_malformed_codings_and_questionnaire_items_are_refused_not_crashed() -> None:
    # A Bundle reads each Observation's code before validating it (to skip what is not a
    # total): codings that are strings were an AttributeError.
    bundle = _qr("bundle-mixed")
    bundle["entry"].append(
        {"resource": {"resourceType": "Observation", "code": {"coding": ["44261-6"]}}}
    )
    n = len(bundle["entry"]) - 1
    with pytest.raises(QuestionnaireError, match=f"Bundle entry {n}: Observation.code is not"):
        score_resource(bundle)
    # A Questionnaire's items were walked unvalidated: "item": 5 was a TypeError.
    form = golden.load("scores", "phq9-questionnaire-linkids", "questionnaire.json")
    form["item"] = 5
    with pytest.raises(QuestionnaireError, match="item, code and answerOption must be lists"):
        score_resource(_qr("phq9-questionnaire-linkids"), questionnaire=form)


def test_a_questionnaire_missing_fields_the_scorer_does_not_read_still_scores() -> None:
    # Forms exported without status or item types: only linkId, code and answerOption are read.
    form = golden.load("scores", "phq9-questionnaire-linkids", "questionnaire.json")
    del form["status"]

    def untyped(items: list[dict[str, Any]]) -> None:
        for item in items:
            item.pop("type", None)
            untyped(item.get("item", []))

    untyped(form["item"])
    [score] = score_resource(_qr("phq9-questionnaire-linkids"), questionnaire=form)
    assert score.total == 9
