"""The shipped weights are the ones the model card describes.

For the shipped model (`inference_server/weights/`): recomputes the test-split scores on the
bundled corpus and on the real-talk test split and compares them with the card (counts exactly,
ratios within 1e-6), checks that the card was made from the corpus as it is now (data hash),
that nothing non-commercial or share-alike was trained on, and that the artefacts stay small.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from inference_server.classifier import CARD_FILE, WEIGHTS_DIR, HomeworkClassifier
from inference_server.data.splits import split_examples
from inference_server.dataset import corpus_files, corpus_hash, read_corpus
from inference_server.labels import LABELS
from inference_server.realtalk import RealTalk
from inference_server.train import (
    DEFAULT_CORPUS,
    EVAL_BATCH_SIZE,
    score_by_source,
    score_examples,
)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def read_card(weights: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((weights / CARD_FILE).read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def weights() -> Path:
    return WEIGHTS_DIR


@pytest.fixture(scope="module")
def card(weights: Path) -> dict[str, Any]:
    return read_card(weights)


def assert_same(got: Any, want: Any, path: str = "") -> None:
    """Equal structure; ints exactly, floats within 1e-6."""
    if isinstance(want, dict):
        assert set(got) == set(want), path
        for key in want:
            assert_same(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, abs=1e-6), path
    else:
        assert got == want, path


def test_card_matches_the_bundled_corpus_and_label_set(card: dict[str, Any]) -> None:
    assert card["labels"] == list(LABELS)
    assert card["data"]["corpus_sha256"] == corpus_hash(corpus_files(DEFAULT_CORPUS)), (
        "the corpus changed since the shipped weights were trained; run `homework-fhir train`"
    )
    assert card["evaluation"]["batch_size"] == EVAL_BATCH_SIZE


def test_artefacts_are_small_and_listed(weights: Path, card: dict[str, Any]) -> None:
    for name, size in card["artefacts"].items():
        assert (weights / name).stat().st_size == size
    assert sum(p.stat().st_size for p in WEIGHTS_DIR.rglob("*") if p.is_file()) < 10 * 2**20


def test_test_split_scores_are_the_cards(weights: Path, card: dict[str, Any]) -> None:
    test = split_examples(read_corpus(DEFAULT_CORPUS))["test"]
    assert len(test) == card["data"]["examples"]["test"]
    report = score_examples(HomeworkClassifier.load(weights), test)
    assert_same(report, card["metrics"]["test"])


def test_real_talk_test_scores_are_the_cards(weights: Path, card: dict[str, Any]) -> None:
    # The real-talk units are read from ../shared/data, which CI has beside the clone.
    test = RealTalk(shared=SHARED).splits()["test"]
    report = score_by_source(HomeworkClassifier.load(weights), test)
    assert_same(report, card["realtalk_metrics"]["test"])


def test_nothing_non_commercial_or_share_alike_was_trained_on(card: dict[str, Any]) -> None:
    sources = card["data"]["realtalk"]["sources"]
    trained = {name for name, source in sources.items() if source["trained_on"]}
    assert trained == {"primock57", "activity-counselling"}
    assert not {"mibot", "esconv"} & set(card["data"]["licences"])
    assert "CC BY 4.0" in card["data"]["attribution"]


def test_shipped_weights_live_in_the_package() -> None:
    assert Path(__file__).resolve().parents[2] / "inference_server" / "weights" == WEIGHTS_DIR
