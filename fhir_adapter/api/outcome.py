"""API errors, rendered as FHIR OperationOutcome by one handler in `app.py`."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

FHIR_JSON = "application/fhir+json"


class FhirResponse(JSONResponse):
    media_type = FHIR_JSON


_OUTCOME = {"content": {FHIR_JSON: {"schema": {"$ref": "#/components/schemas/OperationOutcome"}}}}
# The errors every authenticated route may answer, declared in the OpenAPI document.
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Invalid request (OperationOutcome)", **_OUTCOME},
    401: {"description": "Missing or invalid bearer token (OperationOutcome)", **_OUTCOME},
    403: {"description": "The token's scopes do not allow this (OperationOutcome)", **_OUTCOME},
    404: {"description": "Not found (OperationOutcome)", **_OUTCOME},
}
OUTCOME_CONTENT = _OUTCOME


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
