"""Domain-adaptive pre-training (DAPT) of the encoder on unlabelled real dialogue, by TSDAE.

TSDAE (Wang, Reimers & Gurevych, 2021): the encoder reads a text with most of its words
deleted, its mean-pooled embedding is the only thing a small decoder may attend to (one
cross-attention "token"), and the decoder must rebuild the whole text. The encoder thereby
learns to pack what a turn of real talk says into the pooled vector the classifier's heads read.

What adapts is a LoRA delta on every linear layer of all the encoder's layers (lora.py), so the
artefact is small (`encoder_dapt.safetensors`, 1.3 MB at rank 8) and the bundled encoder stays
as it is. The delta is merged into the encoder's weights before fine-tuning (`train --dapt`),
and `HomeworkClassifier.load` merges it again, before the fine-tuning delta, wherever a weights
folder holds it. The decoder (a copy of the encoder as a causal LM with cross-attention) is
thrown away.

The text: every therapist turn, as the classifier's windows (windows.py), of the train-split
conversations of the licence-allowed real sources (PriMock57, activity-counselling; read in
place from the shared folder, never copied), optionally with the corpus' train split. Dev and
test conversations are left out, so that no scored conversation has been seen, even unlabelled.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from inference_server.classifier import MAX_TOKENS, encoder_path, mean_pool
from inference_server.data.splits import split_examples
from inference_server.dataset import read_corpus
from inference_server.lora import DAPT_FILE, add_lora, lora_state
from inference_server.realtalk import DEFAULT_SHARED_DATA, read_source, split_of, trainable_sources
from inference_server.windows import expand

log = logging.getLogger(__name__)

__all__ = ["DAPT_FILE", "DaptConfig", "dapt_texts", "pretrain", "save_delta"]


@dataclass(frozen=True)
class DaptConfig:
    """TSDAE settings; `max_minutes` caps the wall time (the loop stops at an epoch's or the
    budget's end, whichever comes first)."""

    seed: int = 13
    epochs: int = 3
    batch_size: int = 16
    rank: int = 8
    alpha: float = 16.0
    lr: float = 5e-4  # the encoder's LoRA
    decoder_lr: float = 2e-4
    weight_decay: float = 0.01
    deletion: float = 0.6  # share of words deleted from the encoder's input (TSDAE: 0.6)
    warmup: float = 0.05  # share of the steps with a linear warm-up
    max_minutes: float = 18.0
    # Layers of the throw-away decoder (the encoder's first ones): fewer are cheaper and leave
    # more of the rebuilding to the pooled vector.
    decoder_layers: int = 2
    with_corpus: bool = False  # also the corpus' train split (our writing)

    def __post_init__(self) -> None:
        checks = [
            (min(self.epochs, self.batch_size, self.rank) >= 1, "epochs, batch_size, rank >= 1"),
            (min(self.lr, self.decoder_lr) > 0, "lr and decoder_lr must be > 0"),
            (0 <= self.deletion < 1, "deletion must be in [0, 1)"),
            (0 <= self.warmup < 1, "warmup must be in [0, 1)"),
            (self.max_minutes > 0, "max_minutes must be > 0"),
            (1 <= self.decoder_layers <= 6, "decoder_layers must be between 1 and 6"),
        ]
        failed = [message for ok, message in checks if not ok]
        if failed:
            raise ValueError("; ".join(failed))


def dapt_texts(
    shared: Path = DEFAULT_SHARED_DATA, corpus: Path | None = None
) -> tuple[list[str], dict[str, int]]:
    """The unlabelled texts (classifier windows, deduplicated, in a fixed order) and how many
    came from each source."""
    texts: list[str] = []
    counts: dict[str, int] = {}
    for source in trainable_sources():
        units = [u for u in read_source(shared, source) if split_of(u.conversation) == "train"]
        windows = expand([u.turns for u in units]).texts
        counts[source] = len(windows)
        texts += windows
    if corpus is not None:
        train = split_examples(read_corpus(corpus))["train"]
        windows = expand([ex.turns for ex in train]).texts
        counts["corpus"] = len(windows)
        texts += windows
    return list(dict.fromkeys(texts)), counts


def delete_words(text: str, ratio: float, rng: random.Random) -> str:
    """TSDAE's noise: each word deleted with probability `ratio`, at least one kept."""
    words = text.split()
    if not words:
        return text
    kept = [w for w in words if rng.random() >= ratio]
    return " ".join(kept or [rng.choice(words)])


def _decoder(layers: int) -> Any:
    """The encoder's first `layers` layers as a causal LM with (new) cross-attention; its word
    embeddings, tied to the output layer, stay frozen (they are most of its size)."""
    from transformers import BertLMHeadModel
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]  # the new cross-attention and LM head are expected
    try:
        decoder = BertLMHeadModel.from_pretrained(
            str(encoder_path()), is_decoder=True, add_cross_attention=True, local_files_only=True
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    decoder.get_input_embeddings().weight.requires_grad_(False)
    decoder.bert.encoder.layer = nn.ModuleList(list(decoder.bert.encoder.layer)[:layers])
    decoder.config.num_hidden_layers = layers
    return decoder


def _batches(texts: Sequence[str], size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar lengths (less padding): sorted within random pools."""
    perm = list(range(len(texts)))
    rng.shuffle(perm)
    pool = size * 8
    perm = [
        i
        for start in range(0, len(perm), pool)
        for i in sorted(perm[start : start + pool], key=lambda j: len(texts[j]))
    ]
    batches = [perm[start : start + size] for start in range(0, len(perm), size)]
    rng.shuffle(batches)
    return batches


@dataclass
class DaptResult:
    state: dict[str, torch.Tensor]
    scale: float
    stats: dict[str, Any]


def pretrain(
    texts: Sequence[str],
    config: DaptConfig | None = None,
    progress: bool = True,
    on_status: Callable[[str], None] = log.info,
) -> DaptResult:
    """TSDAE on `texts`: the encoder's LoRA delta and what the run did."""
    from transformers import AutoModel, AutoTokenizer

    config = config or DaptConfig()
    if not texts:
        raise ValueError("no texts to pre-train on")
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)  # noqa: S311 (noise, not secrets)
    tokenizer = AutoTokenizer.from_pretrained(str(encoder_path()), local_files_only=True)
    encoder: Any = AutoModel.from_pretrained(str(encoder_path()), local_files_only=True)
    n_layers = int(encoder.config.num_hidden_layers)
    for param in encoder.parameters():
        param.requires_grad_(False)
    lora_params = add_lora(encoder, range(n_layers), config.rank, config.alpha, 0.0)
    decoder = _decoder(config.decoder_layers)
    decoder_params = [p for p in decoder.parameters() if p.requires_grad]
    # The softmax runs over the tokens the texts use (a few thousand of MiniLM's 30,522): the
    # targets are always among them, so the loss is exact for this text and much cheaper.
    vocab = sorted(
        {i for ids in tokenizer(list(texts), truncation=True, max_length=MAX_TOKENS)["input_ids"]
         for i in ids}
    )  # fmt: skip
    remap = torch.full((int(decoder.config.vocab_size),), -100, dtype=torch.long)
    remap[torch.tensor(vocab)] = torch.arange(len(vocab))
    head = decoder.cls.predictions
    vocab_index = torch.tensor(vocab)
    optimizer = torch.optim.AdamW(
        [
            {"params": lora_params, "lr": config.lr},
            {"params": decoder_params, "lr": config.decoder_lr},
        ],
        weight_decay=config.weight_decay,
    )
    steps_per_epoch = -(-len(texts) // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup = max(1, int(total_steps * config.warmup))

    def rate(step: int) -> float:  # linear warm-up, then linear decay to 0
        if total_steps <= warmup:
            return 1.0
        return min((step + 1) / warmup, max(0.0, (total_steps - step) / (total_steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    encoder.train()
    decoder.train()
    started = time.monotonic()
    budget = config.max_minutes * 60
    history: list[dict[str, float]] = []
    step, seen, stopped = 0, 0, False
    loss_fn = nn.CrossEntropyLoss(ignore_index=-100)
    bar = tqdm(total=total_steps, desc="TSDAE", disable=not progress)
    for epoch in range(1, config.epochs + 1):
        total, count = 0.0, 0
        for batch in _batches(texts, config.batch_size, rng):
            originals = [texts[i] for i in batch]
            noisy = [delete_words(t, config.deletion, rng) for t in originals]
            enc = tokenizer(
                noisy, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
            )
            pooled = mean_pool(encoder(**enc).last_hidden_state, enc["attention_mask"])
            tgt = tokenizer(
                originals,
                padding=True,
                truncation=True,
                max_length=MAX_TOKENS,
                return_tensors="pt",
            )
            hidden = decoder.bert(
                input_ids=tgt["input_ids"],
                attention_mask=tgt["attention_mask"],
                encoder_hidden_states=pooled.unsqueeze(1),
                encoder_attention_mask=torch.ones(len(batch), 1, dtype=torch.long),
            ).last_hidden_state
            # Next-token prediction at every real position, over the texts' own vocabulary.
            keep = tgt["attention_mask"][:, 1:].bool()
            h = head.transform(hidden[:, :-1][keep])
            logits = h @ head.decoder.weight[vocab_index].T + head.decoder.bias[vocab_index]
            loss = loss_fn(logits, remap[tgt["input_ids"][:, 1:][keep]])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            seen += len(batch)
            total += float(loss.detach()) * len(batch)
            count += len(batch)
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            if time.monotonic() - started > budget:
                stopped = True
                break
        history.append({"epoch": epoch, "loss": total / max(1, count), "texts": count})
        on_status(f"TSDAE epoch {epoch}: mean loss {history[-1]['loss']:.4f} on {count} texts")
        if stopped:
            on_status(f"TSDAE: the {config.max_minutes:g}-minute budget is spent; stopping")
            break
    bar.close()
    state, scale = lora_state(encoder)
    stats = {
        "method": "tsdae",
        "config": asdict(config),
        "texts": len(texts),
        "vocabulary": len(vocab),
        "steps": step,
        "texts_seen": seen,
        "history": history,
        "stopped_by_budget": stopped,
        "seconds": round(time.monotonic() - started, 1),
        "torch": torch.__version__,
    }
    return DaptResult(state, scale, stats)


def save_delta(result: DaptResult, path: Path, sources: dict[str, int]) -> None:
    """Write the delta with its scale and provenance (as safetensors metadata)."""
    import json

    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "scale": repr(result.scale),
        "stats": json.dumps(result.stats),
        "sources": json.dumps(sources),
    }
    save_file(result.state, str(path), metadata=metadata)


def delta_hash(path: Path | None) -> str:
    """sha256 of a delta file ("" for none): caches and cards name the exact adapted encoder."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path is not None else ""
