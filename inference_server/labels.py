"""The label set, in the order of the model's output columns. Changing it changes the weights."""

from __future__ import annotations

LABELS: tuple[str, ...] = ("practice", "take_action", "journal", "learn", "none")
NONE_LABEL = "none"
HOMEWORK_LABELS: tuple[str, ...] = tuple(label for label in LABELS if label != NONE_LABEL)
