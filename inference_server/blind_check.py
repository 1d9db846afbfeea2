"""Blind second labels for a written corpus file: keep only the units two readers agree on.

A writer labels the units as it writes them; a second annotator, given only LABELING.md and the
units with their labels stripped and their order shuffled, labels them again. `prepare` writes
the blind file, `merge` joins the annotator's labels to the writer's, reports agreement (the
same figures as the real-talk passes, `realtalk.agreement`) and writes the units both read the
same way, label and review, into the corpus.

    python -m inference_server.blind_check prepare SHARD.jsonl BLIND.jsonl
    python -m inference_server.blind_check merge SHARD.jsonl LABELS.jsonl OUT.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inference_server.dataset import DatasetError
from inference_server.labels import LABELS
from inference_server.realtalk import agreement


class BlindCheckError(DatasetError):
    """A shard or a labels file is unreadable, or the two do not cover the same units."""


def _read(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise BlindCheckError(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise BlindCheckError(
            f"{path} is not UTF-8 text (byte {exc.start}); convert it to UTF-8 and retry"
        ) from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BlindCheckError(f"{path}:{number}: not JSON ({exc.msg})") from exc
        if not isinstance(row, dict) or "id" not in row:
            raise BlindCheckError(f"{path}:{number}: expected an object with an id")
        rows.append(row)
    return rows


def _labelled(row: dict[str, Any], where: str) -> dict[str, Any]:
    label, review = row.get("label"), row.get("review")
    if label not in LABELS or not isinstance(review, bool):
        raise BlindCheckError(
            f"{where}: unit {row['id']} needs a label in {', '.join(LABELS)} and a boolean review"
        )
    return {"label": label, "review": review}


def blind(units: Sequence[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """The units as the annotator sees them: id and turns only, in a shuffled order."""
    no_turns = [u["id"] for u in units if not isinstance(u.get("turns"), list)]
    if no_turns:
        raise BlindCheckError(
            f"{len(no_turns)} unit(s) have no list of turns (first: {no_turns[0]}); a shard "
            "holds written units with their turns"
        )
    rows = [{"id": u["id"], "turns": u["turns"]} for u in units]
    random.Random(seed).shuffle(rows)  # noqa: S311 (an order, not a secret)
    return rows


def merge(
    units: Sequence[dict[str, Any]], second: Sequence[dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The units both labels agree on (label and review, in the writer's order) and the
    agreement report; every unit must have exactly one second label."""
    by_id = {row["id"]: _labelled(row, "second labels") for row in second}
    ids = [u["id"] for u in units]
    if len(set(ids)) != len(ids):
        raise BlindCheckError("the shard repeats an id")
    missing = [i for i in ids if i not in by_id]
    extra = sorted(set(by_id) - set(ids))
    if missing or extra:
        raise BlindCheckError(
            f"the second labels miss {len(missing)} unit(s) (first: {missing[:3]}) and add "
            f"{len(extra)} unknown (first: {extra[:3]}); label every unit of the shard once"
        )
    rows = [{"a": _labelled(u, "shard"), "b": by_id[u["id"]]} for u in units]
    kept = [u for u, r in zip(units, rows, strict=True) if r["a"] == r["b"]]
    return kept, agreement(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference_server.blind_check")
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare", help="write the unlabelled, shuffled units")
    prep.add_argument("shard", type=Path)
    prep.add_argument("out", type=Path)
    prep.add_argument("--seed", type=int, default=0)
    join = commands.add_parser("merge", help="keep the units both labels agree on")
    join.add_argument("shard", type=Path)
    join.add_argument("labels", type=Path)
    join.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    try:
        units = _read(args.shard)
        if args.command == "prepare":
            rows = blind(units, args.seed)
        else:
            rows, report = merge(units, _read(args.labels))
            print(json.dumps(report | {"kept": len(rows)}, indent=2))
        args.out.write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
        )
    except (DatasetError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
