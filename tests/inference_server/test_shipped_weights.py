"""The shipped weights are the ones the model card describes.

For the default model (`inference_server/weights/`) and the opt-in fast one (`weights/fast/`):
recomputes the test-split scores on the bundled corpus and compares them with the card (counts
exactly, ratios within 1e-6), and checks that the card was made from the corpus as it is now
(data hash) and that the artefacts stay small. The fast card must name the default model as
its distillation teacher and carry the settings the docs give for it.
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
from inference_server.train import (
    DEFAULT_CORPUS,
    EVAL_BATCH_SIZE,
    FAST_DIR,
    FAST_SETTINGS,
    score_examples,
)


def read_card(weights: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((weights / CARD_FILE).read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module", params=[WEIGHTS_DIR, FAST_DIR], ids=["default", "fast"])
def weights(request: pytest.FixtureRequest) -> Path:
    path: Path = request.param
    return path


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


def test_the_fast_model_is_the_documented_student_of_the_default() -> None:
    default, fast = read_card(WEIGHTS_DIR), read_card(FAST_DIR)
    assert fast["training"]["teacher"] == {"version": default["version"], "layers": 6}
    settings = dict(item.split("=") for item in FAST_SETTINGS)
    assert {k: str(fast["training"][k]) for k in settings} == settings
    assert fast["encoder"]["layers"] == 4 < default["encoder"].get("layers", 6)
    served = HomeworkClassifier.load(FAST_DIR)
    assert len(served.encoder.encoder.layer) == 4


def test_shipped_weights_live_in_the_package() -> None:
    assert Path(__file__).resolve().parents[2] / "inference_server" / "weights" == WEIGHTS_DIR
