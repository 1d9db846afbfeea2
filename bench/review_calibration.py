"""How well each way of calibrating the review head would do, scored out of sample.

Reads a weights folder's P(review) on the choosing set (what `train` calibrates on), turns it
back into the served logit, and fits three calibrations on four fifths of the choosing set's
conversations, scoring each on the fifth left out (5 folds by conversation): a temperature (the
logit's scale alone), Platt scaling (scale and bias; what `train` fits) and isotonic regression.
Whatever the folder was calibrated with, each refit starts from its served logit. An affine map
of it is the same family again, so the Platt row does not depend on the folder's calibration;
the temperature row does (a scale alone keeps whatever bias the served logit already carries:
0.116 on weights calibrated by a temperature, 0.019 on the Platt-calibrated ones).

    .venv/bin/python bench/review_calibration.py [--weights DIR] [--json OUT]

Run from the repository root with `../shared` beside it (under a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from a checkout
sys.path.insert(0, str(ROOT / "bench"))

from _paths import check_output_file, check_shared_data, check_weights  # noqa: E402

from inference_server.calibration import review_calibration  # noqa: E402
from inference_server.classifier import WEIGHTS_DIR, HomeworkClassifier  # noqa: E402
from inference_server.data.splits import split_examples  # noqa: E402
from inference_server.dataset import read_corpus  # noqa: E402
from inference_server.realtalk import RealTalk  # noqa: E402
from inference_server.train import DEFAULT_CORPUS, choosing_set  # noqa: E402

FOLDS = 5
METHODS = ("served", "temperature", "platt", "isotonic")
Floats = npt.NDArray[np.float64]


def crossfit(logits: Floats, gold: Sequence[bool], groups: Sequence[str]) -> dict[str, Floats]:
    """P(review) per unit under each method, every fit made without the unit's conversation
    (`served`: the logit as it is)."""
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression

    z = np.asarray(logits, np.float64)
    y = np.asarray(gold, bool)
    fold = np.asarray([zlib.crc32(g.encode()) % FOLDS for g in groups])
    out = {name: np.zeros(len(z)) for name in METHODS}
    out["served"] = 1 / (1 + np.exp(-z))
    for k in range(FOLDS):
        fit, score = fold != k, fold == k
        if not score.any():
            continue
        if y[fit].all() or not y[fit].any():  # one class left to fit on: its rate is all it knows
            for name in METHODS[1:]:
                out[name][score] = float(y[fit].mean())
            continue
        for name, intercept in (("temperature", False), ("platt", True)):
            model = LogisticRegression(C=np.inf, fit_intercept=intercept)
            out[name][score] = model.fit(z[fit, None], y[fit]).predict_proba(z[score, None])[:, 1]
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
        out["isotonic"][score] = iso.fit(z[fit], y[fit]).predict(z[score])
    return out


def log_loss(probs: Floats, gold: Sequence[bool]) -> float:
    p = np.clip(probs, 1e-6, 1 - 1e-6)
    y = np.asarray(gold, np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def run(weights: Path | None, shared: Path) -> dict[str, Any]:
    dev = split_examples(read_corpus(DEFAULT_CORPUS))["dev"]
    units, _ = choosing_set(dev, RealTalk(shared=shared).splits()["dev"])
    clf = HomeworkClassifier.load(weights)
    probs = clf.predict_dialogues([ex.turns for ex in units], batch_size=64).review_probs
    p = np.clip(np.asarray(probs, np.float64), 1e-7, 1 - 1e-7)
    gold = [ex.review for ex in units]
    fitted = crossfit(np.log(p / (1 - p)), gold, [ex.conversation for ex in units])
    return {
        "units": len(units),
        "reviews": sum(gold),
        "methods": {
            name: {
                "ece": review_calibration(q, gold)["ece"],
                "log_loss": log_loss(q, gold),
            }
            for name, q in fitted.items()
        },
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=None, help="default: the shipped ones")
    parser.add_argument("--shared-data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    # Only P(review) is read (from the heads): a folder without a card is fine here.
    check_weights(parser, args.weights or WEIGHTS_DIR, "--weights", card=False)
    check_shared_data(parser, args.shared_data, "--shared-data")
    check_output_file(parser, args.json, "--json")
    result = run(args.weights, args.shared_data)
    print(f"choosing set: {result['units']} units, {result['reviews']} reviews")
    print(f"{'review calibration':<14} {'ECE':>6} {'log-loss':>9}  (5 folds by conversation)")
    for name, row in result["methods"].items():
        print(f"{name:<14} {row['ece']:>6.3f} {row['log_loss']:>9.3f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
