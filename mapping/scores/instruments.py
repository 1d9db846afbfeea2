"""PHQ-9 and GAD-7 code tables, read from `instruments.json` (the data), and the score type.

Scoring rules, for both instruments:
- each item scores 0-3 (LOINC answers LA6568-5 .. LA6571-9); the total is their sum;
- severity bands: PHQ-9 0-4 minimal, 5-9 mild, 10-14 moderate, 15-19 moderately severe,
  20-27 severe; GAD-7 0-4 minimal, 5-9 mild, 10-14 moderate, 15-21 severe;
- missing items: at most `max_missing` (1) may be unanswered; the total is then prorated,
  round-half-up(sum x items / answered), and marked prorated. PHQ-9 item 9 (self-harm) is never
  prorated: a response without it is refused, because a prorated total would hide the one
  answer a clinician must see. More missing items: QuestionnaireError, never a guessed total;
- PHQ-9 item 9 above 0 raises the self-harm flag whatever the total;
- the difficulty question (69722-7) is kept but not scored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from importlib import resources
from typing import Any

__all__ = [
    "Answer",
    "Band",
    "Instrument",
    "Item",
    "ItemScore",
    "ScreeningScore",
    "answer_by_code",
    "answer_by_value",
    "difficulty_code",
    "instrument",
    "instrument_for_code",
    "instruments",
    "prorate",
]


@dataclass(frozen=True)
class Answer:
    code: str
    display: str
    value: int


@dataclass(frozen=True)
class Item:
    number: int
    code: str
    display: str


@dataclass(frozen=True)
class Band:
    low: int
    high: int
    code: str
    text: str


@dataclass(frozen=True)
class Coded:
    code: str
    display: str


@dataclass(frozen=True)
class Instrument:
    key: str
    name: str
    construct: str
    panel: Coded
    total: Coded
    items: tuple[Item, ...]
    safety_item: str | None
    max_missing: int
    bands: tuple[Band, ...]

    @property
    def max_total(self) -> int:
        return 3 * len(self.items)

    def item(self, code: str) -> Item | None:
        return next((i for i in self.items if i.code == code), None)

    def band(self, total: int) -> Band:
        for band in self.bands:
            if band.low <= total <= band.high:
                return band
        raise ValueError(f"{self.name} total {total} is outside 0-{self.max_total}")


@dataclass(frozen=True)
class ItemScore:
    """One item's answer; `value` None when the item was not answered."""

    item: Item
    value: int | None


@dataclass(frozen=True)
class ScreeningScore:
    """A scored PHQ-9 or GAD-7, from a QuestionnaireResponse or a total Observation.

    `items` is empty when the score came from a total Observation. `self_harm` is True/False
    for a PHQ-9 scored from its items, None when unknown (a total only, or GAD-7).
    `source` is the reference of what it was scored from ("QuestionnaireResponse/1"), when
    that resource has an id. `difficulty` is the 69722-7 answer coding, if any.
    """

    instrument: Instrument
    total: int
    band: Band
    items: tuple[ItemScore, ...] = ()
    prorated: bool = False
    self_harm: bool | None = None
    subject: dict[str, Any] | None = None
    encounter: dict[str, Any] | None = None
    effective: str | None = None
    performer: tuple[dict[str, Any], ...] = ()
    source: str | None = None
    difficulty: dict[str, Any] | None = None

    @property
    def answered(self) -> int:
        return sum(1 for i in self.items if i.value is not None)


@cache
def _data() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("instruments.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


@cache
def instruments() -> tuple[Instrument, ...]:
    out = []
    for raw in _data()["instruments"]:
        out.append(
            Instrument(
                key=raw["key"],
                name=raw["name"],
                construct=raw["construct"],
                panel=Coded(**raw["panel"]),
                total=Coded(**raw["total"]),
                items=tuple(Item(**i) for i in raw["items"]),
                safety_item=raw["safety_item"],
                max_missing=raw["max_missing"],
                bands=tuple(Band(b["min"], b["max"], b["code"], b["text"]) for b in raw["bands"]),
            )
        )
    return tuple(out)


def instrument(key: str) -> Instrument:
    """ "phq-9" or "gad-7"."""
    for inst in instruments():
        if inst.key == key:
            return inst
    raise KeyError(key)


def instrument_for_code(code: str) -> tuple[Instrument, str] | None:
    """Which instrument a LOINC code belongs to, and as what: "panel", "total" or "item"."""
    for inst in instruments():
        if code == inst.panel.code:
            return inst, "panel"
        if code == inst.total.code:
            return inst, "total"
        if inst.item(code) is not None:
            return inst, "item"
    return None


@cache
def _answers() -> tuple[Answer, ...]:
    return tuple(Answer(**a) for a in _data()["answers"])


def answer_by_code(code: str) -> Answer | None:
    return next((a for a in _answers() if a.code == code), None)


def answer_by_value(value: int) -> Answer:
    return next(a for a in _answers() if a.value == value)


def difficulty_code() -> str:
    code: str = _data()["difficulty"]["code"]
    return code


def prorate(total: int, items: int, answered: int) -> int:
    """round-half-up(total x items / answered), e.g. 10 over 8 of 9 items -> 11."""
    exact = Decimal(total) * items / answered
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))
