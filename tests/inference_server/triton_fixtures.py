"""Fixtures for the serving tests: test weights, a real Triton server, micro-dialogue texts.

The server is the real `tritonserver` from the nvidia-pytriton wheel on free loopback ports,
started once per session (loading torch and the encoder takes ~10-20 s). If it cannot start,
the fixture fails with the server log's tail; nothing is skipped.

The heads are random (seeded) with a sharpened label layer, so that probabilities are peaked
and label agreement between backends is a real check, not a coin toss between near-ties; the
tests are then independent of the shipped weights, which training may still be changing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from inference_server.text import format_dialogue

if TYPE_CHECKING:  # torch and friends load lazily: this plugin is imported by every test run
    from inference_server.classifier import HomeworkClassifier
    from inference_server.triton_server import TritonServer

# Written by us: (speaker, text) turns in the shape LABELING.md describes.
DIALOGUES: list[list[tuple[str, str]]] = [
    [
        ("therapist", "This week, could you write down three thoughts each evening before bed?"),
        ("client", "Yes, I can do that in my notebook."),
    ],
    [
        ("client", "I keep avoiding the grocery store."),
        (
            "therapist",
            "What if you went once this week, just for ten minutes, and noticed the anxiety?",
        ),
        ("client", "Okay. Saturday morning might work."),
    ],
    [
        (
            "therapist",
            "Last time we talked about the breathing exercise. Did you get to practise it?",
        ),
        ("client", "A couple of times, mostly when I was already calm."),
    ],
    [
        ("therapist", "I'd like you to read the handout on sleep hygiene before next session."),
        ("client", "Sure, send it over."),
    ],
    [
        ("therapist", "How was the weekend with your sister?"),
        ("client", "Tense, but we got through dinner without a fight."),
    ],
    [
        ("therapist", "Try the five-minute grounding exercise every morning, even on good days."),
        ("client", "Every morning? Fine, I'll set an alarm."),
    ],
    [
        ("client", "I did fill in the mood log, though I skipped Thursday."),
        ("therapist", "Let's look at it together. What stood out on the days you did fill it in?"),
    ],
    [
        ("therapist", "So it sounds like the argument started before he even got home."),
        ("client", "Yeah, I was already on edge from work."),
    ],
    [
        ("therapist", "Could you call the volunteer center and ask about Saturday shifts?"),
        ("client", "I guess I could. I've been meaning to."),
    ],
    [
        ("therapist", "Did you manage the worry time we planned, fifteen minutes at six?"),
        ("client", "I forgot most days, honestly."),
    ],
    [
        ("therapist", "Keep a short journal of moments when you felt proud, even small ones."),
        ("client", "Small ones, okay. Like making breakfast?"),
    ],
    [("therapist", "Mm-hm."), ("client", "And then my boss called again.")],
]
TEXTS: list[str] = [format_dialogue(d) for d in DIALOGUES]


def write_test_weights(dest: Path, seed: int = 7) -> Path:
    """Seeded random heads for the MiniLM encoder (384-dim), label layer scaled for peaked probs."""
    import torch
    from safetensors.torch import save_file

    from inference_server.classifier import CARD_FILE, HEADS_FILE, Heads

    torch.manual_seed(seed)
    heads = Heads(384, 128)
    with torch.no_grad():
        for layer in (heads.label[3], heads.review[3]):
            assert isinstance(layer, torch.nn.Linear)
            layer.weight.mul_(100.0)
    dest.mkdir(parents=True, exist_ok=True)
    save_file(heads.state_dict(), str(dest / HEADS_FILE))
    (dest / CARD_FILE).write_text(json.dumps({"version": "test", "seed": seed}))
    return dest


@pytest.fixture(scope="session")
def test_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="session")
def classifier_fp32(test_weights: Path) -> HomeworkClassifier:
    from inference_server.classifier import HomeworkClassifier

    return HomeworkClassifier.load(test_weights)


@pytest.fixture(scope="session")
def triton_server(
    tmp_path_factory: pytest.TempPathFactory, test_weights: Path
) -> Iterator[TritonServer]:
    """A real Triton on free loopback ports serving an fp32 runtime repository."""
    from inference_server.triton_server import TritonServer, build_repository

    root = tmp_path_factory.mktemp("triton")
    # A longer queue delay than the shipped 5 ms so that requests sent together in a test
    # reliably land in one dynamic batch (the bad-request test relies on it).
    repo = build_repository(
        root / "repository", weights_dir=test_weights, precision="fp32", max_queue_delay_us=200_000
    )
    with TritonServer(repo, log_file=root / "tritonserver.log") as server:
        yield server
