"""How much of the SQL on FHIR v2 specification's test suite our ViewDefinition runner passes.

    .venv/bin/python bench/sof_conformance.py              # ../shared/data/sql-on-fhir-v2-tests
    .venv/bin/python bench/sof_conformance.py DIR          # another copy of the suite

Prints "shareable: N passed of M; all: N of M" (the README asks for the shareable count), then
each failure with its reason: the one recorded in the pytest module's KNOWN_FAILURES, else the
error itself. Exits 1 when a test fails that KNOWN_FAILURES does not list.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from a checkout
sys.path.insert(0, str(ROOT / "bench"))

from _paths import check_folder  # noqa: E402

from mapping.quality.viewdef import ViewError  # noqa: E402
from tests.mapping.quality.sof_suite import SUITE_DIR, check, load_cases  # noqa: E402
from tests.mapping.quality.test_sof_conformance import KNOWN_FAILURES  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", type=Path, default=SUITE_DIR)
    args = parser.parse_args()
    hint = f"pass a copy of the SQL on FHIR v2 test suite (default: {SUITE_DIR})"
    check_folder(parser, args.dir, "DIR", [], hint)
    # An empty folder (or another one) would report "0 passed of 0" and exit 0.
    if not any(p.name != "tests.schema.json" for p in args.dir.glob("*.json")):
        parser.error(f"DIR {args.dir} holds no test files (*.json); {hint}")
    cases = load_cases(args.dir)
    failures: dict[str, str] = {}
    for case in cases:
        try:
            check(case)
        except (AssertionError, ViewError) as exc:
            failures[case.id] = KNOWN_FAILURES.get(case.id) or str(exc).splitlines()[0]
    shareable = [c for c in cases if c.shareable]
    passed = [c for c in cases if c.id not in failures]
    print(
        f"shareable: {sum(c.shareable for c in passed)} passed of {len(shareable)}; "
        f"all: {len(passed)} of {len(cases)}"
    )
    for case in cases:
        if case.id in failures:
            tag = "shareable" if case.shareable else ",".join(case.tags) or "untagged"
            print(f"FAIL [{tag}] {case.id}: {failures[case.id]}")
    unexpected = set(failures) - set(KNOWN_FAILURES)
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
