"""`homework-fhir train`: train the homework classifier from the labelled corpus.

Trains on the bundled corpus and the licence-allowed units of the labelled real-talk set
(read from `--shared-data`), makes every choice on their dev splits, and writes
`heads.safetensors` (plus `encoder_lora.safetensors` when the encoder's top layers are adapted)
and `model_card.json` into `--out` (default: the shipped weights folder), then prints the
headline scores on the corpus and real-talk splits as JSON. With the defaults it reproduces the
shipped weights (seeded; deterministic on one machine). A faster 4-layer student is `--out DIR
--set encoder_layers=4 --set lora_layers=4 --set distill_weight=0.9`, distilled from the teacher
in `--teacher` (default: the shipped model). Frozen-encoder embeddings are cached under
`--cache` so that re-running is fast. `--dapt FILE` fine-tunes the encoder as adapted by a
domain-adaptive pre-training delta (`homework-fhir dapt`) and writes it beside the weights.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fhir_adapter.commands._common import bad_input_exits, check_output_path, fail

if TYPE_CHECKING:
    from inference_server.train import TrainConfig


def register(app: typer.Typer) -> None:
    app.command("train")(train)


def train(
    corpus: Annotated[
        Path | None,
        typer.Option("--corpus", help="Folder of labelled *.jsonl (default: the bundled corpus)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Where to write the weights (default: the shipped folder)."),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed.")] = None,
    epochs: Annotated[
        int | None, typer.Option("--epochs", min=1, help="Maximum epochs (early stopping on dev).")
    ] = None,
    cache: Annotated[
        Path | None,
        typer.Option("--cache", help="Embedding cache folder (default: ~/.cache/homework-fhir)."),
    ] = None,
    esconv: Annotated[
        Path,
        typer.Option(
            "--esconv",
            help="ESConv folder for the card's external check (relative to the working "
            "directory); skipped when absent.",
        ),
    ] = Path("../shared/data/esconv"),
    no_esconv: Annotated[bool, typer.Option("--no-esconv", help="Skip the ESConv check.")] = False,
    shared_data: Annotated[
        Path,
        typer.Option(
            "--shared-data",
            help="The shared data folder the labelled real-talk units are read from (relative "
            "to the working directory).",
        ),
    ] = Path("../shared/data"),
    no_realtalk: Annotated[
        bool,
        typer.Option(
            "--no-realtalk",
            help="Train and choose on the corpus alone (no real-talk units, no real-talk scores).",
        ),
    ] = False,
    settings: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="NAME=VALUE",
            help="Override a training parameter (see TrainConfig in inference_server/train.py), "
            "e.g. --set encoder_layers=4 --set class_weight_power=1; repeatable.",
        ),
    ] = None,
    teacher: Annotated[
        Path | None,
        typer.Option(
            "--teacher",
            help="Weights folder of the distillation teacher (default: the shipped model); "
            "used when distill_weight > 0.",
        ),
    ] = None,
    dapt: Annotated[
        Path | None,
        typer.Option(
            "--dapt",
            help="A domain-adaptive pre-training delta (`homework-fhir dapt --out FILE`): "
            "fine-tune the encoder it adapts, and ship it with the weights.",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Train the classifier heads (and LoRA delta) and write weights plus model card."""
    from dataclasses import replace

    from inference_server.dataset import DatasetError
    from inference_server.esconv import ESConvError
    from inference_server.evaluate import headline
    from inference_server.realtalk import RealTalk
    from inference_server.train import DEFAULT_CORPUS, TrainConfig, default_cache_dir
    from inference_server.train import train as run_training

    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    if out is not None:  # checked now: the weights are written only after the whole training
        check_output_path(out, "--out", folder=True)
    config = TrainConfig()
    try:
        config = config_with(config, settings or [])
    except ValueError as exc:
        fail(str(exc))
    if seed is not None:
        config = replace(config, seed=seed)
    if epochs is not None:
        config = replace(config, epochs=epochs)
    if dapt is not None and not dapt.is_file():
        fail(f"no DAPT delta at {dapt}; make one with `homework-fhir dapt --out {dapt}`")
    if teacher is not None and not config.distill_weight:
        fail("--teacher is read only when distilling; add --set distill_weight=0.9 (or drop it)")
    esconv_dir = None
    if not no_esconv:
        if (esconv / "test.json").is_file():
            esconv_dir = esconv
        else:
            typer.echo(f"no ESConv at {esconv}; the card's ESConv check is skipped", err=True)
    realtalk = None if no_realtalk else RealTalk(shared=shared_data)
    with bad_input_exits():
        try:
            card = run_training(
                corpus or DEFAULT_CORPUS,
                out,
                config,
                cache_dir=cache or default_cache_dir(),
                esconv_dir=esconv_dir,
                progress=not quiet,
                teacher_dir=teacher,
                realtalk=realtalk,
                dapt=dapt,
            )
        except (DatasetError, ESConvError) as exc:
            fail(str(exc))
    summary = {
        "version": card["version"],
        "best_epoch": card["training"]["best_epoch"],
        **{split: headline(report) for split, report in card["metrics"].items()},
    }
    for split, by_source in (card["realtalk_metrics"] or {}).items():
        summary[f"realtalk_{split}"] = {
            **headline(by_source["all"]),
            "intervals": by_source["all"]["intervals"],
        }
    if card["esconv"]:
        summary["esconv_test_homework_f1"] = round(card["esconv"]["homework_vs_none"]["f1"], 4)
    typer.echo(json.dumps(summary, indent=2))


def config_with(config: TrainConfig, settings: list[str]) -> TrainConfig:
    """`config` with NAME=VALUE overrides, each VALUE parsed as its field's type."""
    from dataclasses import replace

    return replace(config, **parse_settings(config, settings))


def parse_settings(config: Any, settings: list[str]) -> dict[str, Any]:
    """NAME=VALUE overrides of a dataclass' fields, each VALUE parsed as its field's type."""
    from dataclasses import fields

    types = {f.name: f.type for f in fields(config)}
    changes: dict[str, Any] = {}
    for item in settings:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or name not in types:
            raise ValueError(
                f"--set {item!r}: expected NAME=VALUE with NAME one of {', '.join(types)}"
            )
        kind = str(types[name])
        try:
            if kind == "bool":
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(raw)
                changes[name] = raw.lower() in ("true", "1")
            elif kind == "str":
                changes[name] = raw  # the dataclass' own checks say which words it takes
            else:
                changes[name] = int(raw) if kind == "int" else float(raw)
        except ValueError:
            expected = {"int": "an integer", "float": "a number", "bool": "true or false"}[kind]
            raise ValueError(f"--set {item!r}: {name} takes {expected}, not {raw!r}") from None
    return changes
