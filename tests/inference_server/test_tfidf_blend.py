"""`bench/tfidf_blend.py` scores as `evaluate` scores: its fast scorer gives `label_scores`'
mean F1 and homework F1, and its resamples give `evaluate.bootstrap`'s intervals (so the model
row's intervals are the documented ones). The experiment itself needs the shared data and a
few minutes; it is not run here."""

from __future__ import annotations

from types import ModuleType

import numpy as np

from inference_server.evaluate import bootstrap, label_scores
from inference_server.labels import LABELS
from tests.inference_server.bench_scripts import load_bench


def _script() -> ModuleType:
    return load_bench("tfidf_blend")


def _labels(rng: np.random.Generator, n: int) -> list[str]:
    # Skewed towards none, and never `learn`: a label with no gold and no prediction scores 0.
    return [str(v) for v in rng.choice(list(LABELS[:3]) + ["none"] * 3, n)]


def test_fast_scores_match_label_scores() -> None:
    blend = _script()
    rng = np.random.default_rng(1)
    for _ in range(20):
        gold, pred = _labels(rng, 60), _labels(rng, 60)
        mean_f1, homework_f1, precision, recall = blend.fast_scores(
            blend.codes(gold), blend.codes(pred)
        )
        report = label_scores(gold, pred)
        assert abs(mean_f1 - report["mean_f1"]) < 1e-12
        assert abs(homework_f1 - report["homework_vs_none"]["f1"]) < 1e-12
        assert abs(precision - report["homework_vs_none"]["precision"]) < 1e-12
        assert abs(recall - report["homework_vs_none"]["recall"]) < 1e-12


def test_intervals_are_evaluate_bootstraps() -> None:
    blend = _script()
    rng = np.random.default_rng(2)
    gold, pred = _labels(rng, 90), _labels(rng, 90)
    conversations = [f"c{i // 3}" for i in range(90)]
    result = blend.compare(gold, {"model": pred}, conversations, {"model": "model"})["model"]
    reference = bootstrap(gold, pred, [False] * 90, [False] * 90, conversations)
    # Rounded to 3 places there, 4 here: the same draws agree to the rounding.
    assert np.allclose(result["mean_f1_ci"], reference["mean_f1"], atol=6e-4)
    assert np.allclose(result["homework_f1_ci"], reference["homework_f1"], atol=6e-4)
    assert result["delta_mean_f1_ci"] == [0.0, 0.0]
