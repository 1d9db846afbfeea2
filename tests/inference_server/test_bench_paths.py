"""The `bench/` scripts refuse a bad path before any work: usage and one `error:` line naming
it, exit 2, no traceback (a `--json` that cannot be written used to fail only at the end).

Each case runs the script as a developer would (a subprocess from the repository root); the
check comes before anything is measured or started, so each takes the script's imports only.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "inference_server" / "weights"

# What a case passes, given a scratch folder; and what the error line must say besides the path.
Args = Callable[[Path], list[str]]


def _shared(tmp: Path) -> Path:
    """A shared data folder with every dialogue file in place (empty: the checks look for the
    files, so the options after --shared-data are reached)."""
    shared = tmp / "shared"
    for name in ("primock57/dialogues.jsonl", "activity-counselling/dialogues.jsonl",
                 "mibot/dialogues.jsonl", "esconv/valid.json", "esconv/test.json"):  # fmt: skip
        (shared / name).parent.mkdir(parents=True, exist_ok=True)
        (shared / name).touch()
    return shared


def _heads_only(tmp: Path) -> Path:
    weights = tmp / "weights"
    weights.mkdir()
    (weights / "heads.safetensors").touch()
    return weights


def _afile(tmp: Path) -> Path:
    (tmp / "afile").write_text("x")
    return tmp / "afile"


def _not_cells(tmp: Path) -> Path:
    (tmp / "other.jsonl").write_text("{not json\n")
    return tmp / "other.jsonl"


CASES: list[tuple[str, Args, str, str]] = [
    # (script, its arguments, the path the line must name, what else it must say)
    ("compare_weights", lambda t: ["--before", str(t / "nope"), "--after", str(SHIPPED)],
     "{t}/nope", "no such folder; pass a folder holding heads.safetensors and model_card.json"),
    ("compare_weights", lambda t: ["--before", str(SHIPPED), "--after", str(_heads_only(t))],
     "{t}/weights", "has no model_card.json"),
    ("review_calibration", lambda t: ["--shared-data", str(t / "nope")],
     "{t}/nope", "no such folder; pass the shared data folder"),
    ("review_calibration", lambda t: ["--shared-data", str(_shared(t)), "--json", str(t)],
     "{t}", "already exists as a folder; pass a file path"),
    ("tfidf_blend", lambda t: ["--shared-data", str(_shared(t)), "--corpus", str(t / "nope")],
     "{t}/nope", "no such file or folder"),
    ("tfidf_blend", lambda t: ["--shared-data", str(_shared(t)), "--json", str(t / "no/x.json")],
     "{t}/no", "create it first"),
    ("throughput", lambda t: ["--variants", "fp32", "--weights", str(t / "nope")],
     "{t}/nope", "no such folder; pass a folder holding heads.safetensors"),
    ("throughput", lambda t: ["--variants", "fp32", "--n", "4", "--batch-sizes", "1",
                              "--session-repeats", "1", "--corpus", str(t / "nope")],
     "{t}/nope", "no such folder"),
    ("quality_scale", lambda t: ["--demo", str(t / "nope")], "{t}/nope", "no such folder"),
    ("quality_scale", lambda t: ["--demo", str(t)], "{t}", "has no demo.sqlite3"),
    ("store_scale", lambda t: ["--sizes", "1", "--databases", "sqlite",
                               "--json", str(_afile(t) / "out.json")],
     "{t}/afile", "is a file, not a folder"),
    ("pipeline_load", lambda t: ["--workers", "1", "--clinics", "1", "--json", str(t)],
     "{t}", "already exists as a folder"),
    ("fault_matrix", lambda t: ["--faults", "none", "--rounds", "1", "--json", str(t)],
     "{t}", "already exists as a folder"),
    ("fault_matrix", lambda t: ["--faults", "none", "--rounds", "1",
                                "--json", str(_not_cells(t))],
     "{t}/other.jsonl", "does not hold this script's cells"),
    ("request_limits", lambda t: ["--json", str(t / "no/x.json")], "{t}/no", "create it first"),
    ("sof_conformance", lambda t: [str(t / "nope")], "{t}/nope", "no such folder"),
    ("sof_conformance", lambda t: [str(t)], "{t}", "holds no test files"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("script", "args", "names", "says"),
    CASES,
    ids=[f"{c[0]}-{n}" for n, c in enumerate(CASES)],
)
def test_bad_path_is_one_line_and_exit_2(
    script: str, args: Args, names: str, says: str, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, f"bench/{script}.py", *args(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, done.stderr[-2000:]
    assert errors[0].startswith(f"{script}.py: error: "), errors[0]
    assert names.format(t=tmp_path) in errors[0] and says in errors[0], errors[0]
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stdout == ""  # nothing measured, nothing started
