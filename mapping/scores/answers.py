"""Reading one item's answer as a 0-3 score, whatever way the form encoded it.

Accepted, in a QuestionnaireResponse answer or an Observation component:
- a LOINC answer code (LA6568-5 0, LA6569-3 1, LA6570-1 2, LA6571-9 3) as valueCoding or in
  valueCodeableConcept;
- any coding that carries an ordinal weight (extension ordinalValue, or itemWeight), on the
  coding or on the answer, or declared on the Questionnaire's answerOption;
- valueInteger, or a whole valueDecimal / valueQuantity.
A weight outside 0-3, an unknown code without a weight, or a LOINC code whose declared weight
disagrees with its LOINC meaning is refused: QuestionnaireError, never a guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from mapping.errors import QuestionnaireError
from mapping.fhir.codes import EXT_ITEM_WEIGHT, EXT_ORDINAL_VALUE, LOINC
from mapping.scores.instruments import answer_by_code

# R4's core ordinal extension, SDC's item weight, and the old questionnaire-specific name.
_WEIGHT_URLS = (
    EXT_ORDINAL_VALUE,
    EXT_ITEM_WEIGHT,
    "http://hl7.org/fhir/StructureDefinition/questionnaire-ordinalValue",
)

Weights = Mapping[tuple[str | None, str], Decimal]


def _whole(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise QuestionnaireError(f"{what}: {value!r} is not a number")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise QuestionnaireError(f"{what}: {value!r} is not a number") from None
    if number != number.to_integral_value():
        raise QuestionnaireError(f"{what}: {value} is not a whole number")
    return int(number)


def _in_range(value: int, what: str) -> int:
    if not 0 <= value <= 3:
        raise QuestionnaireError(f"{what}: answer {value} is outside 0-3")
    return value


def weight_of(element: Mapping[str, Any]) -> Decimal | None:
    """The ordinal weight an element (a Coding, an answer) carries in an extension."""
    for ext in element.get("extension", []):
        if ext.get("url") in _WEIGHT_URLS:
            for key in ("valueDecimal", "valueInteger"):
                if key in ext:
                    return Decimal(str(ext[key]))
    return None


def _from_coding(
    coding: Mapping[str, Any], holder: Mapping[str, Any], weights: Weights, what: str
) -> int | None:
    code = coding.get("code")
    if not isinstance(code, str):
        return None
    system = coding.get("system")
    loinc = answer_by_code(code) if system in (None, LOINC) else None
    weight = weight_of(coding)
    if weight is None:
        weight = weight_of(holder)
    if weight is None:
        weight = weights.get((system, code))
    if weight is not None:
        value = _in_range(_whole(weight, what), what)
        if loinc is not None and loinc.value != value:
            raise QuestionnaireError(
                f"{what}: {code} means {loinc.value} ({loinc.display}) but carries weight "
                f"{value}; fix the form's ordinal values"
            )
        return value
    if loinc is not None:
        return loinc.value
    return None


def answer_value(holder: Mapping[str, Any], what: str, weights: Weights | None = None) -> int:
    """The 0-3 score of one answer (a QuestionnaireResponse answer or Observation component).

    `what` names the item in errors ("PHQ-9 item 3 (44259-0)"); `weights` are the ordinal
    values a Questionnaire declares per (system, code).
    """
    weights = weights or {}
    codings: list[Mapping[str, Any]] = []
    if isinstance(holder.get("valueCoding"), Mapping):
        codings.append(holder["valueCoding"])
    if isinstance(holder.get("valueCodeableConcept"), Mapping):
        codings += holder["valueCodeableConcept"].get("coding", [])
    if codings:
        for coding in codings:
            value = _from_coding(coding, holder, weights, what)
            if value is not None:
                return value
        shown = ", ".join(f"{c.get('system', '')}|{c.get('code', '')}" for c in codings)
        raise QuestionnaireError(
            f"{what}: answer {shown} is not a LOINC PHQ/GAD answer (LA6568-5..LA6571-9) and "
            "carries no ordinalValue; send the LOINC answer code or an ordinal weight"
        )
    if "valueInteger" in holder:
        return _in_range(_whole(holder["valueInteger"], what), what)
    if "valueDecimal" in holder:
        return _in_range(_whole(holder["valueDecimal"], what), what)
    if isinstance(holder.get("valueQuantity"), Mapping) and "value" in holder["valueQuantity"]:
        return _in_range(_whole(holder["valueQuantity"]["value"], what), what)
    kinds = sorted(k for k in holder if k.startswith("value")) or ["no value"]
    raise QuestionnaireError(
        f"{what}: cannot score an answer of type {', '.join(kinds)}; "
        "send a LOINC answer code, an ordinal weight or an integer 0-3"
    )
