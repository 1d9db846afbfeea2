"""The review screen's reads from the EHR: an answer that is not FHIR JSON is a LaunchError (a
page the clinician is told about), not an unhandled error."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from fhir_adapter.smart.client import SmartApp
from fhir_adapter.smart.errors import LaunchError


def test_a_page_instead_of_json_is_a_launch_error() -> None:
    def sso_page(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>Sign in again</html>",
                              headers={"Content-Type": "text/html"})  # fmt: skip

    app = SmartApp({}, transport=httpx.MockTransport(sso_page))
    with pytest.raises(LaunchError) as raised:
        asyncio.run(app.read("https://ehr.example/fhir", "token", "Patient/p1"))
    assert raised.value.status == 502 and "not FHIR" in str(raised.value)
