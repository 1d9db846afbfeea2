"""Checks of the paths a bench script is given, run before any work: a bad one ends the script
with argparse's usage and one `error:` line (exit 2), not with a traceback minutes later (a
`--json` that cannot be written used to fail only once every figure was measured).

The wording follows the product CLI's (`fhir_adapter.commands._common.check_output_path`), but
through `parser.error`: the scripts are argparse programs, not typer commands. What a folder must
hold comes from the modules that read it, imported here only when a check needs them (torch
comes with the classifier's module; scripts that take no weights should not pay for it).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

SHARED_DATA_HINT = (
    "pass the shared data folder, which holds primock57/, activity-counselling/, mibot/ and "
    "esconv/ (../shared/data beside the checkout)"
)


def check_output_file(parser: argparse.ArgumentParser, path: Path | None, option: str) -> None:
    """`path` can be written (or appended to) at the end: not a folder, in an existing folder
    (the scripts make none), with write permission. An existing file is fine."""
    if path is None:
        return
    if path.is_dir():
        parser.error(f"{option} {path} already exists as a folder; pass a file path")
    # The nearest thing that exists: a file there means no folder can be made under it.
    existing = next((p for p in (path, *path.parents) if p.exists()), path)
    if existing != path and not existing.is_dir():
        parser.error(
            f"{option} {path}: {existing} is a file, not a folder; pass a path under a folder"
        )
    if not path.parent.is_dir():
        parser.error(f"no folder {path.parent} for {option}; create it first")
    if not os.access(existing, os.W_OK):
        parser.error(f"{option} {path}: no permission to write in {existing}; pass another path")


def check_folder(
    parser: argparse.ArgumentParser, path: Path, option: str, holding: Sequence[str], hint: str
) -> None:
    """`path` is a folder with every file of `holding` (relative paths) in it; `hint` says
    what to pass instead."""
    if not path.exists():
        parser.error(f"{option} {path}: no such folder; {hint}")
    if not path.is_dir():
        parser.error(f"{option} {path} is a file, not a folder; {hint}")
    missing = [name for name in holding if not (path / name).is_file()]
    if missing:
        parser.error(f"{option} {path} has no {', '.join(missing)}; {hint}")


def check_weights(
    parser: argparse.ArgumentParser, path: Path, option: str, *, card: bool = True
) -> None:
    """A weights folder as `homework-fhir train --out` writes it. `HomeworkClassifier.load`
    needs the heads; the card is needed where the script reads its operating point (without
    one, 0.5/0.5 would be scored silently instead of the card's point)."""
    from inference_server.classifier import CARD_FILE, HEADS_FILE

    files = [HEADS_FILE, CARD_FILE] if card else [HEADS_FILE]
    hint = f"pass a folder holding {' and '.join(files)} (as `homework-fhir train --out` writes)"
    check_folder(parser, path, option, files, hint)


def check_shared_data(parser: argparse.ArgumentParser, path: Path, option: str) -> None:
    """The real-talk dialogue files, as `realtalk.read_source` reads them (ESConv: its valid
    and test splits; every other source: dialogues.jsonl)."""
    from inference_server.realtalk import SOURCES

    files = [
        *(f"{name}/dialogues.jsonl" for name in SOURCES if name != "esconv"),
        "esconv/valid.json",
        "esconv/test.json",
    ]
    check_folder(parser, path, option, files, SHARED_DATA_HINT)


def check_corpus(
    parser: argparse.ArgumentParser, path: Path, option: str, *, file_ok: bool
) -> None:
    """A labelled corpus: a folder of *.jsonl, or (`file_ok`: where `read_corpus` reads it) one
    .jsonl file."""
    what = "a folder of *.jsonl files" + (" or one .jsonl file" if file_ok else "")
    hint = f"pass {what} (the labelled corpus: inference_server/data/corpus)"
    if not path.exists():
        parser.error(f"{option} {path}: no such {'file or ' if file_ok else ''}folder; {hint}")
    if path.is_dir():
        if not any(path.glob("*.jsonl")):
            parser.error(f"{option} {path} holds no *.jsonl files; {hint}")
    elif not file_ok:
        parser.error(f"{option} {path} is a file, not a folder; {hint}")
