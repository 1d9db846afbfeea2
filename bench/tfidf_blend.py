"""Does blending a TF-IDF model into the shipped model help on real talk? (issue #12, item 3)

    PYTHONPATH=. .venv/bin/python bench/tfidf_blend.py [--shared-data ../shared/data] [--json F]

Two variants over the shipped weights' calibrated label probabilities (`p_model`, each
micro-dialogue read through its windows, exactly as `homework-fhir evaluate` reads it):

- **blend**: ``p = (1 - w) * p_model + w * p_tfidf`` over the five labels, where `p_tfidf` is a
  TF-IDF + logistic regression (balanced class weights, scikit-learn's default C, as
  `inference_server.baselines`) trained on exactly what the shipped weights train on: the
  corpus' train split and the real-talk train units of the licence-allowed sources
  (PriMock57, activity-counselling). Features: word 1-2-grams or character 2-5-grams.
- **stacked**: a logistic regression over ``[log p_model, p_tfidf]`` (ten inputs; log of the
  calibrated probabilities = the label head's logits up to a constant per row), fit on the
  choosing set. Choosing-set units get out-of-fold predictions (5 folds by conversation), so
  no unit is scored by a model that saw its label.

What is chosen, and on what: the features, `w` (0 to 1 in steps of 0.05) and each variant's
homework threshold (`decision.choose_homework`: best mean F1, as training chooses the card's
`balanced` point) are chosen on the **choosing** set only (the real-talk dev units of the
licence-allowed sources plus the dev split of the spoken/written corpus, 379 units: what
training early-stops, calibrates and sets thresholds on). Ties go to the smaller `w`.
Then all are compared on **real-talk dev** (all four sources, 387 units): mean F1 over the
five labels and homework-vs-none F1 with 95% intervals from resampling conversations (1,000
rounds, seed 0, as `evaluate.bootstrap`, so the model's own intervals are the documented
ones), and the paired difference to the model alone on the same resamples. The review flag is
the model's in every row (the blend is over the five labels only). MIBot and ESConv are never
chosen on or fit to, so their rows ("unseen") are the cleanest check. The test split is never
read.

A sensitivity check, added after the first result: half of the choosing set is our own
corpus, on which TF-IDF is as good as the model, so the script also chooses `w` and the
threshold on the choosing set's real-talk part alone (179 units), and scores the model alone
under that same rule (its threshold chosen on those 179 units too), so that a gain from a
lower threshold is not credited to TF-IDF. The grid also shows, for every `w`, real-talk dev
in hindsight: a diagnostic of whether any weight could have helped, never a choice.

Prints the grid and the comparison table; `--json` also writes every number. Deterministic:
fixed seeds, no sampling outside the seeded bootstrap (the TF-IDF timings vary with the
machine's load). About 2-4 minutes on 2 cores (the model's forward passes over ~600
micro-dialogues, and the threshold searches).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from a checkout
sys.path.insert(0, str(ROOT / "bench"))

from _paths import check_corpus, check_output_file, check_shared_data, check_weights  # noqa: E402

from inference_server.classifier import WEIGHTS_DIR, HomeworkClassifier  # noqa: E402
from inference_server.data.splits import split_examples  # noqa: E402
from inference_server.dataset import Example, read_corpus  # noqa: E402
from inference_server.decision import OperatingPoint, choose_homework, from_card  # noqa: E402
from inference_server.decision import labels as decide_labels  # noqa: E402
from inference_server.evaluate import label_scores  # noqa: E402
from inference_server.labels import LABELS, NONE_LABEL  # noqa: E402
from inference_server.realtalk import RealTalk, trainable_sources  # noqa: E402
from inference_server.train import DEFAULT_CORPUS, choosing_set  # noqa: E402

SEED = 13
BOOTSTRAP_SEED = 0  # evaluate.bootstrap's default: the documented intervals
ROUNDS = 1000
WEIGHTS_GRID = tuple(round(0.05 * k, 2) for k in range(21))
FEATURES = ("word", "char")
FOLDS = 5
NONE_I = LABELS.index(NONE_LABEL)
SOURCE_ORDER = ("primock57", "activity-counselling", "mibot", "esconv")
UNSEEN = ("mibot", "esconv")  # never trained, chosen or fit on

Probs = npt.NDArray[np.float64]


def featuriser(kind: str) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer

    if kind == "word":
        return TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    return TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True)


def logreg() -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=2000, class_weight="balanced", random_state=SEED)


def in_label_order(model: Any, probs: Any) -> Probs:
    """predict_proba's columns (classes_ sorted) reordered to LABELS."""
    classes = [str(c) for c in model.classes_]
    return np.asarray(probs, np.float64)[:, [classes.index(label) for label in LABELS]]


@dataclass
class TfidfModel:
    features: Any
    model: Any

    @classmethod
    def fit(cls, kind: str, examples: Sequence[Example]) -> TfidfModel:
        features = featuriser(kind)
        x = features.fit_transform([ex.text for ex in examples])
        return cls(features, logreg().fit(x, [ex.label for ex in examples]))

    def probs(self, examples: Sequence[Example]) -> Probs:
        x = self.features.transform([ex.text for ex in examples])
        return in_label_order(self.model, self.model.predict_proba(x))


# --- scoring ----------------------------------------------------------------------------------


def codes(labels: Sequence[str]) -> npt.NDArray[np.int64]:
    return np.asarray([LABELS.index(label) for label in labels], np.int64)


def fast_scores(
    gold: npt.NDArray[np.int64], pred: npt.NDArray[np.int64]
) -> tuple[float, float, float, float]:
    """mean F1 over the five labels, homework F1, precision, recall (as evaluate.label_scores:
    a label with no gold and no prediction scores 0)."""
    k = len(LABELS)
    matrix = np.bincount(gold * k + pred, minlength=k * k).reshape(k, k)
    tp = np.diag(matrix).astype(np.float64)
    denom = matrix.sum(0) + matrix.sum(1)
    f1 = np.divide(2 * tp, denom, out=np.zeros(k), where=denom > 0)
    g, p = gold != NONE_I, pred != NONE_I
    htp = float((g & p).sum())
    precision = htp / p.sum() if p.sum() else 0.0
    recall = htp / g.sum() if g.sum() else 0.0
    hf1 = 2 * htp / (g.sum() + p.sum()) if g.sum() + p.sum() else 0.0
    return float(f1.mean()), hf1, precision, recall


def resamples(conversations: Sequence[str]) -> list[npt.NDArray[np.int64]]:
    """The unit indices of each bootstrap round, drawn as evaluate.bootstrap draws them."""
    by_conv: dict[str, list[int]] = {}
    for i, conv in enumerate(conversations):
        by_conv.setdefault(conv, []).append(i)
    groups = list(by_conv.values())
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    out = []
    for _ in range(ROUNDS):
        picked = rng.integers(0, len(groups), len(groups))
        out.append(np.concatenate([np.asarray(groups[k], np.int64) for k in picked]))
    return out


def interval(values: Probs) -> list[float]:
    low, high = np.percentile(values, [2.5, 97.5])
    return [round(float(low), 3), round(float(high), 3)]


def compare(
    gold: Sequence[str],
    predictions: dict[str, list[str]],
    conversations: Sequence[str],
    baselines: dict[str, str],
) -> dict[str, Any]:
    """Each variant's scores with intervals, and its paired difference (same resamples) to
    the variant `baselines` names for it (itself: no difference)."""
    g = codes(gold)
    preds = {name: codes(p) for name, p in predictions.items()}
    draws = resamples(conversations)
    boot = {
        name: np.array([fast_scores(g[idx], p[idx])[:2] for idx in draws])
        for name, p in preds.items()
    }
    out: dict[str, Any] = {}
    for name, p in preds.items():
        mean_f1, hf1, precision, recall = fast_scores(g, p)
        baseline = baselines[name]
        diff = boot[name] - boot[baseline]
        out[name] = {
            "n": len(g),
            "mean_f1": round(mean_f1, 3),
            "mean_f1_ci": interval(boot[name][:, 0]),
            "homework_f1": round(hf1, 3),
            "homework_f1_ci": interval(boot[name][:, 1]),
            "homework_precision": round(precision, 3),
            "homework_recall": round(recall, 3),
            "baseline": baseline,
            "delta_mean_f1": round(mean_f1 - fast_scores(g, preds[baseline])[0], 3),
            "delta_mean_f1_ci": interval(diff[:, 0]),
            "delta_homework_f1": round(hf1 - fast_scores(g, preds[baseline])[1], 3),
            "delta_homework_f1_ci": interval(diff[:, 1]),
        }
    return out


# --- the experiment ---------------------------------------------------------------------------


def model_probs(weights: Path, examples: Sequence[Example]) -> Probs:
    """The shipped model's calibrated label probabilities per micro-dialogue (windows reduced
    as every serving path reduces them)."""
    clf = HomeworkClassifier.load(weights)
    preds = clf.predict_dialogues([ex.turns for ex in examples], batch_size=64)
    return np.asarray(preds.label_probs, np.float64)


def choose(gold: Sequence[str], probs: Probs) -> tuple[float, float]:
    """The homework threshold chosen on `probs` and the choosing-set mean F1 it gives."""
    cut = choose_homework(list(gold), probs.astype(np.float32))
    predicted = decide_labels(probs.astype(np.float32), OperatingPoint(homework=cut))
    return cut, float(label_scores(list(gold), predicted)["mean_f1"])


def stack_inputs(p_model: Probs, p_tfidf: Probs) -> Probs:
    return np.hstack([np.log(np.clip(p_model, 1e-6, 1.0)), p_tfidf])


def stacked(
    choosing: Sequence[Example],
    x_choosing: Probs,
    x_compare: Probs,
    compare_ids: Sequence[str],
) -> tuple[Probs, Probs]:
    """The stacked model's probabilities on the choosing set (out of fold, by conversation)
    and on real-talk dev (out of fold for the units it shares with the choosing set, the
    model fit on the whole choosing set for the others)."""
    from sklearn.model_selection import GroupKFold

    y = [ex.label for ex in choosing]
    oof = np.zeros((len(choosing), len(LABELS)))
    folds = GroupKFold(n_splits=FOLDS).split(x_choosing, y, [ex.conversation for ex in choosing])
    for fit_idx, held_idx in folds:
        model = logreg().fit(x_choosing[fit_idx], [y[i] for i in fit_idx])
        oof[held_idx] = in_label_order(model, model.predict_proba(x_choosing[held_idx]))
    full = logreg().fit(x_choosing, y)
    on_compare = in_label_order(full, full.predict_proba(x_compare))
    position = {ex.id: i for i, ex in enumerate(choosing)}
    for j, unit_id in enumerate(compare_ids):
        if unit_id in position:
            on_compare[j] = oof[position[unit_id]]
    return oof, on_compare


def tfidf_latency(models: dict[str, TfidfModel], examples: Sequence[Example]) -> dict[str, Any]:
    """Seconds for TF-IDF features + logistic regression on 512 micro-dialogues (one session),
    median of 5, and the vocabulary size (what would ship)."""
    texts = [ex.text for ex in examples]
    session = (texts * (512 // len(texts) + 1))[:512]
    out: dict[str, Any] = {}
    for kind, m in models.items():
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            m.model.predict_proba(m.features.transform(session))
            runs.append(time.perf_counter() - start)
        out[kind] = {
            "session_512_s": round(float(np.median(runs)), 4),
            "vocabulary": len(m.features.vocabulary_),
        }
    return out


def run(shared: Path, corpus: Path, weights: Path) -> dict[str, Any]:
    splits = split_examples(read_corpus(corpus))
    real = RealTalk(shared=shared).splits()
    allowed = set(trainable_sources())
    # Exactly the shipped weights' training data (train.train with realtalk_train, repeat 1).
    train_set = list(splits["train"]) + [ex for ex in real["train"] if ex.source in allowed]
    choosing, _ = choosing_set(splits["dev"], real["dev"])
    dev = list(real["dev"])
    point = from_card(HomeworkClassifier.load(weights).card)

    union = {ex.id: ex for ex in [*choosing, *dev]}
    ids = list(union)
    p_all = model_probs(weights, [union[i] for i in ids])
    row = {unit_id: k for k, unit_id in enumerate(ids)}
    pm_choose = p_all[[row[ex.id] for ex in choosing]]
    pm_dev = p_all[[row[ex.id] for ex in dev]]
    gold_choose = [ex.label for ex in choosing]

    # Choose the features, w and the threshold on the choosing set.
    tfidf = {kind: TfidfModel.fit(kind, train_set) for kind in FEATURES}
    pt_choose = {kind: m.probs(choosing) for kind, m in tfidf.items()}
    pt_dev = {kind: m.probs(dev) for kind, m in tfidf.items()}
    # The choosing set's two parts, and real-talk dev, for the diagnostic columns.
    real_part = [i for i, ex in enumerate(choosing) if ex.source in allowed]
    corpus_part = [i for i, ex in enumerate(choosing) if ex.source not in allowed]
    unseen = [i for i, ex in enumerate(dev) if ex.source in UNSEEN]
    gold_dev = [ex.label for ex in dev]
    real_gold = [gold_choose[i] for i in real_part]

    def mean_f1(gold: Sequence[str], probs: Probs, cut: float, idx: Sequence[int]) -> float:
        predicted = decide_labels(probs[list(idx)].astype(np.float32), OperatingPoint(cut))
        return round(float(label_scores([gold[i] for i in idx], predicted)["mean_f1"]), 4)

    grid: dict[str, list[dict[str, float]]] = {}
    best: tuple[float, float, str, float] = (-1.0, 0.0, "", 0.0)  # (f1, -w, kind, cut)
    best_real: tuple[float, float, str, float] = (-1.0, 0.0, "", 0.0)
    for kind in FEATURES:
        grid[kind] = []
        for w in WEIGHTS_GRID:
            p_choose = (1 - w) * pm_choose + w * pt_choose[kind]
            p_dev = (1 - w) * pm_dev + w * pt_dev[kind]
            cut, f1 = choose(gold_choose, p_choose)
            best = max(best, (round(f1, 6), -w, kind, cut))
            # The sensitivity rule: w and threshold on the real-talk part alone.
            real_cut, real_f1 = choose(real_gold, p_choose[real_part])
            best_real = max(best_real, (round(real_f1, 6), -w, kind, real_cut))
            grid[kind].append(
                {
                    "w": w,
                    "threshold": round(cut, 4),
                    "mean_f1": round(f1, 4),
                    "choosing_realtalk_part": mean_f1(gold_choose, p_choose, cut, real_part),
                    "choosing_corpus_part": mean_f1(gold_choose, p_choose, cut, corpus_part),
                    "dev_all_hindsight": mean_f1(gold_dev, p_dev, cut, range(len(dev))),
                    "dev_unseen_hindsight": mean_f1(gold_dev, p_dev, cut, unseen),
                }
            )
    f1_best, neg_w, kind, blend_cut = best
    w = -neg_w
    real_f1_best, neg_w_real, kind_real, real_cut = best_real
    w_real = -neg_w_real
    # The model alone, chosen the same way (a check that it lands on the card's point).
    model_cut, model_f1 = choose(gold_choose, pm_choose)
    tfidf_cut, tfidf_f1 = choose(gold_choose, pt_choose[kind])

    # Stacked logistic regression over [log p_model, p_tfidf] (the chosen features).
    oof, stack_dev = stacked(
        choosing,
        stack_inputs(pm_choose, pt_choose[kind]),
        stack_inputs(pm_dev, pt_dev[kind]),
        [ex.id for ex in dev],
    )
    stack_cut, stack_f1 = choose(gold_choose, oof)
    # The model alone under the sensitivity rule (its threshold on the real-talk part), so the
    # blend chosen that way is compared with the same rule applied to the model.
    model_real_cut, model_real_f1 = choose(real_gold, pm_choose[real_part])

    def at(probs: Probs, cut: float) -> list[str]:
        return decide_labels(probs.astype(np.float32), OperatingPoint(homework=cut))

    variants = {
        "model": at(pm_dev, point.homework),
        f"tfidf ({kind})": at(pt_dev[kind], tfidf_cut),
        f"blend ({kind}, w={w:g})": at((1 - w) * pm_dev + w * pt_dev[kind], blend_cut),
        "stacked": at(stack_dev, stack_cut),
        "model, threshold on real-talk part": at(pm_dev, model_real_cut),
        f"blend on real-talk part ({kind_real}, w={w_real:g})": at(
            (1 - w_real) * pm_dev + w_real * pt_dev[kind_real], real_cut
        ),
    }
    baselines = {name: "model" for name in variants}
    baselines["model, threshold on real-talk part"] = "model"
    baselines[f"blend on real-talk part ({kind_real}, w={w_real:g})"] = (
        "model, threshold on real-talk part"
    )
    groups: dict[str, list[int]] = {"all": list(range(len(dev)))}
    for source in SOURCE_ORDER:
        groups[source] = [i for i, ex in enumerate(dev) if ex.source == source]
    groups["unseen (mibot+esconv)"] = [i for i, ex in enumerate(dev) if ex.source in UNSEEN]
    table = {
        name: compare(
            [gold_dev[i] for i in idx],
            {v: [p[i] for i in idx] for v, p in variants.items()},
            [dev[i].conversation for i in idx],
            baselines=baselines,
        )
        for name, idx in groups.items()
    }
    return {
        "trained_on": len(train_set),
        "choosing_units": len(choosing),
        "dev_units": len(dev),
        "card_point": point.as_json(),
        "choosing": {
            "grid": grid,
            "chosen": {"features": kind, "w": w, "threshold": blend_cut, "mean_f1": f1_best},
            "chosen_on_realtalk_part": {
                "features": kind_real,
                "w": w_real,
                "threshold": real_cut,
                "mean_f1": real_f1_best,
            },
            "model_alone": {"threshold": model_cut, "mean_f1": model_f1},
            "tfidf_alone": {"threshold": tfidf_cut, "mean_f1": tfidf_f1},
            "stacked_oof": {"threshold": stack_cut, "mean_f1": stack_f1},
            "model_alone_on_realtalk_part": {
                "threshold": model_real_cut,
                "mean_f1": model_real_f1,
            },
        },
        "realtalk_dev": table,
        "tfidf_latency": tfidf_latency(tfidf, dev),
    }


def fmt(ci: list[float]) -> str:
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def print_report(result: dict[str, Any]) -> None:
    chosen = result["choosing"]["chosen"]
    print(
        f"trained on {result['trained_on']} units; choosing set {result['choosing_units']}; "
        f"real-talk dev {result['dev_units']}; card point {result['card_point']}"
    )
    print(
        "\nmean F1 for each w at the homework threshold chosen on the choosing set: the choosing"
        "\nset, its real-talk and corpus parts; then real-talk dev, all and unseen sources (in"
        "\nhindsight: a diagnostic, never a choice)"
    )
    for kind in FEATURES:
        print(f"\n{kind}: w | threshold | choosing | real-talk part | corpus part | dev | unseen")
        for c in result["choosing"]["grid"][kind]:
            print(
                f"{c['w']:<5} {c['threshold']:.2f}  {c['mean_f1']:.3f}  "
                f"{c['choosing_realtalk_part']:.3f}  {c['choosing_corpus_part']:.3f}  "
                f"{c['dev_all_hindsight']:.3f}  {c['dev_unseen_hindsight']:.3f}"
            )
    for name in ("model_alone", "tfidf_alone", "stacked_oof", "model_alone_on_realtalk_part"):
        entry = result["choosing"][name]
        print(f"{name}: threshold {entry['threshold']:.3f}, mean F1 {entry['mean_f1']:.3f}")
    print(f"chosen: {chosen}")
    print(f"chosen on the real-talk part alone: {result['choosing']['chosen_on_realtalk_part']}")
    print(
        "\nreal-talk dev (review is the model's in every row; Δ: paired difference to the model"
        "\nat the same choosing rule, on the same resamples of conversations)"
    )
    header = (
        "| group | variant | units | mean F1 (95% CI) | Δ mean F1 (95% CI) | "
        "homework F1 (95% CI) | P / R | Δ homework F1 (95% CI) |"
    )
    print(header)
    print("|" + "---|" * 8)
    for group, rows in result["realtalk_dev"].items():
        for variant, r in rows.items():
            delta = (
                "—"
                if r["baseline"] == variant
                else f"{r['delta_mean_f1']:+.3f} {fmt(r['delta_mean_f1_ci'])}"
            )
            hdelta = (
                "—"
                if r["baseline"] == variant
                else f"{r['delta_homework_f1']:+.3f} {fmt(r['delta_homework_f1_ci'])}"
            )
            print(
                f"| {group} | {variant} | {r['n']} | {r['mean_f1']:.3f} {fmt(r['mean_f1_ci'])} | "
                f"{delta} | {r['homework_f1']:.3f} {fmt(r['homework_f1_ci'])} | "
                f"{r['homework_precision']:.2f} / {r['homework_recall']:.2f} | {hdelta} |"
            )
    print(f"\nTF-IDF cost per session of 512 micro-dialogues: {result['tfidf_latency']}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared-data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--weights", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--json", type=Path, default=None, help="also write every number here")
    args = parser.parse_args(argv)
    check_shared_data(parser, args.shared_data, "--shared-data")
    check_corpus(parser, args.corpus, "--corpus", file_ok=True)  # read_corpus takes either
    check_weights(parser, args.weights, "--weights")  # the card's point is the model's row
    check_output_file(parser, args.json, "--json")
    result = run(args.shared_data, args.corpus, args.weights)
    print_report(result)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
