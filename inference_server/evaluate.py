"""Scores for the homework classifier: per-label P/R/F1, their mean, review F1, confusion matrix.

The headline number is the unweighted mean F1 over all five labels (`none` included), the
"overall score" of Peretz et al. 2023. A label with no gold and no predicted example scores
F1 = 0 (as scikit-learn's `zero_division=0`), so a tiny split cannot inflate the mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from inference_server.labels import LABELS, NONE_LABEL

Report = dict[str, Any]


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def binary_scores(gold: Sequence[bool], pred: Sequence[bool]) -> Report:
    """Precision, recall, F1 of the positive class, with the counts behind them."""
    g = np.asarray(gold, dtype=bool)
    p = np.asarray(pred, dtype=bool)
    if g.shape != p.shape:
        raise ValueError(f"{g.shape[0]} gold values but {p.shape[0]} predictions")
    tp, fp, fn = int((g & p).sum()), int((~g & p).sum()), int((g & ~p).sum())
    precision, recall, f1 = _prf(tp, fp, fn)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "support": int(g.sum()),
    }


def confusion(gold: Sequence[str], pred: Sequence[str]) -> list[list[int]]:
    """Counts [gold][predicted] in LABELS order."""
    index = {label: i for i, label in enumerate(LABELS)}
    matrix = np.zeros((len(LABELS), len(LABELS)), dtype=np.int64)
    for g, p in zip(gold, pred, strict=True):
        matrix[index[g], index[p]] += 1
    return [[int(v) for v in row] for row in matrix]


def label_scores(gold: Sequence[str], pred: Sequence[str]) -> Report:
    """Per-label P/R/F1/support, mean F1 over the five labels, accuracy, confusion matrix."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold labels but {len(pred)} predictions")
    unknown = sorted({*gold, *pred} - set(LABELS))
    if unknown:
        raise ValueError(f"unknown labels {unknown}; expected {', '.join(LABELS)}")
    matrix = np.array(confusion(gold, pred), dtype=np.int64)
    per_label: Report = {}
    for i, label in enumerate(LABELS):
        tp = int(matrix[i, i])
        fp = int(matrix[:, i].sum()) - tp
        fn = int(matrix[i, :].sum()) - tp
        precision, recall, f1 = _prf(tp, fp, fn)
        per_label[label] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": int(matrix[i, :].sum()),
        }
    homework = binary_scores([g != NONE_LABEL for g in gold], [p != NONE_LABEL for p in pred])
    return {
        "n": len(gold),
        "mean_f1": float(np.mean([per_label[label]["f1"] for label in LABELS])),
        # Over the labels the gold has: a source that never sets, say, `practice` is not
        # charged a zero for it (the study's mean_f1 above is over all five).
        "mean_f1_present": float(
            np.mean([per_label[label]["f1"] for label in LABELS if per_label[label]["support"]])
        )
        if gold
        else 0.0,
        "accuracy": float(np.trace(matrix) / len(gold)) if gold else 0.0,
        "per_label": per_label,
        "homework_vs_none": homework,
        "confusion": {"labels": list(LABELS), "rows_gold_cols_predicted": matrix.tolist()},
    }


def full_report(
    gold_labels: Sequence[str],
    pred_labels: Sequence[str],
    gold_review: Sequence[bool],
    pred_review: Sequence[bool],
) -> Report:
    """`label_scores` plus the review flag's scores under "review"."""
    report = label_scores(gold_labels, pred_labels)
    report["review"] = binary_scores(gold_review, pred_review)
    return report


def headline(report: Report) -> dict[str, float]:
    """The few numbers a results table needs, rounded for reading (not for comparing)."""
    out = {"mean_f1": round(report["mean_f1"], 4)}
    out.update({label: round(report["per_label"][label]["f1"], 4) for label in LABELS})
    out["homework_f1"] = round(report["homework_vs_none"]["f1"], 4)
    if "review" in report:
        out["review_f1"] = round(report["review"]["f1"], 4)
    return out


def bootstrap(
    gold_labels: Sequence[str],
    pred_labels: Sequence[str],
    gold_review: Sequence[bool],
    pred_review: Sequence[bool],
    conversations: Sequence[str],
    rounds: int = 1000,
    seed: int = 0,
) -> dict[str, list[float]]:
    """95% percentile intervals of mean F1, homework-vs-none F1 and review F1, resampling whole
    conversations with replacement (units of one conversation are not independent)."""
    by_conv: dict[str, list[int]] = {}
    for i, conv in enumerate(conversations):
        by_conv.setdefault(conv, []).append(i)
    groups = list(by_conv.values())
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {
        "mean_f1": [],
        "mean_f1_present": [],
        "homework_f1": [],
        "review_f1": [],
    }
    gl, pl = np.asarray(gold_labels), np.asarray(pred_labels)
    gr, pr = np.asarray(gold_review, dtype=bool), np.asarray(pred_review, dtype=bool)
    for _ in range(rounds):
        picked = rng.integers(0, len(groups), len(groups))
        idx = np.concatenate([groups[k] for k in picked])
        scores = label_scores(gl[idx].tolist(), pl[idx].tolist())
        draws["mean_f1"].append(scores["mean_f1"])
        draws["mean_f1_present"].append(scores["mean_f1_present"])
        draws["homework_f1"].append(scores["homework_vs_none"]["f1"])
        draws["review_f1"].append(binary_scores(gr[idx], pr[idx])["f1"])
    return {
        name: [round(float(np.percentile(v, 2.5)), 4), round(float(np.percentile(v, 97.5)), 4)]
        for name, v in draws.items()
    }


def by_group(
    gold_labels: Sequence[str],
    pred_labels: Sequence[str],
    gold_review: Sequence[bool],
    pred_review: Sequence[bool],
    conversations: Sequence[str],
    groups: Sequence[str],
) -> dict[str, Report]:
    """`full_report` with `bootstrap` intervals for all items ("all") and for each group (a
    source, say) that has items."""
    members: dict[str, list[int]] = {"all": list(range(len(gold_labels)))}
    for i, group in enumerate(groups):
        members.setdefault(group, []).append(i)
    out: dict[str, Report] = {}
    for name, idx in members.items():
        gl, pl = [gold_labels[i] for i in idx], [pred_labels[i] for i in idx]
        gr, pr = [gold_review[i] for i in idx], [pred_review[i] for i in idx]
        report = full_report(gl, pl, gr, pr)
        report["intervals"] = bootstrap(gl, pl, gr, pr, [conversations[i] for i in idx])
        out[name] = report
    return out
