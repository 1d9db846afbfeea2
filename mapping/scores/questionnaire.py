"""QuestionnaireResponse -> PHQ-9 / GAD-7 scores.

Items are matched to LOINC item codes, first match wins:
1. `link_ids`, a caller's map linkId -> LOINC code (for forms with private linkIds);
2. the Questionnaire, when given: its items' LOINC `code` per linkId;
3. the linkId itself when it is a LOINC code, with or without a path ("/44250-9", "44250-9");
4. `definition` ending in a LOINC code ("...#44250-9", ".../44250-9").
Items that match nothing are ignored (a form may carry other questions). One response may hold
both instruments; each instrument with any of its items (or its total) present is scored.
A total the form itself reports (44261-6, 70274-6) must agree with the items (with the raw sum
or, when prorated, with the prorated total); with no items, the reported total is the score.
The difficulty answer (69722-7) is kept when the response holds one instrument only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse

from mapping.errors import QuestionnaireError, ResourceError
from mapping.fhir.codes import LOINC
from mapping.fhir.validate import parse
from mapping.scores.answers import answer_value, weight_of
from mapping.scores.instruments import (
    Instrument,
    ItemScore,
    ScreeningScore,
    difficulty_code,
    instrument_for_code,
    instruments,
    prorate,
)

__all__ = ["score_items", "score_questionnaire_response"]

_SCORABLE = {"completed", "amended"}
_PERFORMER_TYPES = {"Practitioner", "PractitionerRole", "Patient", "Organization", "RelatedPerson"}


def _walk(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for item in items:
        yield item
        yield from _walk(item.get("item", []))
        for answer in item.get("answer", []):
            yield from _walk(answer.get("item", []))


def _questionnaire_maps(
    questionnaire: Mapping[str, Any] | None,
) -> tuple[dict[str, str], dict[str, dict[tuple[str | None, str], Decimal]]]:
    """linkId -> LOINC code, and linkId -> ordinal weights declared on answerOptions."""
    codes: dict[str, str] = {}
    weights: dict[str, dict[tuple[str | None, str], Decimal]] = {}
    if questionnaire is None:
        return codes, weights
    if questionnaire.get("resourceType") != "Questionnaire":
        raise QuestionnaireError("the questionnaire given is not a Questionnaire resource")
    # Not validated as a whole: forms exported without `status` or item `type` score fine, and
    # only linkId, code and answerOption are read; a wrong shape of those is one error.
    try:
        for item in _walk(list(questionnaire.get("item", []))):
            link = item.get("linkId")
            if not isinstance(link, str):
                continue
            for c in item.get("code", []):
                if c.get("system") == LOINC and isinstance(c.get("code"), str):
                    codes[link] = c["code"]
                    break
            for option in item.get("answerOption", []):
                coding = option.get("valueCoding")
                weight = weight_of(coding or {})
                if weight is None:  # not `or`: a weight of 0 is falsy
                    weight = weight_of(option)
                if coding and coding.get("code") and weight is not None:
                    weights.setdefault(link, {})[(coding.get("system"), coding["code"])] = weight
    except (AttributeError, TypeError) as exc:
        raise QuestionnaireError(
            "the Questionnaire's item, code and answerOption must be lists of objects; "
            "correct the Questionnaire"
        ) from exc
    return codes, weights


def _known(code: str) -> bool:
    return code == difficulty_code() or instrument_for_code(code) is not None


def _item_code(
    item: Mapping[str, Any], explicit: Mapping[str, str], from_q: Mapping[str, str]
) -> str | None:
    link = str(item.get("linkId", ""))
    if link in explicit:
        return explicit[link]
    if link in from_q:
        return from_q[link]
    tail = link.rstrip("/").rsplit("/", 1)[-1]
    if _known(tail):
        return tail
    definition = item.get("definition")
    if isinstance(definition, str):
        tail = definition.replace("#", "/").rstrip("/").rsplit("/", 1)[-1]
        if _known(tail):
            return tail
    return None


@dataclass
class _Found:
    answers: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    reported_total: int | None = None


def score_items(
    inst: Instrument, values: Mapping[str, int | None], *, where: str = "response"
) -> tuple[int, tuple[ItemScore, ...], bool]:
    """Total, per-item scores and whether prorated, under the missing-item rule.

    `values` maps item LOINC codes to 0-3 (None or absent: unanswered).
    """
    scores = tuple(ItemScore(item, values.get(item.code)) for item in inst.items)
    missing = [s.item for s in scores if s.value is None]
    answered = [s.value for s in scores if s.value is not None]
    if inst.safety_item is not None and any(i.code == inst.safety_item for i in missing):
        item = inst.item(inst.safety_item)
        number = item.number if item else "?"
        raise QuestionnaireError(
            f"{inst.name} {where} has no answer to item {number} ({inst.safety_item}, "
            "self-harm); it cannot be prorated: ask the patient and record the answer"
        )
    if len(missing) > inst.max_missing:
        numbers = ", ".join(str(i.number) for i in missing)
        raise QuestionnaireError(
            f"{inst.name} {where} has {len(missing)} unanswered items ({numbers}); at most "
            f"{inst.max_missing} may be missing for a prorated total"
        )
    raw = sum(answered)
    if missing:
        return prorate(raw, len(inst.items), len(answered)), scores, True
    return raw, scores, False


def _reference(value: Any) -> dict[str, Any] | None:
    return dict(value) if isinstance(value, Mapping) and value else None


def score_questionnaire_response(
    response: Mapping[str, Any],
    *,
    questionnaire: Mapping[str, Any] | None = None,
    link_ids: Mapping[str, str] | None = None,
) -> list[ScreeningScore]:
    """One score per instrument found in the response (PHQ-9 first, then GAD-7)."""
    try:
        parse(response, QuestionnaireResponse)
    except ResourceError as exc:
        raise QuestionnaireError(f"not a valid QuestionnaireResponse: {exc}") from exc
    status = response.get("status")
    if status not in _SCORABLE:
        raise QuestionnaireError(
            f"QuestionnaireResponse status is {status!r}; only completed or amended "
            "responses are scored"
        )
    from_q, q_weights = _questionnaire_maps(questionnaire)
    explicit = dict(link_ids or {})
    found: dict[str, _Found] = {}
    difficulty: dict[str, Any] | None = None
    for item in _walk(list(response.get("item", []))):
        code = _item_code(item, explicit, from_q)
        if code is None:
            continue
        answers = item.get("answer", [])
        if code == difficulty_code():
            coding = answers[0].get("valueCoding") if answers else None
            difficulty = dict(coding) if isinstance(coding, Mapping) else None
            continue
        match = instrument_for_code(code)
        if match is None:
            continue
        inst, role = match
        bucket = found.setdefault(inst.key, _Found())
        if role == "total" and answers:
            bucket.reported_total = _total_answer(answers[0], inst)
        elif role == "item":
            if code in bucket.answers:
                raise QuestionnaireError(
                    f"{inst.name} item {code} appears twice (linkIds {bucket.links[code]!r} "
                    f"and {item.get('linkId')!r}); send one answer per item"
                )
            if len(answers) > 1:
                raise QuestionnaireError(
                    f"{inst.name} item {code} has {len(answers)} answers; send exactly one"
                )
            bucket.answers[code] = answers[0] if answers else None
            bucket.links[code] = str(item.get("linkId"))
    if not found:
        raise QuestionnaireError(
            "no PHQ-9 or GAD-7 items found: linkIds, definitions or the Questionnaire must "
            "name the LOINC item codes (e.g. 44250-9, 69725-0)"
        )
    performer = _reference(response.get("author"))
    base = {
        "subject": _reference(response.get("subject")),
        "encounter": _reference(response.get("encounter")),
        "effective": response.get("authored"),
        "performer": (performer,) if performer and _type_of(performer) in _PERFORMER_TYPES else (),
        "source": f"QuestionnaireResponse/{response['id']}" if response.get("id") else None,
    }
    # 69722-7 follows both instruments; with both in one form we cannot tell whose it is.
    if len(found) > 1:
        difficulty = None
    out = []
    for inst in instruments():
        if inst.key in found:
            out.append(_score(inst, found[inst.key], q_weights, base, difficulty))
    return out


def _total_answer(answer: Mapping[str, Any], inst: Instrument) -> int:
    """A reported total is 0..max, not 0..3; read it without the item range check."""
    for key in ("valueInteger", "valueDecimal"):
        if key in answer:
            value = Decimal(str(answer[key]))
            if value != value.to_integral_value() or not 0 <= value <= inst.max_total:
                raise QuestionnaireError(
                    f"{inst.name} reported total {answer[key]} is not a whole number in "
                    f"0-{inst.max_total}"
                )
            return int(value)
    raise QuestionnaireError(f"{inst.name} reported total is not a number")


def _type_of(reference: Mapping[str, Any]) -> str:
    ref = str(reference.get("reference", ""))
    parts = ref.split("/_history/")[0].rstrip("/").split("/")
    return parts[-2] if len(parts) >= 2 else ""


def _score(
    inst: Instrument,
    bucket: _Found,
    q_weights: Mapping[str, Mapping[tuple[str | None, str], Decimal]],
    base: Mapping[str, Any],
    difficulty: dict[str, Any] | None,
) -> ScreeningScore:
    if not bucket.answers:
        if bucket.reported_total is None:
            raise QuestionnaireError(f"{inst.name} total item has no answer")
        return ScreeningScore(
            instrument=inst,
            total=bucket.reported_total,
            band=inst.band(bucket.reported_total),
            difficulty=difficulty,
            **base,
        )
    values: dict[str, int | None] = {}
    for code, answer in bucket.answers.items():
        item = inst.item(code)
        what = f"{inst.name} item {item.number if item else '?'} ({code})"
        weights = q_weights.get(bucket.links[code], {})
        values[code] = None if answer is None else answer_value(answer, what, weights)
    total, items, prorated = score_items(inst, values)
    if bucket.reported_total is not None:
        raw = sum(v for v in values.values() if v is not None)
        if bucket.reported_total not in {total, raw}:
            raise QuestionnaireError(
                f"{inst.name} response reports total {bucket.reported_total} but its items sum "
                f"to {raw}; correct the response before scoring"
            )
    self_harm = None
    if inst.safety_item is not None:
        self_harm = (values.get(inst.safety_item) or 0) > 0
    return ScreeningScore(
        instrument=inst,
        total=total,
        band=inst.band(total),
        items=items,
        prorated=prorated,
        self_harm=self_harm,
        difficulty=difficulty,
        **base,
    )
