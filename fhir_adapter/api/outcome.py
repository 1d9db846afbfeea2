"""API errors, rendered as FHIR OperationOutcome by one handler in `app.py`."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error the API answers with `status` and an OperationOutcome.

    `code` is a FHIR issue-type code (invalid, not-found, security, not-supported, ...);
    `diagnostics` is for people and must carry no PHI.
    """

    def __init__(self, status: int, code: str, diagnostics: str) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.code = code
        self.diagnostics = diagnostics


def operation_outcome(code: str, diagnostics: str, severity: str = "error") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }
