"""The one place where probabilities become decisions: the operating point.

The model gives calibrated probabilities (see calibration.py): five label probabilities and a
review probability per micro-dialogue. An `OperatingPoint` turns them into a label and a review
flag:

- homework is called when P(homework) = 1 - P(none) reaches `homework`; the label is then the
  most probable of the four homework labels, otherwise `none`;
- review is flagged when P(review) reaches `review`.

Training picks the points on the real-talk dev split and records them in the model card
(`operating_points`): ``balanced`` maximises F1 (the card's default, where scores are
reported), ``precision`` is the most sensitive point whose dev precision reaches
`PRECISION_TARGET` (for deployments that would rather miss a task than write a wrong one into
the chart; the service's default, fhir_adapter/settings.py). A deployment picks one by name or sets
its own thresholds (`model.operating_point`, `model.homework_threshold`,
`model.review_threshold`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from inference_server.labels import LABELS, NONE_LABEL

NONE_INDEX = LABELS.index(NONE_LABEL)
DEFAULT_POINT = "balanced"
PRECISION_TARGET = 0.9


@dataclass(frozen=True)
class OperatingPoint:
    """Decision thresholds on calibrated probabilities, each in (0, 1]."""

    homework: float = 0.5
    review: float = 0.5

    def __post_init__(self) -> None:
        for name, value in (("homework", self.homework), ("review", self.review)):
            if not 0.0 < value <= 1.0:
                raise ValueError(f"the {name} threshold must be in (0, 1], not {value}")

    def as_json(self) -> dict[str, float]:
        return {k: round(v, 6) for k, v in asdict(self).items()}


def labels(label_probs: npt.NDArray[np.float32], point: OperatingPoint) -> list[str]:
    """Label per row: the best homework label where P(homework) >= the threshold, else none."""
    if len(label_probs) == 0:
        return []
    homework = 1.0 - label_probs[:, NONE_INDEX]
    masked = label_probs.copy()
    masked[:, NONE_INDEX] = -1.0
    best = masked.argmax(axis=1)
    return [
        LABELS[int(b)] if h >= point.homework else NONE_LABEL
        for b, h in zip(best, homework, strict=True)
    ]


def reviews(review_probs: npt.NDArray[np.float32], point: OperatingPoint) -> list[bool]:
    return [bool(p >= point.review) for p in review_probs]


def from_card(card: Mapping[str, Any], name: str = DEFAULT_POINT) -> OperatingPoint:
    """The named operating point of a model card; 0.5/0.5 for a card that has none (weights
    trained before operating points existed, whose review cut sits in the head's bias)."""
    points = card.get("operating_points") or {}
    if not points:
        return OperatingPoint()
    if name not in points:
        raise ValueError(
            f"the model card has no operating point {name!r}; it has {', '.join(sorted(points))}"
        )
    return OperatingPoint(**{k: float(v) for k, v in points[name].items()})


def resolve(
    card: Mapping[str, Any],
    name: str = DEFAULT_POINT,
    homework: float | None = None,
    review: float | None = None,
) -> OperatingPoint:
    """A deployment's point: the card's named one, with any threshold it sets overriding."""
    base = from_card(card, name)
    return OperatingPoint(
        homework if homework is not None else base.homework,
        review if review is not None else base.review,
    )


# --- choosing points on dev -------------------------------------------------------------------


def _candidates(scores: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    # Every distinct score is a possible cut; a grid keeps it bounded on large splits.
    grid = np.linspace(0.02, 0.98, 49)
    return np.asarray(np.unique(np.concatenate([grid, np.clip(scores, 0.02, 0.98)])), np.float64)


def _binary(gold: npt.NDArray[np.bool_], pred: npt.NDArray[np.bool_]) -> tuple[float, float, float]:
    tp = float((gold & pred).sum())
    precision = tp / pred.sum() if pred.sum() else 0.0
    recall = tp / gold.sum() if gold.sum() else 0.0
    f1 = 2 * tp / (gold.sum() + pred.sum()) if gold.sum() + pred.sum() else 0.0
    return precision, recall, f1


def choose_review(
    gold: Sequence[bool], probs: npt.NDArray[np.float32], precision_target: float | None = None
) -> float:
    """Review threshold: best dev F1, or the lowest cut whose dev precision reaches the target
    (falling back to the best F1 when none does). Ties go to the cut nearest 0.5."""
    g = np.asarray(gold, dtype=bool)
    p = np.asarray(probs, dtype=np.float64)
    best: tuple[float, float, float] = (-1.0, 0.0, 0.5)
    for cut in _candidates(p):
        precision, recall, f1 = _binary(g, p >= cut)
        if precision_target is None:
            key = (f1, -abs(cut - 0.5), cut)
        elif precision >= precision_target and recall > 0:
            key = (recall, f1, cut)
        else:
            continue
        best = max(best, key)
    if best[0] < 0:
        return choose_review(gold, probs)
    return float(best[2])


def choose_homework(
    gold: Sequence[str], probs: npt.NDArray[np.float32], precision_target: float | None = None
) -> float:
    """Homework threshold: best dev mean F1 over the five labels, or the lowest cut whose
    homework-vs-none precision reaches the target (else the best mean F1)."""
    from inference_server.evaluate import label_scores

    g = np.asarray([label != NONE_LABEL for label in gold], dtype=bool)
    homework = 1.0 - np.asarray(probs, dtype=np.float64)[:, NONE_INDEX]
    best: tuple[float, float, float] = (-1.0, 0.0, 0.5)
    for cut in _candidates(homework):
        point = OperatingPoint(homework=float(cut))
        if precision_target is None:
            mean_f1 = label_scores(list(gold), labels(probs, point))["mean_f1"]
            key = (mean_f1, -abs(cut - 0.5), cut)
        else:
            precision, recall, f1 = _binary(g, homework >= cut)
            if precision < precision_target or recall == 0:
                continue
            key = (recall, f1, cut)
        best = max(best, key)
    if best[0] < 0:
        return choose_homework(gold, probs)
    return float(best[2])


def choose_points(
    gold_labels: Sequence[str],
    gold_review: Sequence[bool],
    label_probs: npt.NDArray[np.float32],
    review_probs: npt.NDArray[np.float32],
) -> dict[str, OperatingPoint]:
    """The card's operating points, chosen on (calibrated) dev probabilities. The precision
    point never cuts below the balanced one: where the balanced cut already reaches the
    precision target, it is the precision point too."""
    balanced = OperatingPoint(
        choose_homework(gold_labels, label_probs), choose_review(gold_review, review_probs)
    )
    return {
        "balanced": balanced,
        "precision": OperatingPoint(
            max(balanced.homework, choose_homework(gold_labels, label_probs, PRECISION_TARGET)),
            max(balanced.review, choose_review(gold_review, review_probs, PRECISION_TARGET)),
        ),
    }
