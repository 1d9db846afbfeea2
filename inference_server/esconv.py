"""ESConv (Liu et al., ACL 2021) as an external check of homework-vs-none detection.

Read in place from the shared data directory (never copied into the project: CC BY-NC 4.0).
Every supporter (`sys`) utterance becomes one item; its gold is "homework" when its strategy is
"Providing Suggestions". The supporter plays the therapist and the help-seeker the client. How
the neighbouring seeker turns are attached is a `Window`:

- ``reply``: the supporter turn and the seeker's reply right after it (the study's unit;
  no reply when the next utterance is the supporter's again);
- ``context``: the nearest earlier seeker turn, then the supporter turn;
- ``both``: context, supporter turn, reply (what `text.format_dialogue` keeps at most).

Consecutive seeker utterances are joined into one turn. ESConv has no follow-up sessions, so
there is no review gold.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from inference_server.text import format_dialogue

Window = Literal["reply", "context", "both"]
WINDOWS: tuple[Window, ...] = ("reply", "context", "both")
ESConvSplit = Literal["train", "valid", "test"]
ESCONV_SPLITS: tuple[ESConvSplit, ...] = ("train", "valid", "test")
SUGGESTION = "Providing Suggestions"
# Relative to the working directory (the repo root in CI and in the docs' commands).
DEFAULT_DIR = Path("../shared/data/esconv")


class ESConvError(ValueError):
    """The ESConv directory or a file in it is missing or malformed."""


@dataclass(frozen=True)
class ESConvItem:
    """One supporter utterance, ready for the classifier."""

    dialog: int
    utterance: int
    strategy: str
    turns: tuple[tuple[str, str], ...]

    @property
    def is_suggestion(self) -> bool:
        return self.strategy == SUGGESTION

    @property
    def text(self) -> str:
        return format_dialogue(self.turns)


def _seeker_run(dialog: Sequence[dict[str, Any]], start: int, step: int) -> str | None:
    """Join the consecutive seeker utterances from `start` walking by `step` (+1 or -1)."""
    parts: list[str] = []
    i = start
    while 0 <= i < len(dialog) and dialog[i].get("speaker") == "usr":
        parts.append(str(dialog[i].get("text", "")).strip())
        i += step
    if step < 0:
        parts.reverse()
    text = " ".join(p for p in parts if p)
    return text or None


def items_of_dialog(
    number: int, dialog: Sequence[dict[str, Any]], window: Window
) -> list[ESConvItem]:
    """Items for every supporter utterance of one dialogue."""
    items: list[ESConvItem] = []
    for i, utt in enumerate(dialog):
        if utt.get("speaker") != "sys" or not str(utt.get("text", "")).strip():
            continue
        turns: list[tuple[str, str]] = []
        if window in ("context", "both"):
            # The nearest earlier seeker run, skipping the supporter's own earlier utterances.
            j = i - 1
            while j >= 0 and dialog[j].get("speaker") == "sys":
                j -= 1
            before = _seeker_run(dialog, j, -1) if j >= 0 else None
            if before:
                turns.append(("client", before))
        turns.append(("therapist", str(utt["text"])))
        if window in ("reply", "both"):
            after = _seeker_run(dialog, i + 1, 1)
            if after:
                turns.append(("client", after))
        items.append(ESConvItem(number, i, str(utt.get("strategy", "")), tuple(turns)))
    return items


def read_split(directory: Path, split: ESConvSplit, window: Window = "reply") -> list[ESConvItem]:
    """All supporter utterances of one ESConv split file (`<split>.json`, JSON Lines)."""
    path = directory / f"{split}.json"
    if not path.is_file():
        raise ESConvError(
            f"no ESConv file at {path}; pass --esconv DIR (the folder with train/valid/test.json)"
        )
    items: list[ESConvItem] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                dialog = row["dialog"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ESConvError(f"{path}:{number}: not an ESConv dialogue ({exc})") from exc
            items.extend(items_of_dialog(number, dialog, window))
    return items
