"""The SQL on FHIR v2 specification's own tests, one pytest case each, against our runner.

A case we cannot pass is listed in KNOWN_FAILURES with its reason and runs as a strict xfail:
when a fix (ours or fhirpathpy's) makes it pass, the suite fails until the entry goes.
`bench/sof_conformance.py` prints the counts.
"""

from __future__ import annotations

import pytest

from mapping.quality.viewdef import ViewError
from tests.mapping.quality.sof_suite import SUITE_DIR, Case, check, load_cases

_NO_BOUNDARY = "fhirpathpy 2.2.4 has no lowBoundary()/highBoundary() (test tagged experimental)"
_JOIN_EMPTY = (
    "fhirpathpy 2.2.4's join() returns an empty collection (null) for an empty input; "
    "the suite expects ''"
)

KNOWN_FAILURES: dict[str, str] = {
    "fhirpath/string join": _JOIN_EMPTY,
    "fhirpath/string join: default separator": _JOIN_EMPTY,
    **{
        f"fn_boundary/{kind} {bound}": _NO_BOUNDARY
        for kind in ("decimal", "datetime", "date", "time")
        for bound in ("lowBoundary", "highBoundary")
    },
}


def _params() -> list[object]:
    try:
        cases = load_cases()
    except FileNotFoundError as exc:
        # Fail, not skip: a missing suite must not look like a passing one.
        return [pytest.param(exc, id="suite-missing")]
    params = []
    for case in cases:
        marks = []
        if case.id in KNOWN_FAILURES:
            marks.append(
                pytest.mark.xfail(
                    strict=True, reason=KNOWN_FAILURES[case.id], raises=(AssertionError, ViewError)
                )
            )
        params.append(pytest.param(case, id=case.id, marks=marks))
    return params


@pytest.mark.parametrize("case", _params())
def test_sof_case(case: Case | FileNotFoundError) -> None:
    if isinstance(case, FileNotFoundError):
        pytest.fail(str(case))
    check(case)


def test_known_failures_name_real_cases() -> None:
    ids = {case.id for case in load_cases(SUITE_DIR)}
    assert set(KNOWN_FAILURES) <= ids, sorted(set(KNOWN_FAILURES) - ids)
