"""Two weights folders side by side on the real-talk splits, each at its own card's default
operating point, with paired differences (the same conversation resamples for both) and the
expected calibration error of the top label's probability and the average precision of
P(homework) (how well it ranks homework above none, whatever the cut).

Groups: `chosen` (the licence-allowed sources, whose dev units training chooses on),
`unseen` (MIBot and ESConv: never trained, chosen or fit on; on dev, the honest check of a
change to how the model is chosen), and `all`.

    .venv/bin/python bench/compare_weights.py --before OLD_WEIGHTS --after inference_server/weights
    .venv/bin/python bench/compare_weights.py --before OLD --after NEW --splits dev --json OUT

Run from the repository root with `../shared` beside it (about 2 minutes a split on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from a checkout
sys.path.insert(0, str(ROOT / "bench"))

from _paths import check_output_file, check_shared_data, check_weights  # noqa: E402
from sklearn.metrics import average_precision_score  # noqa: E402
from tfidf_blend import UNSEEN, compare, model_probs  # noqa: E402

from inference_server.calibration import label_calibration  # noqa: E402
from inference_server.classifier import HomeworkClassifier  # noqa: E402
from inference_server.decision import from_card  # noqa: E402
from inference_server.decision import labels as decide_labels  # noqa: E402
from inference_server.labels import LABELS  # noqa: E402
from inference_server.realtalk import RealTalk, trainable_sources  # noqa: E402


def run(before: Path, after: Path, shared: Path, splits: Sequence[str]) -> dict[str, Any]:
    real = RealTalk(shared=shared).splits()
    allowed = set(trainable_sources())
    result: dict[str, Any] = {}
    for split in splits:
        units = list(real[split])
        predicted, probabilities = {}, {}
        for name, weights in (("before", before), ("after", after)):
            point = from_card(HomeworkClassifier.load(weights).card)
            probs = model_probs(weights, units).astype("float32")
            predicted[name] = list(decide_labels(probs, point))
            probabilities[name] = probs
        groups = {
            "all": list(range(len(units))),
            "chosen": [i for i, ex in enumerate(units) if ex.source in allowed],
            "unseen": [i for i, ex in enumerate(units) if ex.source in UNSEEN],
        }
        result[split] = {}
        for group, idx in groups.items():
            gold = [units[i].label for i in idx]
            rows = compare(
                gold,
                {name: [p[i] for i in idx] for name, p in predicted.items()},
                [units[i].conversation for i in idx],
                {"before": "before", "after": "before"},
            )
            targets = [LABELS.index(label) for label in gold]
            homework = [label != "none" for label in gold]
            for name, probs in probabilities.items():
                # Is the top label's probability right as often as it says (10 bins)?
                rows[name]["label_ece"] = round(label_calibration(probs[idx], targets)["ece"], 3)
                # How well P(homework) ranks homework above none, whatever the cut.
                p_homework = 1.0 - probs[idx][:, LABELS.index("none")]
                rows[name]["homework_ap"] = round(average_precision_score(homework, p_homework), 3)
            result[split][group] = rows
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, required=True)
    parser.add_argument("--shared-data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--splits", default="dev,test")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    # Before any work: the second folder is read only after the first is scored (minutes).
    check_weights(parser, args.before, "--before")
    check_weights(parser, args.after, "--after")
    check_shared_data(parser, args.shared_data, "--shared-data")
    check_output_file(parser, args.json, "--json")
    result = run(args.before, args.after, args.shared_data, args.splits.split(","))
    for split, groups in result.items():
        for group, rows in groups.items():
            b, a = rows["before"], rows["after"]
            print(
                f"{split:<5} {group:<7} n={a['n']:<4} mean F1 {b['mean_f1']:.3f} -> "
                f"{a['mean_f1']:.3f} (Δ {a['delta_mean_f1']:+.3f} {a['delta_mean_f1_ci']}); "
                f"homework F1 {b['homework_f1']:.3f} -> {a['homework_f1']:.3f} "
                f"(Δ {a['delta_homework_f1']:+.3f} {a['delta_homework_f1_ci']}; "
                f"P {b['homework_precision']:.2f}->{a['homework_precision']:.2f}, "
                f"R {b['homework_recall']:.2f}->{a['homework_recall']:.2f}); "
                f"label ECE {b['label_ece']:.3f} -> {a['label_ece']:.3f}; "
                f"homework AP {b['homework_ap']:.3f} -> {a['homework_ap']:.3f}"
            )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
