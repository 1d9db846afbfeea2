"""Long turns as windows: every word covered, nothing cut, the strongest window wins."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference_server.labels import LABELS
from inference_server.windows import (
    TURN_WORDS,
    dialogue_windows,
    expand,
    normalise,
    reduce,
    turn_spans,
)


def _words(turn: str, spans: list[tuple[int, int]]) -> set[int]:
    """Indices of the words of `turn` that the spans cover."""
    starts = []
    pos = 0
    for word in turn.split():
        pos = turn.index(word, pos)
        starts.append(pos)
        pos += len(word)
    return {k for k, s in enumerate(starts) for a, b in spans if a <= s < b}


def test_a_short_turn_is_one_window_with_its_neighbours() -> None:
    windows = dialogue_windows(
        [
            ("client", "I slept badly."),
            ("therapist", "Try the breathing tonight."),
            ("client", "OK"),
        ]
    )
    assert [w.text for w in windows] == [
        "client: I slept badly. | therapist: Try the breathing tonight. | client: OK"
    ]
    assert (windows[0].start, windows[0].end) == (0, len("Try the breathing tonight."))


def test_a_long_turn_is_covered_by_overlapping_windows_of_whole_sentences() -> None:
    sentences = [f"This is sentence number {i} of a long written message." for i in range(30)]
    turn = " ".join(sentences)
    spans = turn_spans(turn)
    assert len(spans) > 3
    assert _words(turn, spans) == set(range(len(turn.split())))
    for a, b in spans:
        assert len(turn[a:b].split()) <= TURN_WORDS
        assert turn[a:b].endswith(".")  # whole sentences
    # Consecutive windows overlap, so a task that spans a boundary is whole in one of them.
    assert all(spans[k + 1][0] < spans[k][1] for k in range(len(spans) - 1))


def test_the_fifth_sentence_task_is_inside_a_window_whole() -> None:
    filler = "We talked about how the week went and what felt hard at work. " * 6
    task = "Before we meet again, write down each worrying thought in the notebook."
    turn = normalise(filler + task + " " + filler)
    windows = dialogue_windows([("therapist", turn)])
    assert any(task in w.text for w in windows)
    assert all(len(w.text.split()) <= TURN_WORDS + 2 for w in windows)


def test_unpunctuated_speech_is_cut_into_word_runs() -> None:
    turn = " ".join(f"word{i}" for i in range(200))
    spans = turn_spans(turn)
    assert _words(turn, spans) == set(range(200))
    assert max(len(turn[a:b].split()) for a, b in spans) <= TURN_WORDS


def test_neighbours_are_trimmed_never_the_therapist_turn() -> None:
    long_client = " ".join(f"c{i}" for i in range(100))
    windows = dialogue_windows(
        [("client", long_client), ("therapist", "Keep the log."), ("client", long_client)]
    )
    (window,) = windows
    assert "Keep the log." in window.text
    assert "c99" in window.text.split("|")[0]  # the end of the turn before
    assert "c0 " in window.text.split("|")[2]  # the start of the reply
    assert len(window.text.split()) < 50


def test_a_dialogue_without_a_therapist_turn_is_refused() -> None:
    with pytest.raises(ValueError, match="therapist turn"):
        dialogue_windows([("client", "hello")])


def test_reduce_takes_the_window_most_likely_to_set_homework() -> None:
    turn = " ".join(f"Sentence {i} is here to fill up the turn with words." for i in range(25))
    expanded = expand([[("therapist", "Hello.")], [("therapist", turn)]])
    n = len(expanded.windows)
    assert n > 2 and expanded.owner.tolist()[0] == 0
    probs = np.tile(np.array([0.0, 0.0, 0.0, 0.0, 1.0], np.float32), (n, 1))
    probs[2] = [0.1, 0.7, 0.1, 0.0, 0.1]  # the second dialogue's second window sets homework
    review = np.zeros(n, np.float32)
    review[n - 1] = 0.9
    out = reduce(expanded, probs, review)
    assert out.label_window.tolist() == [0, 2]
    assert LABELS[int(out.label_probs[1].argmax())] == "take_action"
    assert out.review_window.tolist()[1] == n - 1
    assert out.review_probs.tolist() == pytest.approx([0.0, 0.9])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=300))
def test_windows_cover_every_word_of_any_turn(words: list[str]) -> None:
    turn = normalise(" ".join(words))
    if not turn:
        return
    spans = turn_spans(turn)
    assert _words(turn, spans) == set(range(len(turn.split())))
    assert all(len(turn[a:b].split()) <= TURN_WORDS for a, b in spans)
