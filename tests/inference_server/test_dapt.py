"""Domain-adaptive pre-training: which texts, the TSDAE run, and the delta through training and
serving (merged at full depth before the fine-tuning delta)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from inference_server.classifier import CARD_FILE, HomeworkClassifier
from inference_server.dapt import DaptConfig, dapt_texts, delete_words, pretrain, save_delta
from inference_server.data.splits import split_examples
from inference_server.dataset import read_corpus
from inference_server.lora import DAPT_FILE, LORA_FILE, TARGETS, read_lora
from inference_server.realtalk import split_of
from inference_server.train import (
    Features,
    TrainConfig,
    encode_layer,
    fit,
    load_encoder,
    predict_features,
    save_weights,
    softmax,
)

TINY = Path(__file__).resolve().parents[1] / "data" / "model" / "tiny_corpus"


def _conversation(source: str, train: bool) -> str:
    """A conversation name of `source` that the real-talk split puts in train (or not)."""
    for n in range(1000):
        name = f"c{n}"
        if (split_of(f"{source}:{name}") == "train") == train:
            return name
    raise AssertionError("no such name")


def _write(path: Path, rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_texts_are_the_train_conversations_of_the_trainable_sources(tmp_path: Path) -> None:
    for source, therapist in (("primock57", "clinician"), ("activity-counselling", "coach")):
        rows = [
            {
                "id": f"{source}:{_conversation(source, train)}",
                "turns": [
                    {"speaker": "client", "text": "hello", "start": 0.0},
                    {"speaker": therapist, "text": f"{source} seen={train}", "start": 1.0},
                ],
            }
            for train in (True, False)
        ]
        _write(tmp_path / source / "dialogues.jsonl", rows)
    # No MIBot or ESConv files at all: they are never read.
    texts, counts = dapt_texts(tmp_path)
    assert counts == {"primock57": 1, "activity-counselling": 1}
    assert all("seen=True" in t for t in texts) and len(texts) == 2
    assert texts[0].startswith("client: hello | therapist: primock57")

    with_corpus, counts = dapt_texts(tmp_path, TINY)
    train = split_examples(read_corpus(TINY))["train"]
    assert counts["corpus"] >= len(train) > 0
    assert with_corpus[:2] == texts


def test_noise_deletes_words_but_keeps_one() -> None:
    rng = random.Random(0)
    assert delete_words("a b c", 0.0, rng) == "a b c"
    for _ in range(20):
        assert len(delete_words("one two three", 0.999, rng).split()) == 1
    kept = [len(delete_words(" ".join(["w"] * 100), 0.6, rng).split()) for _ in range(20)]
    assert 25 < np.mean(kept) < 55


@pytest.fixture(scope="module")
def delta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = [ex.text for ex in read_corpus(TINY)][:8]
    config = DaptConfig(epochs=1, batch_size=4, decoder_layers=1, lr=5e-3)
    result = pretrain(texts, config, progress=False)
    assert result.stats["steps"] == 2 and result.stats["texts"] == 8
    path = tmp_path_factory.mktemp("dapt") / "delta.safetensors"
    save_delta(result, path, {"tiny": len(texts)})
    return path


def test_the_delta_covers_every_layer_and_reads_back(delta: Path) -> None:
    state, scale, metadata = read_lora(delta)
    assert scale == 2.0
    assert len(state) == 6 * len(TARGETS) * 2
    assert json.loads(metadata["sources"]) == {"tiny": 8}
    assert json.loads(metadata["stats"])["method"] == "tsdae"
    # B starts at zero; two steps moved it.
    assert all(state[k].abs().sum() > 0 for k in state if k.endswith("lora_B"))


def test_training_on_the_adapted_encoder_ships_and_serves_it(delta: Path, tmp_path: Path) -> None:
    splits = split_examples(read_corpus(TINY))
    config = TrainConfig(
        epochs=1, patience=1, hidden=16, encoder_layers=6, lora_layers=1, distill_weight=0.0
    )
    fitted = fit(splits["train"], splits["dev"], config, cache_dir=None, progress=False, dapt=delta)
    written = save_weights(fitted, tmp_path)
    assert {tmp_path / DAPT_FILE, tmp_path / LORA_FILE} <= set(written)
    assert (tmp_path / DAPT_FILE).read_bytes() == delta.read_bytes()
    (tmp_path / CARD_FILE).write_text("{}")

    served = HomeworkClassifier.load(tmp_path)
    adapted, tokenizer = load_encoder(dapt=delta)
    plain, _ = load_encoder()
    name = "encoder.layer.0.attention.self.query.weight"
    assert torch.equal(served.encoder.state_dict()[name], adapted.state_dict()[name])
    assert not torch.equal(adapted.state_dict()[name], plain.state_dict()[name])
    # Served (both deltas merged) = trained (the adapted encoder, the adapters unmerged).
    texts = [ex.text for ex in splits["dev"]]
    states = encode_layer(adapted, tokenizer, texts, 5)
    logits, _ = predict_features(fitted.model, Features(states=states))
    expected = softmax(logits / fitted.calibrated.label_temperature)
    assert np.allclose(served.predict(texts).label_probs, expected, atol=1e-4)

    # Weights trained without it, written into the same folder, drop the stale delta.
    fitted.dapt = None
    assert tmp_path / DAPT_FILE not in save_weights(fitted, tmp_path)
    assert not (tmp_path / DAPT_FILE).exists()
