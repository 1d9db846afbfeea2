"""How a micro-dialogue becomes the one string the encoder reads.

Training, evaluation, the in-process backend and Triton all go through `format_dialogue`, so a
micro-dialogue is encoded the same way wherever it is classified. Turns are (speaker, text)
pairs in spoken order; the last therapist turn is the one being labelled (LABELING.md).
"""

from __future__ import annotations

from collections.abc import Sequence

# Context turns before the labelled therapist turn that the model sees; more dilutes the
# signal of the turn being labelled (the study's unit is two turns).
MAX_CONTEXT_TURNS = 1


def format_dialogue(turns: Sequence[tuple[str, str]]) -> str:
    """Render turns as "therapist: ... | client: ..." keeping at most one context turn."""
    if not turns:
        raise ValueError("a micro-dialogue needs at least one turn")
    last_therapist = max(
        (i for i, (speaker, _) in enumerate(turns) if speaker == "therapist"), default=None
    )
    if last_therapist is None:
        raise ValueError("a micro-dialogue needs a therapist turn")
    start = max(0, last_therapist - MAX_CONTEXT_TURNS)
    return render(turns[start : last_therapist + 2])


def render(turns: Sequence[tuple[str, str]]) -> str:
    """ "speaker: text | speaker: text", white space folded."""
    return " | ".join(f"{speaker}: {' '.join(text.split())}" for speaker, text in turns)
