"""`homework-fhir evaluate FILE.jsonl`: score the classifier on labelled micro-dialogues.

FILE is in the labelling guide's format (one micro-dialogue per line with `label` and
`review`). Prints one JSON object: per-label precision/recall/F1, the mean F1 over the five
labels, homework-vs-none and review scores, and the confusion matrix (rows gold, columns
predicted). `--predictions OUT.jsonl` also writes one line per item: its id, the predicted
label and review flag, and the probabilities.

`--esconv-split SPLIT` scores ESConv instead of FILE: homework (any label but none) against
the supporter strategy "Providing Suggestions" (see `inference_server/esconv.py`).
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fhir_adapter.commands._common import bad_input_exits, check_output_path, fail
from fhir_adapter.commands._predict import (
    TRITON_HELP,
    PointOption,
    model_info,
    operating_point,
    predict_dialogues,
)

if TYPE_CHECKING:
    from inference_server.classifier import Predictions


class ESConvSplitOption(StrEnum):
    TRAIN = "train"
    VALID = "valid"
    TEST = "test"


class RealTalkSplit(StrEnum):
    TRAIN = "train"
    DEV = "dev"
    TEST = "test"


class WindowOption(StrEnum):
    REPLY = "reply"
    CONTEXT = "context"
    BOTH = "both"


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)


def evaluate(
    file: Annotated[
        Path | None,
        typer.Argument(
            help="Labelled micro-dialogues (JSON Lines, LABELING.md format).", show_default=False
        ),
    ] = None,
    triton: Annotated[str | None, typer.Option("--triton", help=TRITON_HELP)] = None,
    predictions: Annotated[
        Path | None,
        typer.Option(
            "--predictions", help="Write one JSON line per item: id, label, review, probabilities."
        ),
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option(
            "--weights", help="Weights folder for the in-process model (default: shipped)."
        ),
    ] = None,
    esconv_split: Annotated[
        ESConvSplitOption | None,
        typer.Option("--esconv-split", help="Score this ESConv split instead of FILE."),
    ] = None,
    esconv: Annotated[
        Path,
        typer.Option(
            "--esconv",
            help="ESConv folder (train/valid/test.json), relative to the working directory.",
        ),
    ] = Path("../shared/data/esconv"),
    window: Annotated[
        WindowOption,
        typer.Option("--window", help="ESConv: which seeker turns go with a supporter turn."),
    ] = WindowOption.REPLY,
    realtalk: Annotated[
        RealTalkSplit | None,
        typer.Option(
            "--realtalk",
            help="Score this split of the project's labelled real dialogue (realtalk.py) "
            "instead of FILE: per source, with 95% intervals from resampling conversations.",
        ),
    ] = None,
    shared_data: Annotated[
        Path,
        typer.Option(
            "--shared-data",
            help="The shared data folder the real-talk units are read from (relative to the "
            "working directory).",
        ),
    ] = Path("../shared/data"),
    point_name: Annotated[
        PointOption,
        typer.Option("--operating-point", help="The model card's decision thresholds to use."),
    ] = PointOption.BALANCED,
) -> None:
    """Score the homework classifier on a labelled file (or ESConv, or the real-talk set) and
    print JSON."""
    if sum(x is not None for x in (file, esconv_split, realtalk)) != 1:
        fail("give FILE.jsonl, --esconv-split SPLIT or --realtalk SPLIT (one of them)")
    from inference_server.dataset import DatasetError, Example, read_jsonl
    from inference_server.esconv import ESConvError, read_split
    from inference_server.evaluate import binary_scores, by_group
    from inference_server.labels import LABELS, NONE_LABEL
    from inference_server.realtalk import RealTalk

    examples: list[Example] = []
    with bad_input_exits():
        try:
            if file is not None:
                examples = read_jsonl(file)
            elif realtalk is not None:
                examples = RealTalk(shared=shared_data).splits()[realtalk.value]
            if esconv_split is not None:
                items = read_split(esconv, esconv_split.value, window.value)
                ids = [f"esconv-{esconv_split.value}-{i.dialog}-{i.utterance}" for i in items]
                dialogues = [item.turns for item in items]
            else:
                ids = [ex.id for ex in examples]
                dialogues = [ex.turns for ex in examples]
        except (DatasetError, ESConvError) as exc:
            fail(str(exc))
        if predictions is not None:  # checked now: written only after the whole model run
            check_output_path(predictions, "--predictions", folder=False, make_parents=False)

    point = operating_point(weights, point_name.value)
    preds = predict_dialogues(dialogues, triton, weights)
    labels, reviews = preds.labels(point), preds.reviews(point)
    report: dict[str, Any]
    if esconv_split is None:
        scores = by_group(
            [ex.label for ex in examples],
            labels,
            [ex.review for ex in examples],
            reviews,
            conversations=[ex.conversation for ex in examples],
            groups=[ex.origin or "unspecified" for ex in examples],
        )
        where = {"file": str(file)} if file is not None else {"realtalk": realtalk}
        report = {**where, **scores.pop("all"), "by_source": scores}
    else:
        report = {
            "esconv": {"folder": str(esconv), "split": esconv_split, "window": window.value},
            "n": len(items),
            "homework_vs_none": binary_scores(
                [item.is_suggestion for item in items], [p != NONE_LABEL for p in labels]
            ),
            "predicted_labels": {label: labels.count(label) for label in LABELS},
        }
    report["model"] = {"backend": "triton", "url": triton} if triton else model_info(weights)
    report["operating_point"] = {"name": point_name.value, **point.as_json()}
    if predictions is not None:
        _write_predictions(predictions, ids, preds, labels, reviews)
    typer.echo(json.dumps(report, indent=2, default=str))


def _write_predictions(
    path: Path, ids: list[str], preds: Predictions, labels: list[str], reviews: list[bool]
) -> None:
    from inference_server.labels import LABELS

    with path.open("w", encoding="utf-8") as handle:
        for i, item_id in enumerate(ids):
            row = {
                "id": item_id,
                "label": labels[i],
                "review": reviews[i],
                "label_probs": {
                    label: round(float(p), 6)
                    for label, p in zip(LABELS, preds.label_probs[i], strict=True)
                },
                "review_prob": round(float(preds.review_probs[i]), 6),
            }
            handle.write(json.dumps(row) + "\n")
