"""The sekmet-fhir fixture itself: a server that cannot start fails the test, with its log."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fhir_adapter.sekmet_server import SekmetServer, start_sekmet

pytestmark = pytest.mark.integration


def test_a_server_that_cannot_start_fails_and_shows_its_log(tmp_path: Path) -> None:
    broken = {"server_auth": {"types": ["smart"], "token_lifetime": "not-a-number"}}
    with (
        pytest.raises(pytest.fail.Exception) as info,
        start_sekmet(tmp_path, clients=[], extra_config=broken),
    ):
        pass
    message = str(info.value)
    assert "sekmet-fhir exited with code" in message
    assert "token_lifetime" in message  # sekmet's own validation error, from its log


def test_session_server_answers_and_seeds(sekmet_server: SekmetServer) -> None:
    refs = sekmet_server.seed(
        [
            {"resourceType": "Patient", "id": "fixture-patient", "name": [{"family": "F"}]},
            {"resourceType": "Encounter", "status": "finished",
             "class": {"code": "AMB"}, "subject": {"reference": "Patient/fixture-patient"}},
        ]
    )  # fmt: skip
    assert refs[0] == "Patient/fixture-patient"
    assert refs[1].startswith("Encounter/")
    bundle = sekmet_server.admin_get("Encounter", {"subject": "Patient/fixture-patient"})
    assert [e["resource"]["id"] for e in bundle["entry"]] == [refs[1].split("/")[1]]
    assert sekmet_server.base_url.startswith("http://127.0.0.1:")
