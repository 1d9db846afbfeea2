"""Screening scores <-> US Core Observation (Screening Assessment profile).

`score_observation` reads the totals EHRs send as Observations (Oracle Health files PHQ-9 and
GAD-7 totals that way): code 44261-6 / 70274-6, valueInteger, a whole valueQuantity, or a
valueString of digits (as the US Core PHQ-9 example does). Item components (our own output
carries them) are read too: when every item has one they must add up to the value, and a PHQ-9
item-9 component sets the self-harm flag.

`build_observation` emits: category survey (US Core's screening-assessment slice takes codes
from a value set with no mental-health code, so no second category is invented), code = the
total's LOINC, valueInteger, the band as interpretation (our screening-interpretation
CodeSystem), the PHQ-9 item-9 flag as a second interpretation plus a note, one component per
item, subject, encounter, effective and derivedFrom the scored resource.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from fhir.resources.R4B.observation import Observation

from mapping import terminology
from mapping.errors import QuestionnaireError, ResourceError
from mapping.fhir.codes import (
    CS_SCREENING_INTERPRETATION,
    DATA_ABSENT_REASON,
    EXT_ORDINAL_VALUE,
    LOINC,
    OBSERVATION_CATEGORY,
    PROFILE_SCREENING,
    SID_OBSERVATION,
    V3_OBSERVATION_INTERPRETATION,
    coding,
)
from mapping.fhir.identifiers import identifier, observation_value
from mapping.fhir.validate import parse
from mapping.scores.answers import answer_value
from mapping.scores.instruments import (
    Instrument,
    ScreeningScore,
    answer_by_value,
    difficulty_code,
    instrument_for_code,
)
from mapping.scores.questionnaire import score_items, score_questionnaire_response

__all__ = ["build_observation", "score_observation", "score_resource"]

_NOT_SCORABLE = {"entered-in-error", "cancelled", "registered"}
SELF_HARM = "self-harm-risk"


def _total_value(obs: Mapping[str, Any], inst: Instrument) -> int:
    what = f"{inst.name} total Observation"
    raw: Any
    if "valueInteger" in obs:
        raw = obs["valueInteger"]
    elif isinstance(obs.get("valueQuantity"), Mapping) and "value" in obs["valueQuantity"]:
        raw = obs["valueQuantity"]["value"]
    elif isinstance(obs.get("valueString"), str) and obs["valueString"].strip().isdigit():
        raw = obs["valueString"].strip()
    else:
        kinds = sorted(k for k in obs if k.startswith("value")) or ["no value"]
        raise QuestionnaireError(
            f"{what} has {', '.join(kinds)}; send the total as valueInteger or valueQuantity"
        )
    number = Decimal(str(raw))
    if number != number.to_integral_value() or not 0 <= number <= inst.max_total:
        raise QuestionnaireError(f"{what}: {raw} is not a whole number in 0-{inst.max_total}")
    return int(number)


def _obs_code(obs: Mapping[str, Any]) -> tuple[Instrument, str] | None:
    # Read before the Observation is validated (a Bundle skips what is not a total), so the
    # shape is checked here.
    code = obs.get("code") or {}
    codings = code.get("coding", []) if isinstance(code, Mapping) else None
    if not isinstance(codings, list) or not all(isinstance(c, Mapping) for c in codings):
        raise QuestionnaireError(
            "Observation.code is not a CodeableConcept with a list of Codings; correct the "
            "Observation"
        )
    for c in codings:
        if c.get("system") == LOINC and isinstance(c.get("code"), str):
            match = instrument_for_code(c["code"])
            if match is not None:
                return match
    return None


def is_screening_total(obs: Mapping[str, Any]) -> bool:
    match = _obs_code(obs)
    return match is not None and match[1] == "total"


def score_observation(obs: Mapping[str, Any]) -> ScreeningScore:
    """The score a PHQ-9 / GAD-7 total Observation carries (with its items, if any)."""
    try:
        parse(obs, Observation)
    except ResourceError as exc:
        raise QuestionnaireError(f"not a valid Observation: {exc}") from exc
    match = _obs_code(obs)
    if match is None or match[1] != "total":
        codes = [c.get("code") for c in (obs.get("code") or {}).get("coding", [])]
        raise QuestionnaireError(
            f"Observation code {codes} is not a PHQ-9 (44261-6) or GAD-7 (70274-6) total"
        )
    inst = match[0]
    if obs.get("status") in _NOT_SCORABLE:
        raise QuestionnaireError(
            f"{inst.name} Observation status is {obs.get('status')!r}; only final, amended, "
            "corrected or preliminary totals are scored"
        )
    total = _total_value(obs, inst)
    values: dict[str, int | None] = {}
    difficulty = None
    for comp in obs.get("component", []):
        for c in comp.get("code", {}).get("coding", []):
            code = c.get("code")
            if c.get("system") != LOINC or not isinstance(code, str):
                continue
            item = inst.item(code)
            if item is not None:
                absent = "dataAbsentReason" in comp
                what = f"{inst.name} item {item.number} ({code})"
                values[code] = None if absent else answer_value(comp, what)
            elif code == difficulty_code():
                concept = comp.get("valueCodeableConcept") or {}
                difficulty = next(iter(concept.get("coding", [])), None)
    items: tuple[Any, ...] = ()
    prorated = False
    self_harm = None
    if values and all(i.code in values for i in inst.items):
        computed, items, prorated = score_items(inst, values, where="Observation")
        if computed != total:
            raise QuestionnaireError(
                f"{inst.name} Observation value {total} disagrees with its item components "
                f"({computed}); correct the Observation"
            )
    # Some EHRs attach only a few item components (item 9 among them); the flag still counts.
    if inst.safety_item is not None and values.get(inst.safety_item) is not None:
        self_harm = (values[inst.safety_item] or 0) > 0
    subject = obs.get("subject")
    encounter = obs.get("encounter")
    return ScreeningScore(
        instrument=inst,
        total=total,
        band=inst.band(total),
        items=items,
        prorated=prorated,
        self_harm=self_harm,
        subject=dict(subject) if subject else None,
        encounter=dict(encounter) if encounter else None,
        effective=obs.get("effectiveDateTime") or (obs.get("effectivePeriod") or {}).get("start"),
        performer=tuple(dict(p) for p in obs.get("performer", [])),
        source=f"Observation/{obs['id']}" if obs.get("id") else None,
        difficulty=dict(difficulty) if difficulty else None,
    )


def score_resource(
    resource: Mapping[str, Any],
    *,
    questionnaire: Mapping[str, Any] | None = None,
    link_ids: Mapping[str, str] | None = None,
) -> list[ScreeningScore]:
    """Scores from a QuestionnaireResponse, a total Observation, or a Bundle of them.

    `questionnaire` and `link_ids` help match QuestionnaireResponse items (see
    `score_questionnaire_response`). In a Bundle, resources of other types and Observations
    that are not PHQ-9/GAD-7 totals are skipped; a Bundle with nothing to score is an error,
    as is any entry that fails.
    """
    rtype = resource.get("resourceType")
    if rtype == "QuestionnaireResponse":
        return score_questionnaire_response(
            resource, questionnaire=questionnaire, link_ids=link_ids
        )
    if rtype == "Observation":
        return [score_observation(resource)]
    if rtype == "Bundle":
        out: list[ScreeningScore] = []
        entries = resource.get("entry", [])
        if not isinstance(entries, list) or not all(
            isinstance(e, Mapping) and isinstance(e.get("resource") or {}, Mapping) for e in entries
        ):
            raise QuestionnaireError(
                "Bundle.entry is not a list of entries holding resources; correct the Bundle"
            )
        for n, entry in enumerate(entries):
            inner = entry.get("resource") or {}
            kind = inner.get("resourceType")
            if kind not in ("QuestionnaireResponse", "Observation"):
                continue
            try:
                if kind == "Observation" and not is_screening_total(inner):
                    continue
                out += score_resource(inner, questionnaire=questionnaire, link_ids=link_ids)
            except QuestionnaireError as exc:
                raise QuestionnaireError(f"Bundle entry {n}: {exc}") from exc
        if not out:
            raise QuestionnaireError(
                "the Bundle holds no QuestionnaireResponse and no PHQ-9/GAD-7 total Observation"
            )
        return out
    raise QuestionnaireError(
        f"cannot score a {rtype or 'JSON document without resourceType'}; pass a "
        "QuestionnaireResponse, a PHQ-9/GAD-7 total Observation, or a Bundle of them"
    )


def _interpretation(score: ScreeningScore) -> list[dict[str, Any]]:
    band = score.band
    out: list[dict[str, Any]] = [
        {
            "coding": [
                coding(
                    CS_SCREENING_INTERPRETATION,
                    band.code,
                    terminology.display(CS_SCREENING_INTERPRETATION, band.code),
                )
            ],
            "text": band.text,
        }
    ]
    if score.self_harm:
        display = terminology.display(CS_SCREENING_INTERPRETATION, SELF_HARM)
        out.append(
            {
                "coding": [coding(CS_SCREENING_INTERPRETATION, SELF_HARM, display)],
                "text": "Item 9 positive: assess self-harm risk",
            }
        )
    return out


def _components(score: ScreeningScore) -> list[dict[str, Any]]:
    inst = score.instrument
    out: list[dict[str, Any]] = []
    for item_score in score.items:
        item = item_score.item
        comp: dict[str, Any] = {
            "code": {
                "coding": [coding(LOINC, item.code, item.display)],
                "text": f"{inst.name} item {item.number}",
            }
        }
        if item_score.value is None:
            absent = coding(DATA_ABSENT_REASON, "unknown", "Unknown")
            comp["dataAbsentReason"] = {"coding": [absent]}
        else:
            answer = answer_by_value(item_score.value)
            answer_coding: dict[str, Any] = coding(LOINC, answer.code, answer.display)
            answer_coding["extension"] = [{"url": EXT_ORDINAL_VALUE, "valueDecimal": answer.value}]
            comp["valueCodeableConcept"] = {"coding": [answer_coding], "text": answer.display}
            if item.code == inst.safety_item and item_score.value > 0:
                comp["interpretation"] = [
                    {
                        "coding": [coding(V3_OBSERVATION_INTERPRETATION, "A", "Abnormal")],
                        "text": "Positive: needs clinician follow-up",
                    }
                ]
        out.append(comp)
    if score.difficulty and score.items:
        out.append(
            {
                "code": {"coding": [coding(LOINC, difficulty_code())], "text": "Difficulty"},
                "valueCodeableConcept": {"coding": [dict(score.difficulty)]},
            }
        )
    return out


def _notes(score: ScreeningScore) -> list[dict[str, str]]:
    inst = score.instrument
    notes = []
    if score.self_harm:
        item = next(i for i in score.items if i.item.code == inst.safety_item)
        answer = answer_by_value(item.value or 0)
        notes.append(
            f"{inst.name} item 9 (thoughts of being better off dead or of self-harm) was "
            f"answered '{answer.display}': assess self-harm risk with the patient, whatever "
            "the total."
        )
    elif score.self_harm is None and inst.safety_item is not None:
        notes.append(
            f"Scored from a reported total: the {inst.name} item 9 (self-harm) answer was not "
            "available; check it in the patient's responses."
        )
    if score.prorated:
        raw = sum(i.value for i in score.items if i.value is not None)
        n = len(inst.items)
        notes.append(
            f"Total prorated from {score.answered} of {n} answered items: "
            f"round({raw} x {n} / {score.answered}) = {score.total}."
        )
    return [{"text": text} for text in notes]


def build_observation(score: ScreeningScore) -> Observation:
    """The US Core Screening Assessment Observation for a score (needs a subject).

    With a `source`, the Observation gets a stable identifier and id derived from it, so
    re-scoring the same response yields the same resource.
    """
    inst = score.instrument
    if not score.subject:
        raise QuestionnaireError(
            f"the {inst.name} response has no subject; US Core needs the patient"
        )
    data: dict[str, Any] = {
        "resourceType": "Observation",
        "meta": {"profile": [PROFILE_SCREENING]},
        "status": "final",
        "category": [
            {"coding": [coding(OBSERVATION_CATEGORY, "survey", "Survey")], "text": "Survey"}
        ],
        "code": {
            "coding": [coding(LOINC, inst.total.code, inst.total.display)],
            "text": f"{inst.name} total score",
        },
        "subject": score.subject,
        "valueInteger": score.total,
        "interpretation": _interpretation(score),
    }
    if score.source:
        value = observation_value(score.source, inst.total.code)
        data["id"] = value
        data["identifier"] = [identifier(SID_OBSERVATION, value)]
        data["derivedFrom"] = [{"reference": score.source}]
    if score.encounter:
        data["encounter"] = score.encounter
    if score.effective:
        data["effectiveDateTime"] = score.effective
    if score.performer:
        data["performer"] = list(score.performer)
    notes = _notes(score)
    if notes:
        data["note"] = notes
    components = _components(score)
    if components:
        data["component"] = components
    return parse(data, Observation)
