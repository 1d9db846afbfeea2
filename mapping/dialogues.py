"""Utterances -> turns -> micro-dialogues, the unit the model classifies (LABELING.md).

1. Utterances of speakers with role `other` (an interpreter, a relative) are dropped: they are
   neither labelled nor a reply, and keeping them would split a therapist's question from the
   client's answer.
2. Consecutive utterances of one speaker become one `Turn` (texts joined by a space; `first`
   and `last` are the positions of its first and last fragment). So "therapist, interpreter,
   therapist" is one therapist turn.
3. Every therapist turn starts a `MicroDialogue`; its `client` is the turn right after it when
   that turn is a client's, else None (the transcript ends, or another therapist speaks next).
   Client turns are never labelled on their own.
4. The context window: with `context_turns=n`, `context` holds the n turns (either role)
   immediately before the therapist turn, in spoken order, fewer at the start of the session.
   n=0 (the default) gives no context.

`dialogue_turns` renders a micro-dialogue as the (role, text) pairs that
`inference_server.text.format_dialogue` takes; `dialogue_record` as a JSON-ready dict.
"""

from __future__ import annotations

from collections.abc import Iterable

from mapping.domain import MicroDialogue, Role, SourcePosition, Transcript, Turn, Utterance


def merge_turns(utterances: Iterable[Utterance]) -> tuple[Turn, ...]:
    """Drop `other` speakers and merge consecutive fragments of one speaker into turns."""
    turns: list[Turn] = []
    for utterance in utterances:
        if utterance.role is Role.OTHER:
            continue
        last = turns[-1] if turns else None
        if last is not None and last.speaker == utterance.speaker and last.role is utterance.role:
            turns[-1] = Turn(
                last.role,
                last.speaker,
                f"{last.text} {utterance.text}",
                last.first,
                utterance.position,
            )
        else:
            turns.append(
                Turn(
                    utterance.role,
                    utterance.speaker,
                    utterance.text,
                    utterance.position,
                    utterance.position,
                )
            )
    return tuple(turns)


def build_micro_dialogues(
    transcript: Transcript | Iterable[Utterance], context_turns: int = 0
) -> tuple[MicroDialogue, ...]:
    """The micro-dialogues of a transcript, in spoken order (see the module docstring)."""
    if context_turns < 0:
        raise ValueError(f"context_turns must be >= 0, not {context_turns}")
    utterances = transcript.utterances if isinstance(transcript, Transcript) else transcript
    turns = merge_turns(utterances)
    dialogues: list[MicroDialogue] = []
    for i, turn in enumerate(turns):
        if turn.role is not Role.THERAPIST:
            continue
        following = turns[i + 1] if i + 1 < len(turns) else None
        client = following if following is not None and following.role is Role.CLIENT else None
        context = turns[max(0, i - context_turns) : i] if context_turns else ()
        dialogues.append(MicroDialogue(len(dialogues), turn, client, tuple(context)))
    return tuple(dialogues)


def dialogue_turns(dialogue: MicroDialogue) -> list[tuple[str, str]]:
    """(role, text) pairs in spoken order: context turns, the therapist turn, the reply."""
    turns = [*dialogue.context, dialogue.therapist]
    if dialogue.client is not None:
        turns.append(dialogue.client)
    return [(turn.role.value, turn.text) for turn in turns]


def dialogue_record(dialogue: MicroDialogue) -> dict[str, object]:
    """A JSON-ready view of a micro-dialogue, as the `transcript` command prints it.

    `roles` and `speakers` run over the turns in spoken order (context first), `context` holds
    the context turns' texts, and `position` spans the therapist turn to the end of the reply:
    `index` is its first fragment, `last_index` its last one, `start_s` the first one's start and
    `end_s` the last one's end, or its start when the source has start times only (plain text).
    """
    turns = [*dialogue.context, dialogue.therapist]
    if dialogue.client is not None:
        turns.append(dialogue.client)
    end = (dialogue.client or dialogue.therapist).last
    return {
        "index": dialogue.index,
        "roles": [turn.role.value for turn in turns],
        "speakers": [turn.speaker for turn in turns],
        "therapist": dialogue.therapist.text,
        "client": dialogue.client.text if dialogue.client is not None else None,
        "context": [turn.text for turn in dialogue.context],
        "position": _span(dialogue.therapist.first, end),
    }


def _span(first: SourcePosition, last: SourcePosition) -> dict[str, object]:
    return {
        "unit": first.unit,
        "index": first.index,
        "last_index": last.index,
        "start_s": first.start_s,
        "end_s": last.end_s if last.end_s is not None else last.start_s,
    }
