"""Which earlier homework a review turn follows up: per task, not per session.

A client set a breathing practice and a panic diary; the next session asks only "how did the
breathing go?". The breathing Task is reviewed, quoting that turn; the diary is not reviewed.

How a review turn (the therapist's words and the client's reply) is matched to the Tasks still
awaiting review:

- Each side becomes a set of content-word stems (lower case, words of four letters or more,
  the first five letters, common words of therapy talk left out). A Task's side is its quote,
  the client's reply to it and the words of its category (a `journal` Task is also "diary",
  "log", "write").
- A turn's score for a Task sums, over the stems they share, 1 / (the number of Tasks that
  stem appears in): a word every Task shares ("practice" for two practices) tells them apart
  less than a word only one has ("breathing").
- A turn reviews the Task(s) with its highest score, when that score is above zero, and every
  Task scoring at least half of it: the model often drafts one piece of homework as several
  Tasks (the instruction, then the recap), and a follow-up of it follows up all of them.
- A turn that shares nothing with any Task ("did you manage the things we agreed?") is a
  **general review**: it settles every Task that no specific turn reviewed. This is the one
  place where one turn reviews several tasks at once; the note quotes it for each of them.
- A Task no turn reviews is `not-reviewed`.

Pure and deterministic (no model call): the same turns and Tasks always give the same answer,
so a session processed again settles its Tasks the same way.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from mapping.domain import Detection
from mapping.fhir.context import EarlierTask, ReviewStatus

STEM = 5
# A Task scoring at least this share of a turn's best score is reviewed by it too.
NEAR_BEST = 0.5
# Words of any session's talk: they say nothing about which homework a turn is about.
_COMMON = frozenset(
    """the and you your yours for that this with have has had was were are how did does doing
    done went going get got make made let lets sure okay yeah yes really just also
    something anything things thing about what when where which would could should will can
    cant dont didnt its it's i'm ive we'll we're you're youre there their them they then than
    homework assignment week weeks weekend time times last next today tonight session sessions
    talk talked talking tell told said say try tried trying agree agreed manage managed much
    more some any all one two every each been being into from over back know think feel felt
    like well good great little bit lot very kind sort maybe mean right thanks thank able keep
    kept here still start started stop want need help helped came come put take took give gave
    first once twice were where while after before again other others people yourself myself
    because though even ever never always usually actually probably pretty quite""".split()  # noqa: SIM905
)
_CATEGORY_WORDS = {
    "practice": "practice practise exercise skill skills rehearse",
    "journal": "journal diary log logging write writing wrote record tracking track notes",
    "take-action": "call walk visit schedule plan plans go appointment",
    "learn": "read reading book video watch worksheet handout article podcast learn",
}


def stems(text: str) -> frozenset[str]:
    words = re.findall(r"[a-z']+", text.lower())
    return frozenset(w[:STEM] for w in words if len(w) > 3 and w not in _COMMON)


def _task_text(task: Mapping[str, Any]) -> str:
    parts = [str(task.get("description") or "")]
    for item in task.get("input") or []:
        if isinstance(item, Mapping) and isinstance(item.get("valueString"), str):
            parts.append(item["valueString"])
    for coding in (task.get("code") or {}).get("coding") or []:
        parts.append(_CATEGORY_WORDS.get(str(coding.get("code")), ""))
    return " ".join(parts)


def _turn_text(review: Detection) -> str:
    client = review.dialogue.client
    return review.dialogue.therapist.text + " " + (client.text if client is not None else "")


def match_reviews(
    tasks: Sequence[Mapping[str, Any]], reviews: Sequence[Detection]
) -> list[EarlierTask]:
    """Each Task awaiting review, with what this session's review turns did to it (see the
    module's docstring); `reviews` are the session's detections flagged as review."""
    task_terms = [stems(_task_text(t)) for t in tasks]
    spread = Counter(term for terms in task_terms for term in terms)
    settled: dict[int, Detection] = {}
    general: Detection | None = None
    # The most confident review turns first: a Task two turns follow up quotes the surer one.
    for review in sorted(reviews, key=lambda d: (-d.review_confidence, d.dialogue.index)):
        terms = stems(_turn_text(review))
        scores = [sum(1 / spread[t] for t in terms & mine) for mine in task_terms]
        best = max(scores, default=0.0)
        if best <= 0:
            general = general or review
            continue
        for i, score in enumerate(scores):
            if score >= best * NEAR_BEST:
                settled.setdefault(i, review)
    if general is not None:
        for i in range(len(tasks)):
            settled.setdefault(i, general)
    return [
        EarlierTask(task, ReviewStatus.REVIEWED, settled[i])
        if i in settled
        else EarlierTask(task, ReviewStatus.NOT_REVIEWED)
        for i, task in enumerate(tasks)
    ]
