"""Long turns as overlapping windows, so the labelled turn is never cut to fit the encoder.

The encoder reads 128 tokens. A micro-dialogue whose therapist turn fits is one window: the
turn whole, with the end of the client turn before it and the start of the reply (trimmed to
what fits, never the therapist's words). A longer turn is covered by windows of whole sentences
(or word runs, for unpunctuated speech) that overlap by about half, each with the same trimmed
neighbours. A micro-dialogue is then scored by its strongest window (`reduce`): the window most
likely to set homework gives the label, the one most likely to review gives the review flag, and
each window's character span in the turn says which sentence the evidence is.

Everything here is pure: callers expand texts, run the model on them however they do (in
process, Triton, int8), and reduce the probabilities.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from inference_server.labels import LABELS, NONE_LABEL
from inference_server.text import render

# Budgets in words (MiniLM's WordPiece makes ~1.3 tokens a word in conversational English):
# 60 + 12 + 20 words and the role tags stay under the 128-token limit.
TURN_WORDS = 60
CONTEXT_WORDS = 12
REPLY_WORDS = 20

_SENTENCE_ENDS = frozenset(".!?…")
NONE_INDEX = LABELS.index(NONE_LABEL)


@dataclass(frozen=True)
class Window:
    """One encoder input: `text`, and the [start, end) characters of the therapist turn (as
    `normalise` leaves it) that it covers."""

    text: str
    start: int
    end: int


def normalise(text: str) -> str:
    """White space folded, as every rendering of a turn has it."""
    return " ".join(text.split())


def _head(text: str, words: int) -> str:
    parts = text.split()
    return " ".join(parts[:words]) + (" …" if len(parts) > words else "")


def _tail(text: str, words: int) -> str:
    parts = text.split()
    return ("… " if len(parts) > words else "") + " ".join(parts[-words:])


def _pieces(turn: str, budget: int) -> list[tuple[int, int]]:
    """Sentence spans of `turn`; a sentence over `budget` words is cut into runs of half that
    (unpunctuated speech is one long "sentence")."""
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", turn)]
    spans: list[tuple[int, int]] = []
    sentence: list[tuple[int, int]] = []
    for k, word in enumerate(words):
        sentence.append(word)
        if turn[word[1] - 1] in _SENTENCE_ENDS or k == len(words) - 1:
            run = len(sentence) if len(sentence) <= budget else max(1, budget // 2)
            for first in range(0, len(sentence), run):
                chunk = sentence[first : first + run]
                spans.append((chunk[0][0], chunk[-1][1]))
            sentence = []
    return spans


def turn_spans(turn: str, budget: int = TURN_WORDS) -> list[tuple[int, int]]:
    """[start, end) spans of `turn` (normalised), each at most `budget` words, overlapping by
    about half, together covering every word. One span for a turn that fits."""
    n_words = len(turn.split())
    if n_words <= budget:
        return [(0, len(turn))]
    pieces = _pieces(turn, budget)
    counts = [len(turn[s:e].split()) for s, e in pieces]
    spans: list[tuple[int, int]] = []
    first = 0
    while first < len(pieces):
        last, words = first, counts[first]
        while last + 1 < len(pieces) and words + counts[last + 1] <= budget:
            last += 1
            words += counts[last]
        spans.append((pieces[first][0], pieces[last][1]))
        if last == len(pieces) - 1:
            break
        # Start the next window half way through this one (at least one piece on).
        half, covered, nxt = words / 2, 0, first
        while nxt < last and covered + counts[nxt] <= half:
            covered += counts[nxt]
            nxt += 1
        first = max(first + 1, nxt)
    return spans


def dialogue_windows(turns: Sequence[tuple[str, str]]) -> list[Window]:
    """The windows of one micro-dialogue ((role, text) pairs in spoken order; the last
    therapist turn is the labelled one)."""
    last = max((i for i, (role, _) in enumerate(turns) if role == "therapist"), default=None)
    if last is None:
        raise ValueError("a micro-dialogue needs a therapist turn")
    turn = normalise(turns[last][1])
    before = normalise(turns[last - 1][1]) if last > 0 else ""
    before_role = turns[last - 1][0] if last > 0 else ""
    after = normalise(turns[last + 1][1]) if last + 1 < len(turns) else ""
    after_role = turns[last + 1][0] if last + 1 < len(turns) else ""
    windows: list[Window] = []
    for start, end in turn_spans(turn):
        parts: list[tuple[str, str]] = []
        if before:
            parts.append((before_role, _tail(before, CONTEXT_WORDS)))
        prefix = "… " if start > 0 else ""
        suffix = " …" if end < len(turn) else ""
        parts.append(("therapist", prefix + turn[start:end] + suffix))
        if after:
            parts.append((after_role, _head(after, REPLY_WORDS)))
        windows.append(Window(render(parts), start, end))
    return windows


@dataclass(frozen=True)
class Expanded:
    """The windows of many micro-dialogues, flattened for one model call."""

    windows: list[Window]
    owner: npt.NDArray[np.int64]  # owner[k]: which micro-dialogue window k belongs to
    count: int

    @property
    def texts(self) -> list[str]:
        return [w.text for w in self.windows]


def expand(dialogues: Sequence[Sequence[tuple[str, str]]]) -> Expanded:
    windows: list[Window] = []
    owner: list[int] = []
    for i, turns in enumerate(dialogues):
        mine = dialogue_windows(turns)
        windows.extend(mine)
        owner.extend([i] * len(mine))
    return Expanded(windows, np.asarray(owner, dtype=np.int64), len(dialogues))


@dataclass(frozen=True)
class Reduced:
    """Per micro-dialogue: label probabilities and review probability of its strongest
    windows, and which window each came from (an index into `Expanded.windows`)."""

    label_probs: npt.NDArray[np.float32]
    review_probs: npt.NDArray[np.float32]
    label_window: npt.NDArray[np.int64]
    review_window: npt.NDArray[np.int64]


def reduce(
    expanded: Expanded,
    label_probs: npt.NDArray[np.float32],
    review_probs: npt.NDArray[np.float32],
) -> Reduced:
    """Strongest window per micro-dialogue: for the label, the window with the highest
    probability of homework (1 - P(none)); for review, the highest review probability."""
    n = expanded.count
    if len(label_probs) != len(expanded.windows):
        raise ValueError(f"{len(label_probs)} predictions for {len(expanded.windows)} windows")
    homework = 1.0 - label_probs[:, NONE_INDEX]
    label_window = np.full(n, -1, dtype=np.int64)
    review_window = np.full(n, -1, dtype=np.int64)
    for k, i in enumerate(expanded.owner):
        if label_window[i] < 0 or homework[k] > homework[label_window[i]]:
            label_window[i] = k
        if review_window[i] < 0 or review_probs[k] > review_probs[review_window[i]]:
            review_window[i] = k
    return Reduced(
        label_probs[label_window].astype(np.float32),
        review_probs[review_window].astype(np.float32),
        label_window,
        review_window,
    )
