"""Baselines fit, predict the label set and report on the same split as the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inference_server.baselines import esconv_in_domain, main, run, score, tfidf_baseline
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


def _esconv_dialog(suggestion: str, other: str) -> dict[str, object]:
    return {
        "dialog": [
            {"speaker": "usr", "text": "I have been sleeping badly."},
            {"speaker": "sys", "text": other, "strategy": "Reflection of feelings"},
            {"speaker": "usr", "text": "Yes, it is hard."},
            {"speaker": "sys", "text": suggestion, "strategy": "Providing Suggestions"},
            {"speaker": "usr", "text": "I will think about it."},
        ]
    }


def test_esconv_in_domain_reference_learns_esconv_own_label(tmp_path: Path) -> None:
    suggestions = [
        "Maybe try a walk before bed.", "You could try writing your worries down.",
        "Maybe try calling a friend tonight.", "You could try a warm shower before sleep.",
        "Maybe try putting the phone away early.", "You could try a short breathing routine.",
    ]
    others = [
        "That sounds exhausting.", "It must feel lonely.", "I hear how tired you are.",
        "That sounds really difficult.", "It seems you feel stuck.", "That must be frustrating.",
    ]
    dialogs = [_esconv_dialog(s, o) for s, o in zip(suggestions, others, strict=True)]
    (tmp_path / "train.json").write_text("\n".join(json.dumps(d) for d in dialogs * 3))
    (tmp_path / "test.json").write_text("\n".join(json.dumps(d) for d in dialogs[:4]))
    report = esconv_in_domain(tmp_path, "reply")
    assert report["n"] == 8  # two supporter turns per test dialogue
    scores = report["homework_vs_none"]
    assert scores["support"] == 4
    assert scores["f1"] >= 0.75  # "try" separates the two classes it was trained on


def test_main_reports_a_missing_corpus_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--corpus", str(tmp_path / "nope"), "--cache", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot read {tmp_path / 'nope'}: no corpus here; check")
    assert len(err.splitlines()) == 1
