"""`bench/throughput.py` runs and reports what bench/README.md says it reports.

A tiny run (16 texts, fp32 and int8 in process, shipped weights): the figures themselves are
the benchmark's business, not a test's; this checks that the script still works end to end.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "throughput.py"


def test_bench_reports_throughput_session_spread_and_memory(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--variants",
            "fp32,int8",
            "--batch-sizes",
            "1,4",
            "--n",
            "16",
            "--session-repeats",
            "3",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "weights: shipped" in done.stdout
    results = json.loads(out.read_text())
    assert [r["variant"] for r in results] == ["fp32", "int8"]
    for result in results:
        assert [row["batch"] for row in result["rows"]] == [1, 4]
        assert all(
            row["items_per_s"] > 0 and row["p95_ms"] >= row["p50_ms"] for row in result["rows"]
        )
        assert result["session_min_s"] <= result["session_s"] <= result["session_max_s"]
        assert result["rss_mib"] > 100  # the encoder alone is ~90 MB
        name = result["variant"]
        assert any(line.startswith(name) and "MiB" in line for line in done.stdout.splitlines())
    unknown = subprocess.run(
        [sys.executable, str(SCRIPT), "--variants", "fp64"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert unknown.returncode == 2 and "unknown variant 'fp64'" in unknown.stderr
