"""Reading labelled JSONL (errors name the line), the conversation split, the corpus hash."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from inference_server.data.splits import split_examples, split_of
from inference_server.dataset import (
    DatasetError,
    corpus_files,
    corpus_hash,
    read_corpus,
    read_jsonl,
)
from inference_server.text import format_dialogue

TINY = Path(__file__).resolve().parents[1] / "data" / "model" / "tiny_corpus"

GOOD = {
    "id": "a-1",
    "conversation": "a",
    "turns": [
        {"speaker": "therapist", "text": "Try the breathing  each night."},
        {"speaker": "client", "text": "Okay."},
    ],
    "label": "practice",
    "review": False,
}


def write_lines(path: Path, rows: list[object]) -> Path:
    path.write_text(
        "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n",
        encoding="utf-8",
    )
    return path


def test_reads_examples_and_renders_text_like_serving(tmp_path: Path) -> None:
    context = {
        **GOOD,
        "id": "a-2",
        "turns": [{"speaker": "client", "text": "I hate mornings."}, *GOOD["turns"]],  # type: ignore[list-item]
        "review": True,
        "note": "extra keys are allowed",
    }
    examples = read_jsonl(write_lines(tmp_path / "x.jsonl", [GOOD, "", context]))
    assert [ex.id for ex in examples] == ["a-1", "a-2"]
    assert [ex.line for ex in examples] == [1, 3]
    second = examples[1]
    assert second.review is True
    assert second.label_index == 0
    assert second.therapist_text == "Try the breathing  each night."
    assert second.text == format_dialogue(
        [
            ("client", "I hate mornings."),
            ("therapist", "Try the breathing  each night."),
            ("client", "Okay."),
        ]
    )


def test_missing_id_and_conversation_default_to_file_and_line(tmp_path: Path) -> None:
    row = {k: v for k, v in GOOD.items() if k not in ("id", "conversation")}
    (ex,) = read_jsonl(write_lines(tmp_path / "eval.jsonl", [row]))
    assert ex.id == "eval-1"
    assert ex.conversation == "eval-1"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ({**GOOD, "label": "homework"}, "unknown label 'homework'"),
        ({k: v for k, v in GOOD.items() if k != "label"}, "unknown label None"),
        ({**GOOD, "review": "no"}, "'review' must be true or false"),
        ({k: v for k, v in GOOD.items() if k != "review"}, "'review' must be true or false"),
        ({**GOOD, "turns": []}, "'turns' must be a non-empty list"),
        ({**GOOD, "turns": [{"speaker": "client", "text": "hi"}]}, "no therapist turn"),
        ({**GOOD, "turns": [{"speaker": "doctor", "text": "hi"}]}, "turn 1 speaker 'doctor'"),
        ({**GOOD, "turns": [{"speaker": "therapist", "text": " "}]}, "turn 1 needs a non-empty"),
        ({**GOOD, "turns": ["therapist: hi"]}, "turn 1 must be an object"),
    ],
)
def test_errors_name_file_and_line(tmp_path: Path, bad: object, message: str) -> None:
    path = write_lines(tmp_path / "bad.jsonl", [GOOD, {**GOOD, "id": "a-2"}, bad])
    with pytest.raises(DatasetError) as info:
        read_jsonl(path)
    assert str(info.value).startswith(f"{path}:3: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_empty_file_and_missing_corpus(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DatasetError, match="no examples"):
        read_jsonl(empty)
    with pytest.raises(FileNotFoundError):
        corpus_files(tmp_path / "nowhere")
    (tmp_path / "dir").mkdir()
    with pytest.raises(DatasetError, match=r"no \*\.jsonl files"):
        corpus_files(tmp_path / "dir")


def test_duplicate_ids_across_files_are_refused(tmp_path: Path) -> None:
    write_lines(tmp_path / "a.jsonl", [GOOD])
    write_lines(tmp_path / "b.jsonl", [{**GOOD, "conversation": "b"}])
    with pytest.raises(
        DatasetError, match=r"b\.jsonl:1: duplicate id 'a-1' \(first at .*a\.jsonl:1\)"
    ):
        read_corpus(tmp_path)


def test_split_is_by_conversation_and_depends_only_on_its_id() -> None:
    examples = read_corpus(TINY)
    splits = split_examples(examples)
    assert sum(len(v) for v in splits.values()) == len(examples)
    where = {ex.conversation: name for name, exs in splits.items() for ex in exs}
    for name, exs in splits.items():
        assert all(where[ex.conversation] == name for ex in exs)
    # The documented rule, computed independently of the module.
    for conversation, name in where.items():
        bucket = int.from_bytes(hashlib.sha256(conversation.encode()).digest()[:8], "big") % 100
        assert name == ("train" if bucket < 70 else "dev" if bucket < 85 else "test")


def test_split_proportions_are_roughly_70_15_15() -> None:
    counts = Counter(split_of(f"conv-{i}") for i in range(20_000))
    assert abs(counts["train"] / 20_000 - 0.70) < 0.015
    assert abs(counts["dev"] / 20_000 - 0.15) < 0.015
    assert abs(counts["test"] / 20_000 - 0.15) < 0.015


def test_corpus_hash_pins_content_not_location(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        write_lines(folder / "x.jsonl", [GOOD])
    assert corpus_hash(corpus_files(a)) == corpus_hash(corpus_files(b))
    write_lines(b / "x.jsonl", [{**GOOD, "review": True}])
    assert corpus_hash(corpus_files(a)) != corpus_hash(corpus_files(b))
