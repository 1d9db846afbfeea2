"""Deterministic train/dev/test split by conversation.

All micro-dialogues of one conversation land in the same split, so the model is never scored on
a session whose neighbouring turns it was trained on. The split depends only on the conversation
id (sha256 -> bucket 0..99), so adding data never moves an existing conversation between splits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Literal

from inference_server.dataset import Example

Split = Literal["train", "dev", "test"]
SPLITS: tuple[Split, ...] = ("train", "dev", "test")
# Bucket bounds: [0, 70) train, [70, 85) dev, [85, 100) test.
TRAIN_BELOW = 70
DEV_BELOW = 85


def split_of(conversation: str) -> Split:
    """Which split a conversation id belongs to."""
    bucket = int.from_bytes(hashlib.sha256(conversation.encode("utf-8")).digest()[:8], "big") % 100
    if bucket < TRAIN_BELOW:
        return "train"
    if bucket < DEV_BELOW:
        return "dev"
    return "test"


def split_examples(examples: Iterable[Example]) -> dict[Split, list[Example]]:
    """Examples grouped by split, each list in input order."""
    out: dict[Split, list[Example]] = {name: [] for name in SPLITS}
    for ex in examples:
        out[split_of(ex.conversation)].append(ex)
    return out
