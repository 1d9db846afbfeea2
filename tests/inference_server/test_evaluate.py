"""The metrics agree with scikit-learn's on random label sequences, edge cases included."""

from __future__ import annotations

import random

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from inference_server.evaluate import binary_scores, full_report, headline, label_scores
from inference_server.labels import LABELS


@pytest.mark.parametrize("seed", range(5))
def test_label_scores_match_sklearn(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(5, 80)
    # Skewed and sometimes missing labels, as small splits are.
    weights = [rng.random() for _ in LABELS]
    gold = rng.choices(LABELS, weights, k=n)
    pred = [g if rng.random() < 0.6 else rng.choice(LABELS) for g in gold]
    report = label_scores(gold, pred)
    p, r, f, s = precision_recall_fscore_support(gold, pred, labels=list(LABELS), zero_division=0)
    for i, label in enumerate(LABELS):
        got = report["per_label"][label]
        assert got["precision"] == pytest.approx(p[i], abs=1e-12)
        assert got["recall"] == pytest.approx(r[i], abs=1e-12)
        assert got["f1"] == pytest.approx(f[i], abs=1e-12)
        assert got["support"] == s[i]
    assert report["mean_f1"] == pytest.approx(float(np.mean(f)), abs=1e-12)
    assert (
        report["confusion"]["rows_gold_cols_predicted"]
        == confusion_matrix(gold, pred, labels=list(LABELS)).tolist()
    )
    assert report["accuracy"] == pytest.approx(sum(map(str.__eq__, gold, pred)) / n)
    hw = precision_recall_fscore_support(
        [g != "none" for g in gold], [q != "none" for q in pred], average="binary", zero_division=0
    )
    assert report["homework_vs_none"]["f1"] == pytest.approx(hw[2], abs=1e-12)


def test_binary_scores_counts_and_zero_division() -> None:
    scores = binary_scores([True, True, False, False], [True, False, True, False])
    assert (scores["tp"], scores["fp"], scores["fn"], scores["support"]) == (1, 1, 1, 2)
    assert scores["f1"] == pytest.approx(0.5)
    none = binary_scores([False, False], [False, False])
    assert none["f1"] == 0.0 and none["precision"] == 0.0


def test_perfect_and_absent_labels() -> None:
    gold = ["practice", "none", "none"]
    report = label_scores(gold, gold)
    assert report["per_label"]["practice"]["f1"] == 1.0
    # Labels with no gold and no prediction score 0 and pull the mean down (as in sklearn).
    assert report["per_label"]["learn"]["f1"] == 0.0
    assert report["mean_f1"] == pytest.approx(2 / 5)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="2 gold labels but 1"):
        label_scores(["none", "none"], ["none"])
    with pytest.raises(ValueError, match="unknown labels"):
        label_scores(["none"], ["homework"])


def test_full_report_and_headline() -> None:
    report = full_report(["journal", "none"], ["journal", "learn"], [True, False], [True, True])
    assert report["review"]["precision"] == 0.5
    line = headline(report)
    assert set(line) == {"mean_f1", *LABELS, "homework_f1", "review_f1"}
