"""Golden files: compare with tests/data/<area>/<case>/expected.json, or rewrite them.

UPDATE_GOLDEN=1 .venv/bin/pytest tests/mapping -q   rewrites every expected.json it touches;
review the diff (git diff tests/data) before keeping it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent.parent / "data"


def update_requested() -> bool:
    return os.environ.get("UPDATE_GOLDEN") == "1"


def cases(area: str) -> list[str]:
    """Case names under tests/data/<area>/ that have an input.json."""
    return sorted(p.parent.name for p in (DATA / area).glob("*/input.json"))


def load(area: str, case: str, name: str = "input.json") -> Any:
    return json.loads((DATA / area / case / name).read_text(encoding="utf-8"))


def check(area: str, case: str, actual: Any) -> None:
    """Assert `actual` equals expected.json (or write it when UPDATE_GOLDEN=1)."""
    path = DATA / area / case / "expected.json"
    text = json.dumps(actual, indent=2, ensure_ascii=False) + "\n"
    if update_requested():
        path.write_text(text, encoding="utf-8")
        return
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1 and review it"
    expected = json.loads(path.read_text(encoding="utf-8"))
    assert actual == expected, f"{area}/{case} differs from expected.json"
