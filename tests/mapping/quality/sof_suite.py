"""The SQL on FHIR v2 specification's test suite: load its cases and check one against
`mapping.quality.viewdef` (used by test_sof_conformance.py and bench/sof_conformance.py).

The suite lives beside the repository, in ../shared/data/sql-on-fhir-v2-tests (its README
says where it comes from). Each file holds `resources` and `tests[{title, tags, view, expect |
expectCount | expectError, expectColumns?}]`; rows compare as a multiset (order-insensitive), and
each row's columns must be the expected ones.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from mapping.quality.viewdef import ViewError, compile_view

ROOT = Path(__file__).resolve().parents[3]
SUITE_DIR = ROOT.parent / "shared" / "data" / "sql-on-fhir-v2-tests"


@dataclass(frozen=True)
class Case:
    id: str  # "<file stem>/<title>"
    tags: tuple[str, ...]
    test: dict[str, Any]
    resources: list[dict[str, Any]]

    @property
    def shareable(self) -> bool:
        return "shareable" in self.tags


def load_cases(directory: Path = SUITE_DIR) -> list[Case]:
    if not directory.is_dir():
        raise FileNotFoundError(
            f"the SQL on FHIR v2 test suite is missing: {directory} (CI keeps ../shared beside "
            "the repository)"
        )
    cases = []
    for path in sorted(directory.glob("*.json")):
        if path.name == "tests.schema.json":
            continue
        suite = json.loads(path.read_text(encoding="utf-8"))
        for test in suite["tests"]:
            tags = tuple(test.get("tags", ()))
            cases.append(Case(f"{path.stem}/{test['title']}", tags, test, suite["resources"]))
    return cases


def _canon(value: Any) -> Any:
    # JSON numbers compare by value (the runner gives Decimal, the suite float or int), but
    # true is not 1 and "1" is not 1.
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return (type(value).__name__, value)
    if isinstance(value, int | float | Decimal):
        return ("number", Decimal(str(value)).normalize())
    if isinstance(value, list):
        return ("list", tuple(_canon(v) for v in value))
    if isinstance(value, dict):
        return ("object", tuple(sorted((k, _canon(v)) for k, v in value.items())))
    return ("other", repr(value))


def _row(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(sorted((k, _canon(v)) for k, v in row.items()))


def check(case: Case) -> None:
    """Raise AssertionError (or the runner's ViewError) unless the runner does what `case`
    expects."""
    test = case.test
    if test.get("expectError"):
        try:
            compile_view(test["view"]).run(case.resources)
        except ViewError:
            return
        raise AssertionError("expected a ViewError, got rows")
    view = compile_view(test["view"])
    rows = view.run(case.resources)
    if "expectColumns" in test:
        names = [c.name for c in view.columns]
        assert names == test["expectColumns"], f"columns {names}"
        for row in rows:
            assert list(row) == names, f"row's columns in another order: {list(row)}"
    if "expectCount" in test:
        assert len(rows) == test["expectCount"], f"{len(rows)} rows"
    if "expect" in test:
        got, want = Counter(map(_row, rows)), Counter(map(_row, test["expect"]))
        assert got == want, f"rows differ\n  got:      {rows}\n  expected: {test['expect']}"
