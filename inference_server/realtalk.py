"""Real dialogue as micro-dialogues: the units of our real-talk evaluation and training set.

The dialogue itself stays in `../shared/data` (its README: read in place, never copied into the
project). What the project keeps is the labels (`data/realtalk/labels.jsonl`): one line per unit
with its id, gold label and review flag, and both labellers' raw labels. `load_labelled` joins
the two, so every unit is rebuilt from the shared files exactly as it was labelled.

A unit is a therapist turn (consecutive utterances of one speaker merged into one turn), the
client turn before it and the client's reply (LABELING.md: context turns may precede the
labelled turn). Its id is ``SOURCE:CONVERSATION:tN`` with N the merged turn's index.

Sources and what the shipped model may be trained on (`../shared/data/README.md`):
PriMock57 (CC BY 4.0) and activity-counselling (Apache-2.0) may; MIBot (CC BY-SA 4.0) and ESConv
(CC BY-NC 4.0) are for evaluation and experiments only.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference_server.dataset import DatasetError, Example
from inference_server.labels import LABELS

# Relative to the working directory (the repo root in CI and in the docs' commands).
DEFAULT_SHARED_DATA = Path("../shared/data")
LABELS_FILE = Path(__file__).resolve().parent / "data" / "realtalk" / "labels.jsonl"

# Speaker names per source: which side plays the therapist.
THERAPIST_SPEAKERS = frozenset({"clinician", "coach", "counsellor", "therapist", "sys"})
CLIENT_SPEAKERS = frozenset({"patient", "client", "usr"})


@dataclass(frozen=True)
class Source:
    name: str
    trainable: bool  # may the shipped model be trained on it (its licence)
    licence: str


SOURCES: dict[str, Source] = {
    "primock57": Source("primock57", True, "CC BY 4.0"),
    "activity-counselling": Source("activity-counselling", True, "Apache-2.0"),
    "mibot": Source("mibot", False, "CC BY-SA 4.0"),
    "esconv": Source("esconv", False, "CC BY-NC 4.0"),
}


class RealTalkError(DatasetError):
    """The shared data or the labels file is missing or does not match."""


@dataclass(frozen=True)
class Unit:
    """One therapist turn with its neighbours, ready to label or classify."""

    id: str
    source: str
    conversation: str
    turns: tuple[tuple[str, str], ...]
    position: float  # where the turn sits in its conversation, 0 (start) to 1 (end)


def merge_turns(turns: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Map speakers to therapist/client and merge consecutive turns of one speaker."""
    merged: list[tuple[str, str]] = []
    for speaker, text in turns:
        role = "therapist" if speaker in THERAPIST_SPEAKERS else "client"
        text = " ".join(str(text).split())
        if not text:
            continue
        if merged and merged[-1][0] == role:
            merged[-1] = (role, f"{merged[-1][1]} {text}")
        else:
            merged.append((role, text))
    return merged


def units_of(source: str, conversation: str, turns: Sequence[tuple[str, str]]) -> list[Unit]:
    """Every therapist turn of one conversation as a unit (client before, turn, client after)."""
    merged = merge_turns(turns)
    units: list[Unit] = []
    for i, (role, text) in enumerate(merged):
        if role != "therapist":
            continue
        window: list[tuple[str, str]] = []
        if i > 0:
            window.append(merged[i - 1])
        window.append((role, text))
        if i + 1 < len(merged):
            window.append(merged[i + 1])
        units.append(
            Unit(
                id=f"{source}:{conversation}:t{i}",
                source=source,
                conversation=f"{source}:{conversation}",
                turns=tuple(window),
                position=i / max(1, len(merged) - 1),
            )
        )
    return units


def _jsonl(path: Path) -> Iterable[dict[str, Any]]:
    if not path.is_file():
        raise RealTalkError(
            f"no dialogue file at {path}; point --shared-data at the folder that holds "
            "primock57/, activity-counselling/, mibot/ and esconv/"
        )
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise RealTalkError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc


def read_source(shared: Path, source: str) -> list[Unit]:
    """All units of one source, read in place from the shared data folder."""
    if source == "esconv":
        return _read_esconv(shared / "esconv")
    units: list[Unit] = []
    for row in _jsonl(shared / source / "dialogues.jsonl"):
        raw = row.get("turns") or []
        if source == "primock57":
            # The two speakers' tiers were merged; time order interleaves overlapping speech.
            raw = sorted(raw, key=lambda t: float(t.get("start", 0.0)))
        conversation = str(row["id"]).split(":", 1)[-1]
        units.extend(
            units_of(source, conversation, [(t["speaker"], t.get("text", "")) for t in raw])
        )
    return units


def _read_esconv(directory: Path) -> list[Unit]:
    # Only the valid and test dialogues: ESConv is for evaluation, and its train split is what
    # the in-domain baseline trains on.
    units: list[Unit] = []
    for split in ("valid", "test"):
        for number, row in enumerate(_jsonl(directory / f"{split}.json"), start=1):
            turns = [(u.get("speaker", ""), u.get("text", "")) for u in row.get("dialog", [])]
            units.extend(units_of("esconv", f"{split}{number}", turns))
    return units


def read_all(shared: Path = DEFAULT_SHARED_DATA) -> dict[str, Unit]:
    """Every unit of every source, by id."""
    return {u.id: u for source in SOURCES for u in read_source(shared, source)}


# --- the labelled set -------------------------------------------------------------------------

# Real-talk splits by conversation: [0, 60) train, [60, 80) dev, [80, 100) test. More of it goes
# to dev and test than for the written corpus: it is scarce and it is what judges the model.
REALTALK_BOUNDS = (60, 80)


def split_of(conversation: str) -> str:
    bucket = int.from_bytes(hashlib.sha256(conversation.encode("utf-8")).digest()[:8], "big") % 100
    train_below, dev_below = REALTALK_BOUNDS
    return "train" if bucket < train_below else "dev" if bucket < dev_below else "test"


@dataclass(frozen=True)
class LabelledUnit:
    unit: Unit
    label: str
    review: bool

    @property
    def split(self) -> str:
        return split_of(self.unit.conversation)

    def example(self, line: int = 0) -> Example:
        return Example(
            id=self.unit.id,
            conversation=self.unit.conversation,
            turns=self.unit.turns,
            label=self.label,
            review=self.review,
            source=self.unit.source,
            line=line,
            origin=self.unit.source,
        )


def read_labels(path: Path = LABELS_FILE) -> list[dict[str, Any]]:
    rows = list(_jsonl(path))
    for number, row in enumerate(rows, start=1):
        if row.get("label") not in LABELS or not isinstance(row.get("review"), bool):
            raise RealTalkError(f"{path}:{number}: needs a label in {LABELS} and a boolean review")
    return rows


def load_labelled(
    shared: Path = DEFAULT_SHARED_DATA, labels: Path = LABELS_FILE
) -> list[LabelledUnit]:
    """The labelled units, rebuilt from the shared dialogue."""
    units = read_all(shared)
    out: list[LabelledUnit] = []
    for row in read_labels(labels):
        unit = units.get(row["id"])
        if unit is None:
            raise RealTalkError(
                f"{labels}: unit {row['id']!r} is not in {shared}; is it the shared data the "
                "labels were made from?"
            )
        out.append(LabelledUnit(unit, row["label"], row["review"]))
    return out


def examples(
    split: str | None = None,
    sources: Iterable[str] | None = None,
    shared: Path = DEFAULT_SHARED_DATA,
    labels: Path = LABELS_FILE,
) -> list[Example]:
    """Labelled units as `Example`s, optionally one split and some sources."""
    wanted = set(sources) if sources is not None else set(SOURCES)
    return [
        lu.example(n)
        for n, lu in enumerate(load_labelled(shared, labels), start=1)
        if lu.unit.source in wanted and (split is None or lu.split == split)
    ]


def trainable_sources() -> list[str]:
    return [name for name, source in SOURCES.items() if source.trainable]


# --- choosing what to label -------------------------------------------------------------------

# Cues that a turn may set or follow up homework. Used only to over-sample candidates for
# labelling (most random turns are `none`), never as a label.
_CUES = re.compile(
    r"\b(try|tried|practi[cs]e|exercise|breath|write|wrote|diary|journal|keep track|track of|"
    r"log|record|note down|read|leaflet|website|video|look (at|into|up)|book|appointment|call|"
    r"come back|next time|next week|this week|goal|plan|would you be willing|how about|what if|"
    r"suggest|recommend|advise|make sure|cut (down|back)|quit|set a|last time|how did|"
    r"did you (manage|get|try)|were you able|how('s| has| have) .{0,30}going|since we)\b",
    re.IGNORECASE,
)

# How many units to draw per source: (cue-matching, other). Activity-counselling is taken whole.
SAMPLE_SIZES: dict[str, tuple[int, int]] = {
    "primock57": (480, 300),
    "mibot": (230, 140),
    "esconv": (230, 130),
}


def _rank(unit_id: str, seed: str) -> str:
    return hashlib.sha256(f"{seed}|{unit_id}".encode()).hexdigest()


def choose_units(units: Iterable[Unit], seed: str = "realtalk-v1") -> list[Unit]:
    """The labelling pool: every activity-counselling turn, and per other source a fixed number
    of cue-matching turns (late turns first: plans come at the end) plus other turns as hard
    and plain negatives. Deterministic for a seed."""
    by_source: dict[str, list[Unit]] = {}
    for unit in units:
        by_source.setdefault(unit.source, []).append(unit)
    chosen: list[Unit] = list(by_source.get("activity-counselling", []))
    for source, (n_cue, n_other) in SAMPLE_SIZES.items():
        pool = by_source.get(source, [])
        cue = [u for u in pool if _CUES.search(_therapist_text(u))]
        other = [u for u in pool if not _CUES.search(_therapist_text(u))]
        late = sorted((u for u in cue if u.position >= 0.6), key=lambda u: _rank(u.id, seed))
        early = sorted((u for u in cue if u.position < 0.6), key=lambda u: _rank(u.id, seed))
        picked = (late[: n_cue * 2 // 3] + early)[:n_cue]
        picked += sorted(other, key=lambda u: _rank(u.id, seed))[:n_other]
        chosen.extend(picked)
    return chosen


def _therapist_text(unit: Unit) -> str:
    return next(text for speaker, text in unit.turns if speaker == "therapist")


@dataclass(frozen=True)
class RealTalk:
    """The labelled real-talk set: where its dialogue and its labels are."""

    shared: Path = DEFAULT_SHARED_DATA
    labels: Path = LABELS_FILE

    def splits(self) -> dict[str, list[Example]]:
        out: dict[str, list[Example]] = {"train": [], "dev": [], "test": []}
        for n, unit in enumerate(load_labelled(self.shared, self.labels), start=1):
            out[unit.split].append(unit.example(n))
        return out

    def card(self, trained: bool) -> dict[str, Any]:
        """What a model card says of the set: per source its licence, whether the model
        trained on it, and its units per split."""
        counts: dict[str, dict[str, int]] = {}
        for name, examples in self.splits().items():
            for ex in examples:
                counts.setdefault(ex.source, {"train": 0, "dev": 0, "test": 0})[name] += 1
        return {
            "labels_sha256": hashlib.sha256(self.labels.read_bytes()).hexdigest(),
            "split": "sha256(conversation) % 100: <60 train, <80 dev, else test",
            "sources": {
                name: {
                    "licence": SOURCES[name].licence,
                    "trained_on": trained and SOURCES[name].trainable,
                    "units": counts.get(name, {}),
                }
                for name in SOURCES
            },
        }


def agreement(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How far the two independent passes (`a`, `b` in each labels row) agreed: per cent and
    Cohen's kappa for the label, the review flag and homework-vs-none, and how many rows
    needed adjudication."""

    def kappa(pairs: list[tuple[object, object]]) -> float:
        n = len(pairs)
        observed = sum(x == y for x, y in pairs) / n
        cats = {v for pair in pairs for v in pair}
        expected = sum(
            (sum(x == c for x, _ in pairs) / n) * (sum(y == c for _, y in pairs) / n) for c in cats
        )
        return (observed - expected) / (1 - expected) if expected < 1 else 1.0

    def report(pairs: list[tuple[object, object]]) -> dict[str, float]:
        share = sum(x == y for x, y in pairs) / len(pairs)
        return {"agreement": round(share, 4), "kappa": round(kappa(pairs), 4)}

    if not rows:
        raise RealTalkError("no labelled rows to compare")
    labels = [(r["a"]["label"], r["b"]["label"]) for r in rows]
    return {
        "units": len(rows),
        "label": report(labels),
        "homework_vs_none": report([(x != "none", y != "none") for x, y in labels]),
        "review": report([(r["a"]["review"], r["b"]["review"]) for r in rows]),
        "both": report(
            [
                ((r["a"]["label"], r["a"]["review"]), (r["b"]["label"], r["b"]["review"]))
                for r in rows
            ]
        ),
        "adjudicated": sum(bool(r.get("adjudicated")) for r in rows),
    }


# The second, targeted round: the first drew few practice, journal, learn and review units
# (real sessions rarely set them), so every unlabelled turn that mentions one of their cues
# was added to the pool.
_RARE_CUES = re.compile(
    r"\b(breath\w*|relax\w*|mindful\w*|meditat\w*|grounding|urge|visuali[sz]\w*|"
    r"affirmation\w*|technique|yoga|journal\w*|diary|write|writing|jot|log|track\w*|record\w*|"
    r"keep a|monitor\w*|list of|read|reading|book|article|leaflet|pamphlet|website|video|"
    r"podcast|app|apps|look (it |that |them )?up|research|resources|learn (about|more)|"
    r"last (time|week|session)|were you able|did you (manage|get a chance|try)|"
    r"how did .{0,40} go|since (we|our) (last|spoke)|you (said|mentioned) you|your goals?)\b",
    re.IGNORECASE,
)


def choose_rare_units(units: Iterable[Unit], labelled: set[str]) -> list[Unit]:
    """The second round's pool: unlabelled turns with a cue of a rare label or of review."""
    return sorted(
        (u for u in units if u.id not in labelled and _RARE_CUES.search(_therapist_text(u))),
        key=lambda u: _rank(u.id, "r2"),
    )
