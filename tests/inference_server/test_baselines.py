"""Baselines fit, predict the label set and report on the same split as the model."""

from __future__ import annotations

from pathlib import Path

from inference_server.baselines import run, score, tfidf_baseline
from inference_server.data.splits import split_examples
from inference_server.dataset import read_corpus
from inference_server.labels import LABELS

TINY = Path(__file__).resolve().parents[1] / "data" / "model" / "tiny_corpus"


def test_tfidf_baseline_fits_its_training_data() -> None:
    splits = split_examples(read_corpus(TINY))
    model = tfidf_baseline().fit(splits["train"])
    labels, reviews = model.predict([ex.text for ex in splits["train"]])
    assert set(labels) <= set(LABELS)
    # A linear model over word n-grams separates 32 short training examples almost perfectly;
    # far less would mean features and labels are misaligned.
    report = score(model, splits["train"])
    assert report["accuracy"] >= 0.9
    assert report["review"]["f1"] >= 0.8
    assert len(reviews) == len(labels)


def test_run_reports_both_baselines_on_dev_and_test(tmp_path: Path) -> None:
    results = run(TINY, cache_dir=tmp_path, esconv_dir=None)
    for name in ("tfidf_logreg", "minilm_frozen_logreg"):
        for split, n in (("dev", 6), ("test", 4)):
            report = results[name][split]
            assert report["n"] == n
            assert set(report["per_label"]) == set(LABELS)
            assert 0.0 <= report["mean_f1"] <= 1.0
        assert "esconv" not in results[name]
