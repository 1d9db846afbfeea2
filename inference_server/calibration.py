"""Calibrated confidence: temperature scaling (Guo et al. 2017) for the label, a temperature or
Platt scaling for review, expected calibration error and reliability tables.

The five-way label softmax gets one temperature, fitted on dev by minimising the negative
log-likelihood over a fine log-spaced grid (deterministic, no optimiser state). The review
sigmoid gets a temperature the same way, or a scale and a bias (Platt 1999: a one-feature
logistic regression on its logit; `TrainConfig.review_calibration`): a temperature only
stretches the logit, and the review head comes out of training shifted, too ready to say
review in its middle range, which no stretch fixes (docs/model.md, "Calibrated confidence").
Both are linear in the logit, so training folds them into the heads' last layers and every
serving path, in process, int8 or Triton, gives calibrated probabilities unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

# Temperatures tried: 0.2 to 20, log-spaced.
_GRID = np.exp(np.linspace(np.log(0.2), np.log(20.0), 401))
BINS = 10


def _log_softmax(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    z = z - z.max(axis=1, keepdims=True)
    return np.asarray(z - np.log(np.exp(z).sum(axis=1, keepdims=True)), dtype=np.float64)


def label_nll(logits: npt.NDArray[Any], targets: Sequence[int], temperature: float) -> float:
    z = np.asarray(logits, dtype=np.float64) / temperature
    return float(-_log_softmax(z)[np.arange(len(z)), np.asarray(targets)].mean())


def fit_label_temperature(logits: npt.NDArray[Any], targets: Sequence[int]) -> float:
    if len(targets) == 0:
        return 1.0
    return float(min(_GRID, key=lambda t: label_nll(logits, targets, float(t))))


def review_nll(logits: npt.NDArray[Any], targets: Sequence[bool], temperature: float) -> float:
    z = np.asarray(logits, dtype=np.float64) / temperature
    y = np.asarray(targets, dtype=np.float64)
    # log(1 + e^z) - y z, computed stably.
    return float((np.logaddexp(0.0, z) - y * z).mean())


def fit_review_temperature(logits: npt.NDArray[Any], targets: Sequence[bool]) -> float:
    if len(targets) == 0:
        return 1.0
    return float(min(_GRID, key=lambda t: review_nll(logits, targets, float(t))))


def fit_review_platt(logits: npt.NDArray[Any], targets: Sequence[bool]) -> tuple[float, float]:
    """Scale and bias of the calibrated review logit, `scale * z + bias`, by maximum likelihood
    (scikit-learn's logistic regression, unpenalised). Dev with one class only leaves the logit
    as it is."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(targets, dtype=bool)
    if y.all() or not y.any():
        return 1.0, 0.0
    z = np.asarray(logits, dtype=np.float64).reshape(-1, 1)
    fit = LogisticRegression(C=np.inf).fit(z, y)
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])


def reliability(
    confidence: npt.NDArray[Any], correct: npt.NDArray[Any], bins: int = BINS
) -> list[dict[str, float]]:
    """Equal-width confidence bins: count, mean confidence and accuracy in each (empty bins
    left out)."""
    conf = np.asarray(confidence, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    rows: list[dict[str, float]] = []
    for b in range(bins):
        inside = which == b
        if inside.any():
            rows.append(
                {
                    "from": round(float(edges[b]), 2),
                    "to": round(float(edges[b + 1]), 2),
                    "n": int(inside.sum()),
                    "confidence": float(conf[inside].mean()),
                    "accuracy": float(hit[inside].mean()),
                }
            )
    return rows


def ece(confidence: npt.NDArray[Any], correct: npt.NDArray[Any], bins: int = BINS) -> float:
    """Expected calibration error: bin-weighted |accuracy - confidence|."""
    rows = reliability(confidence, correct, bins)
    total = sum(r["n"] for r in rows)
    if not total:
        return 0.0
    return float(sum(r["n"] * abs(r["accuracy"] - r["confidence"]) for r in rows) / total)


def label_calibration(
    label_probs: npt.NDArray[Any], gold: Sequence[int], bins: int = BINS
) -> dict[str, Any]:
    """ECE and reliability table of the top label's probability (is the argmax right?)."""
    probs = np.asarray(label_probs, dtype=np.float64)
    top = probs.argmax(axis=1)
    correct = top == np.asarray(gold)
    conf = probs.max(axis=1)
    return {"ece": ece(conf, correct, bins), "table": reliability(conf, correct, bins)}


def review_calibration(
    review_probs: npt.NDArray[Any], gold: Sequence[bool], bins: int = BINS
) -> dict[str, Any]:
    """ECE and reliability table of P(review): in each bin, the share that are reviews."""
    probs = np.asarray(review_probs, dtype=np.float64)
    positive = np.asarray(gold, dtype=np.float64)
    return {"ece": ece(probs, positive, bins), "table": reliability(probs, positive, bins)}
