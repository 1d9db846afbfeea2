"""Training end to end on a tiny hand-written corpus: files, card, reproducibility, LoRA merge."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from inference_server.classifier import CARD_FILE, HEADS_FILE, WEIGHTS_DIR, HomeworkClassifier
from inference_server.data.splits import split_examples
from inference_server.dataset import DatasetError, corpus_files, corpus_hash, read_corpus
from inference_server.labels import LABELS
from inference_server.lora import LORA_FILE
from inference_server.train import (
    Features,
    Teacher,
    TopModel,
    TrainConfig,
    encode_layer,
    fit,
    load_encoder,
    predict_features,
    save_weights,
    score_examples,
    softmax,
    train,
    weights_hash,
)

TINY = Path(__file__).resolve().parents[1] / "data" / "model" / "tiny_corpus"
# Unit settings: the full 6-layer encoder, frozen, no teacher.
FAST = TrainConfig(
    epochs=4, patience=2, hidden=32, encoder_layers=6, lora_layers=0, distill_weight=0.0
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], Path]:
    root = tmp_path_factory.mktemp("train")
    cache = root / "cache"
    card = train(TINY, root / "out", FAST, cache_dir=cache, progress=False)
    return root / "out", card, cache


def test_writes_weights_and_a_complete_card(trained: tuple[Path, dict[str, Any], Path]) -> None:
    out, card, cache = trained
    assert (out / HEADS_FILE).is_file()
    assert not (out / LORA_FILE).exists()
    assert json.loads((out / CARD_FILE).read_text()) == card
    assert card["labels"] == list(LABELS)
    assert card["data"]["corpus_sha256"] == corpus_hash(corpus_files(TINY))
    assert card["data"]["examples"] == {"train": 32, "dev": 6, "test": 4}
    assert card["training"]["seed"] == FAST.seed
    assert 1 <= card["training"]["best_epoch"] <= FAST.epochs
    assert len(card["training"]["history"]) <= FAST.epochs
    assert card["encoder"]["max_tokens"] == 128
    assert set(card["metrics"]) == {"dev", "test"}
    assert card["esconv"] is None
    assert set(card["operating_points"]) == {"balanced", "precision"}
    assert card["calibration"]["label_temperature"] > 0
    assert card["artefacts"][HEADS_FILE] == (out / HEADS_FILE).stat().st_size
    assert list(cache.glob("*.npy")), "frozen embeddings are cached"


def test_card_metrics_are_those_of_the_served_weights(
    trained: tuple[Path, dict[str, Any], Path],
) -> None:
    out, card, _ = trained
    splits = split_examples(read_corpus(TINY))
    clf = HomeworkClassifier.load(out)
    for name in ("dev", "test"):
        assert score_examples(clf, splits[name]) == card["metrics"][name]


def test_same_seed_same_weights_other_seed_other_weights(
    trained: tuple[Path, dict[str, Any], Path], tmp_path: Path
) -> None:
    out, _, cache = trained
    train(TINY, tmp_path / "again", FAST, cache_dir=cache, progress=False)
    assert sha256(tmp_path / "again" / HEADS_FILE) == sha256(out / HEADS_FILE)
    other = TrainConfig(**{**FAST.__dict__, "seed": FAST.seed + 1})
    train(TINY, tmp_path / "other", other, cache_dir=cache, progress=False)
    assert sha256(tmp_path / "other" / HEADS_FILE) != sha256(out / HEADS_FILE)


def test_top_layers_on_cached_states_equal_the_full_encoder() -> None:
    encoder, tokenizer = load_encoder()
    texts = [ex.text for ex in read_corpus(TINY)[:6]]
    lower = encode_layer(encoder, tokenizer, texts, 4)
    top = encode_layer(encoder, tokenizer, texts, 6)
    model = TopModel(encoder, 4, torch.nn.Identity())  # type: ignore[arg-type]
    with torch.no_grad():
        pooled = model(*Features(states=lower).batch(range(len(texts))))
    expected = torch.stack([t.mean(0) for t in top])
    assert torch.allclose(pooled, expected, atol=1e-5)


def test_lora_delta_is_small_and_merges_into_the_served_encoder(tmp_path: Path) -> None:
    splits = split_examples(read_corpus(TINY))
    config = TrainConfig(
        epochs=2,
        patience=2,
        hidden=32,
        encoder_layers=6,
        lora_layers=1,
        lora_lr=5e-3,
        distill_weight=0.0,
    )
    fitted = fit(splits["train"], splits["dev"], config, cache_dir=None, progress=False)
    written = save_weights(fitted, tmp_path)
    assert (tmp_path / LORA_FILE) in written
    # Rank 8 on one layer: 8 x (4 x (384 + 384) + 2 x (384 + 1536)) floats, about 221 kB.
    assert (tmp_path / LORA_FILE).stat().st_size < 250_000
    (tmp_path / CARD_FILE).write_text("{}")

    served = HomeworkClassifier.load(tmp_path)
    plain, tokenizer = load_encoder()
    name = "encoder.layer.5.attention.self.query.weight"
    assert not torch.equal(served.encoder.state_dict()[name], plain.state_dict()[name])
    assert torch.equal(
        served.encoder.state_dict()["encoder.layer.4.attention.self.query.weight"],
        plain.state_dict()["encoder.layer.4.attention.self.query.weight"],
    )
    # The merged encoder gives what the trained (unmerged) adapters gave.
    texts = [ex.text for ex in splits["dev"]]
    states = encode_layer(plain, tokenizer, texts, 5)
    logits, review_logits = predict_features(fitted.model, Features(states=states))
    preds = served.predict(texts)
    # The dev calibration is folded into the served heads' last layers.
    cal = fitted.calibrated
    assert np.allclose(preds.label_probs, softmax(logits / cal.label_temperature), atol=1e-4)
    folded = 1 / (1 + np.exp(-(review_logits * cal.review_scale + cal.review_bias)))
    assert np.allclose(preds.review_probs, folded, atol=1e-4)


def test_fewer_encoder_layers_are_trained_recorded_and_served(tmp_path: Path) -> None:
    config = TrainConfig(
        epochs=1, hidden=16, encoder_layers=3, lora_layers=1, lora_lr=5e-3, distill_weight=0.0
    )
    card = train(TINY, tmp_path, config, cache_dir=None, progress=False)
    assert card["encoder"]["layers"] == 3
    served = HomeworkClassifier.load(tmp_path)
    assert len(served.encoder.encoder.layer) == 3
    assert served.encoder.config.num_hidden_layers == 3
    # The served (truncated, LoRA-merged) model is the one the card scored.
    splits = split_examples(read_corpus(TINY))
    assert score_examples(served, splits["test"]) == card["metrics"]["test"]
    # Its pooled output is the full encoder's hidden state after layer 3, not after 6.
    texts = [ex.text for ex in splits["dev"]][:3]
    plain, tokenizer = load_encoder()
    full = HomeworkClassifier(plain, tokenizer, served.heads, {})
    assert not torch.allclose(full.embed(texts), served.embed(texts), atol=1e-3)


def test_version_names_the_data_and_the_exact_weights(
    trained: tuple[Path, dict[str, Any], Path],
) -> None:
    out, card, _ = trained
    package, _, local = card["version"].partition("+")
    assert package  # the installed homework-fhir version
    data, weights = local.split(".weights.")
    assert data == "data." + corpus_hash(corpus_files(TINY))[:12]
    assert weights == weights_hash([out / HEADS_FILE])[:12]
    # Any change to a weight file changes the version.
    changed = out.parent / "changed"
    changed.mkdir()
    (changed / HEADS_FILE).write_bytes((out / HEADS_FILE).read_bytes() + b"\0")
    assert weights_hash([changed / HEADS_FILE]) != weights_hash([out / HEADS_FILE])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"encoder_layers": 7}, "encoder_layers must be between 1 and 6"),
        ({"encoder_layers": 2, "lora_layers": 3}, "lora_layers must be between 0"),
        ({"epochs": 0}, "epochs, batch_size, hidden and patience must be >= 1"),
        ({"lora_dropout": 1.0}, "dropouts must be in [0, 1)"),
        ({"distill_weight": 1.5}, "distill_weight must be in [0, 1]"),
        ({"review_calibration": "isotonic"}, "review_calibration must be one of temperature"),
    ],
)
def test_config_is_checked_when_made(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(**changes)


def test_teacher_loss_is_lowest_when_the_student_matches_the_teacher() -> None:
    probs = torch.tensor([[0.7, 0.1, 0.1, 0.05, 0.05], [0.05, 0.05, 0.1, 0.1, 0.7]])
    t = 2.0
    teacher = Teacher(torch.softmax(torch.log(probs) / t, -1), torch.tensor([0.9, 0.1]), t)
    review_logits = torch.logit(torch.tensor([0.9, 0.1]))
    matching = teacher.loss(torch.log(probs), review_logits, [0, 1])
    swapped = teacher.loss(torch.log(probs).flip(0), review_logits.flip(0), [0, 1])
    # KL is 0 for the matching labels; what is left is the soft review targets' entropy.
    entropy = -(0.9 * np.log(0.9) + 0.1 * np.log(0.1))
    assert float(matching) == pytest.approx(entropy, abs=1e-5)
    assert float(swapped) > float(matching) + 1.0


def test_distillation_changes_training_and_is_recorded(
    trained: tuple[Path, dict[str, Any], Path], tmp_path: Path
) -> None:
    out, _, cache = trained
    config = TrainConfig(**{**FAST.__dict__, "distill_weight": 0.5})
    card = train(TINY, tmp_path, config, cache_dir=cache, progress=False)
    assert card["training"]["distill_weight"] == 0.5
    assert sha256(tmp_path / HEADS_FILE) != sha256(out / HEADS_FILE)
    # By default the teacher is the shipped model, and the card names its exact weights.
    shipped = json.loads((WEIGHTS_DIR / CARD_FILE).read_text())
    assert card["training"]["teacher"] == {"version": shipped["version"], "layers": 6}
    assert json.loads((out / CARD_FILE).read_text())["training"]["teacher"] is None


def test_distillation_reads_the_teacher_it_is_given(
    trained: tuple[Path, dict[str, Any], Path], tmp_path: Path
) -> None:
    out, first, cache = trained
    config = TrainConfig(**{**FAST.__dict__, "distill_weight": 1.0})
    card = train(TINY, tmp_path / "a", config, cache_dir=cache, progress=False, teacher_dir=out)
    assert card["training"]["teacher"] == {"version": first["version"], "layers": 6}
    default = train(TINY, tmp_path / "b", config, cache_dir=cache, progress=False)
    # Pure distillation from two different teachers gives two different students.
    assert sha256(tmp_path / "a" / HEADS_FILE) != sha256(tmp_path / "b" / HEADS_FILE)
    assert default["training"]["teacher"]["version"] != first["version"]


def test_a_missing_teacher_fails_before_training(tmp_path: Path) -> None:
    config = TrainConfig(**{**FAST.__dict__, "distill_weight": 0.5})
    with pytest.raises(DatasetError, match=r"no distillation teacher at .*--set distill_weight=0"):
        train(TINY, tmp_path / "out", config, progress=False, teacher_dir=tmp_path / "none")
    assert not (tmp_path / "out").exists()


def test_weight_averaging_keeps_the_mean_of_every_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """`average_from`: what is scored and kept is the running mean of the weights after each
    optimiser step from that epoch on, not the last step's weights."""
    splits = split_examples(read_corpus(TINY))
    steps: list[dict[str, torch.Tensor]] = []
    step = torch.optim.AdamW.step

    def recording(self: torch.optim.AdamW, *args: Any, **kwargs: Any) -> Any:
        result = step(self, *args, **kwargs)
        heads = self.param_groups[0]["params"]
        steps.append({str(i): p.detach().clone() for i, p in enumerate(heads)})
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", recording)
    config = TrainConfig(
        epochs=1, batch_size=4, hidden=16, lora_layers=0, distill_weight=0.0, average_from=1
    )
    fitted = fit(splits["train"], splits["dev"], config, cache_dir=None, progress=False)
    assert len(steps) > 1
    kept = list(fitted.model.heads.parameters())
    mean = [torch.stack([s[str(i)] for s in steps]).mean(0) for i in range(len(kept))]
    assert all(torch.allclose(k, m, atol=1e-6) for k, m in zip(kept, mean, strict=True))
    assert not torch.allclose(kept[0], steps[-1]["0"], atol=1e-6)


def test_weight_averaging_setting_is_checked() -> None:
    with pytest.raises(ValueError, match="average_from must be >= 0"):
        TrainConfig(average_from=-1)


def test_the_review_loss_is_weighted_by_review_loss_weight(monkeypatch: pytest.MonkeyPatch) -> None:
    """The review term enters the loss times `review_loss_weight`: with a review loss held at
    1.0 (and no gradient, so both runs train alike), the epoch's mean loss differs by the
    weight's difference."""
    splits = split_examples(read_corpus(TINY))

    def constant(self: torch.nn.Module, logits: torch.Tensor, target: torch.Tensor) -> Any:
        return (logits * 0).sum() + 1.0

    monkeypatch.setattr(torch.nn.BCEWithLogitsLoss, "forward", constant)
    losses = {}
    for weight in (1.0, 3.0):
        config = TrainConfig(epochs=1, batch_size=4, hidden=16, lora_layers=0,
                             distill_weight=0.0, review_loss_weight=weight)  # fmt: skip
        fitted = fit(splits["train"], splits["dev"], config, cache_dir=None, progress=False)
        losses[weight] = fitted.history[0]["loss"]
    assert losses[3.0] - losses[1.0] == pytest.approx(2.0, abs=1e-4)
    with pytest.raises(ValueError, match="review_loss_weight must be > 0"):
        TrainConfig(review_loss_weight=0)
