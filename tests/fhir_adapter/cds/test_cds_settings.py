"""`[cds]` settings, and the service they open (URLs, launch link, clients)."""

from __future__ import annotations

import os

import pytest

from fhir_adapter.cds import open_cds
from fhir_adapter.settings import SettingsError, load_settings

API_OK = {"auth": {"issuer": "https://idp.example.org/", "audience": "homework-fhir",
                   "jwks_url": "https://idp.example.org/jwks"},
          "public_base_url": "https://homework.example.org"}  # fmt: skip
EPIC = {
    "issuer": "https://fhir.example.org/api/FHIR/R4",
    "jku": ["https://fhir.example.org/api/epic/2019/Security/Open/PublicKeys/530013/530013"],
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("HOMEWORK_FHIR_"):
            monkeypatch.delenv(key)


def test_cds_hooks_is_off_by_default() -> None:
    settings = load_settings(environment="production", api=API_OK)
    assert not settings.cds.enabled and settings.cds.clients == []
    assert settings.cds.algorithms == ["RS384", "ES384"]


def test_a_client_needs_a_jwks_url_or_allowed_jkus() -> None:
    with pytest.raises(SettingsError, match=r"cds.clients.0: .*set jwks_url .* or jku"):
        load_settings(api=API_OK, cds={"clients": [{"issuer": "https://ehr.example.org"}]})


def test_an_issuer_is_listed_once() -> None:
    with pytest.raises(SettingsError, match="listed twice"):
        load_settings(api=API_OK, cds={"clients": [EPIC, EPIC]})


def test_enabled_without_clients_or_with_plain_http_keys_stops_production() -> None:
    with pytest.raises(SettingsError, match=r"cds.clients: none configured"):
        load_settings(environment="production", api=API_OK, cds={"enabled": True})
    plain = {"issuer": "https://ehr.example.org", "jwks_url": "http://ehr.example.org/jwks"}
    with pytest.raises(SettingsError, match=r"cds.clients\[0\]: http://.* plain http"):
        load_settings(environment="production", api=API_OK,
                      cds={"enabled": True, "clients": [plain]})  # fmt: skip
    with pytest.warns(UserWarning, match="plain http"):
        load_settings(environment="development", api=API_OK,
                      cds={"enabled": True, "clients": [plain]})  # fmt: skip


async def test_the_service_answers_at_the_public_base_url_and_links_the_launch() -> None:
    settings = load_settings(environment="production", api=API_OK,
                             cds={"enabled": True, "clients": [EPIC]})  # fmt: skip
    async with open_cds(settings) as cds:
        assert cds is not None
        assert cds.url() == "https://homework.example.org/cds-services"
        assert cds.url("x") == "https://homework.example.org/cds-services/x"
        assert cds.launch_url == "https://homework.example.org/smart/launch"
    custom = settings.model_copy(
        update={"cds": settings.cds.model_copy(update={"launch_url": "https://app.test/go"})}
    )
    async with open_cds(custom) as cds:
        assert cds is not None and cds.launch_url == "https://app.test/go"
    async with open_cds(load_settings(environment="production", api=API_OK)) as cds:
        assert cds is None
