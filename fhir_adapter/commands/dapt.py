"""`homework-fhir dapt`: domain-adaptive pre-training (TSDAE) of the encoder on unlabelled real
dialogue (see `inference_server/dapt.py`).

Reads the therapist turns of the train-split conversations of the licence-allowed real sources
in place from `--shared-data` (never MIBot or ESConv), optionally with the corpus' train split,
and writes the encoder's LoRA delta to `--out` (a small safetensors file). `homework-fhir train
--dapt FILE` then fine-tunes on top of it and ships it beside the other weights.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from fhir_adapter.commands._common import bad_input_exits, check_output_path, fail


def register(app: typer.Typer) -> None:
    app.command("dapt")(dapt)


def dapt(
    out: Annotated[Path, typer.Option("--out", help="Where to write the encoder's delta.")],
    shared_data: Annotated[
        Path,
        typer.Option(
            "--shared-data",
            help="The shared data folder the real dialogue is read from (relative to the "
            "working directory).",
        ),
    ] = Path("../shared/data"),
    with_corpus: Annotated[
        bool, typer.Option("--with-corpus", help="Also the bundled corpus' train split.")
    ] = False,
    settings: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="NAME=VALUE",
            help="Override a setting (see DaptConfig in inference_server/dapt.py), e.g. --set "
            "epochs=2 --set max_minutes=10; repeatable.",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Adapt the encoder to real dialogue (TSDAE) and write its LoRA delta."""
    from dataclasses import replace

    from fhir_adapter.commands.train import parse_settings
    from inference_server.dapt import DaptConfig, dapt_texts, pretrain, save_delta
    from inference_server.dataset import DatasetError
    from inference_server.train import DEFAULT_CORPUS

    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    check_output_path(out, "--out", folder=False)  # now: the delta is written after pretraining
    try:
        config = replace(DaptConfig(), **parse_settings(DaptConfig(), settings or []))
    except (TypeError, ValueError) as exc:
        fail(str(exc))
    if with_corpus:
        config = replace(config, with_corpus=True)
    with bad_input_exits():
        try:
            texts, sources = dapt_texts(
                shared_data, DEFAULT_CORPUS if config.with_corpus else None
            )
        except DatasetError as exc:
            fail(str(exc))
    result = pretrain(texts, config, progress=not quiet)
    save_delta(result, out, sources)
    summary: dict[str, Any] = {
        "out": str(out),
        "bytes": out.stat().st_size,
        "sources": sources,
        **{k: result.stats[k] for k in ("texts", "steps", "seconds", "stopped_by_budget")},
        "history": result.stats["history"],
    }
    typer.echo(json.dumps(summary, indent=2))
