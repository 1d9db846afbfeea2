"""Read labelled micro-dialogues (JSON Lines, LABELING.md format); errors name the line.

One line is one micro-dialogue:
``{"turns": [{"speaker": "therapist", "text": "..."}, ...], "label": "practice", "review": false}``
plus optional ``id``, ``conversation`` and any other keys (ignored). Every problem is reported
as a `DatasetError` whose message starts with ``FILE:LINE:`` so the writer can fix that line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from inference_server.labels import LABELS
from inference_server.text import format_dialogue

SPEAKERS = ("therapist", "client")


class DatasetError(ValueError):
    """Training input that cannot be used (a labelled file, the distillation teacher); the
    message names the file (and line) and what to do."""


@dataclass(frozen=True)
class Example:
    """One labelled micro-dialogue; `turns` are (speaker, text) pairs in spoken order."""

    id: str
    conversation: str
    turns: tuple[tuple[str, str], ...]
    label: str
    review: bool
    source: str  # the file it was read from (or the real-talk source)
    line: int
    origin: str = ""  # where the dialogue comes from: the line's `source` key, if any

    @property
    def text(self) -> str:
        """The string the encoder reads (same rendering everywhere, see `text.py`)."""
        return format_dialogue(self.turns)

    @property
    def label_index(self) -> int:
        return LABELS.index(self.label)

    @property
    def therapist_text(self) -> str:
        """The labelled (last) therapist turn."""
        return next(text for speaker, text in reversed(self.turns) if speaker == "therapist")


def _parse_turns(raw: object, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, list) or not raw:
        raise DatasetError(f"{where}: 'turns' must be a non-empty list of {{speaker, text}}")
    turns: list[tuple[str, str]] = []
    for n, turn in enumerate(raw, start=1):
        if not isinstance(turn, dict):
            raise DatasetError(f"{where}: turn {n} must be an object with 'speaker' and 'text'")
        speaker, text = turn.get("speaker"), turn.get("text")
        if speaker not in SPEAKERS:
            raise DatasetError(
                f"{where}: turn {n} speaker {speaker!r} is not one of {', '.join(SPEAKERS)}"
            )
        if not isinstance(text, str) or not text.strip():
            raise DatasetError(f"{where}: turn {n} needs a non-empty 'text' string")
        turns.append((str(speaker), text))
    if not any(speaker == "therapist" for speaker, _ in turns):
        raise DatasetError(
            f"{where}: no therapist turn; the last therapist turn is the one labelled"
        )
    return tuple(turns)


def parse_line(line: str, source: str, number: int) -> Example:
    """Parse one JSON line (1-based `number`) into an `Example`."""
    where = f"{source}:{number}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(row, dict):
        raise DatasetError(f"{where}: expected a JSON object per line")
    turns = _parse_turns(row.get("turns"), where)
    label = row.get("label")
    if label not in LABELS:
        raise DatasetError(f"{where}: unknown label {label!r}; use one of {', '.join(LABELS)}")
    review = row.get("review")
    if not isinstance(review, bool):
        raise DatasetError(f"{where}: 'review' must be true or false, got {review!r}")
    raw_id = row.get("id", f"{Path(source).stem}-{number}")
    conversation = row.get("conversation", raw_id)
    if not isinstance(raw_id, str | int) or not isinstance(conversation, str | int):
        raise DatasetError(f"{where}: 'id' and 'conversation' must be strings")
    return Example(
        id=str(raw_id),
        conversation=str(conversation),
        turns=turns,
        label=str(label),
        review=review,
        source=source,
        line=number,
        origin=str(row.get("source") or ""),
    )


def read_jsonl(path: Path) -> list[Example]:
    """All examples of one file; blank lines are skipped. Raises `DatasetError`."""
    examples: list[Example] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                examples.append(parse_line(line, str(path), number))
    if not examples:
        raise DatasetError(f"{path}: no examples in the file")
    return examples


def corpus_files(corpus: Path) -> list[Path]:
    """The JSONL files that make up a corpus (a directory, or a single file), sorted."""
    if corpus.is_file():
        return [corpus]
    if not corpus.is_dir():
        raise FileNotFoundError(2, "no corpus here", str(corpus))
    files = sorted(corpus.glob("*.jsonl"))
    if not files:
        raise DatasetError(f"{corpus}: no *.jsonl files; point --corpus at the labelled data")
    return files


def read_corpus(corpus: Path) -> list[Example]:
    """Every example of a corpus; ids must be unique across its files."""
    examples = [ex for path in corpus_files(corpus) for ex in read_jsonl(path)]
    check_unique_ids(examples)
    return examples


def check_unique_ids(examples: Iterable[Example]) -> None:
    seen: dict[str, Example] = {}
    for ex in examples:
        if ex.id in seen:
            first = seen[ex.id]
            raise DatasetError(
                f"{ex.source}:{ex.line}: duplicate id {ex.id!r} "
                f"(first at {first.source}:{first.line}); ids must be unique"
            )
        seen[ex.id] = ex


def corpus_hash(files: Sequence[Path]) -> str:
    """sha256 over the files' names and bytes, so a model card pins the exact data."""
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        digest.update(path.name.encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()
