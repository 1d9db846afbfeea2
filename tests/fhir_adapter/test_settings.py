"""Settings: sources and their priority, placeholder secrets, vendor rules, derived values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fhir_adapter.ehr.keys import generate_key_pair
from fhir_adapter.settings import (
    ClientSecretAuth,
    EncounterPoll,
    FhirStore,
    Settings,
    SettingsError,
    SmartBackendAuth,
    load_settings,
)

API_OK = {
    "api": {
        "auth": {
            "issuer": "https://idp.example.org/",
            "audience": "homework-fhir",
            "jwks_url": "https://idp.example.org/jwks",
        }
    }
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The developer's own HOMEWORK_FHIR_* variables must not leak into these tests.
    import os

    for key in list(os.environ):
        if key.startswith("HOMEWORK_FHIR_"):
            monkeypatch.delenv(key)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return generate_key_pair("ES384", tmp_path / "keys", "k1").private_key_file


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "homework.toml"
    path.write_text(text)
    return path


def test_config_file_env_and_overrides_in_priority_order(
    tmp_path: Path, key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _toml(
        tmp_path,
        f"""
environment = "production"
database_url = "sqlite:///from-file.db"
[api.auth]
issuer = "https://idp.example.org/"
audience = "homework-fhir"
jwks_url = "https://idp.example.org/jwks"
[api]
port = 9000
[ehr.clinic]
base_url = "https://ehr.example.org/fhir/r4/"
vendor = "epic"
page_size = 20
[ehr.clinic.auth]
type = "smart-backend"
client_id = "app-123"
private_key_file = "{key_file}"
kid = "k1"
algorithm = "ES384"
scopes = "system/Encounter.rs system/DocumentReference.c"
jwks_url = "https://homework.example.org/.well-known/jwks.json"
[ehr.clinic.encounter_poll]
scope = "group"
group = "Group/panel"
""",
    )
    monkeypatch.setenv("HOMEWORK_FHIR_API__PORT", "9100")
    monkeypatch.setenv("HOMEWORK_FHIR_EHR__CLINIC__PAGE_SIZE", "40")
    monkeypatch.setenv("HOMEWORK_FHIR_EHR__CLINIC__WRITE__CARE_PLAN_STORE", "ehr")

    settings = load_settings(config, database_url="sqlite:///override.db")

    assert settings.database_url == "sqlite:///override.db"  # keyword beats file
    assert settings.api.port == 9100  # environment beats file
    clinic = settings.connection("clinic")
    assert clinic.name == "clinic"  # from the table key
    assert clinic.base_url == "https://ehr.example.org/fhir/r4"  # trailing slash dropped
    assert clinic.page_size == 40
    assert clinic.write.care_plan_store == "ehr"
    assert isinstance(clinic.auth, SmartBackendAuth)
    assert clinic.auth.scopes == ["system/Encounter.rs", "system/DocumentReference.c"]
    assert clinic.auth.algorithm == "ES384"


def test_config_file_from_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _toml(tmp_path, 'environment = "development"\ndata_dir = "/srv/hw"\n')
    monkeypatch.setenv("HOMEWORK_FHIR_CONFIG_FILE", str(config))
    with pytest.warns(UserWarning, match="api.auth"):
        settings = load_settings()
    assert settings.environment == "development"
    assert settings.database_url == "sqlite:////srv/hw/homework-fhir.sqlite3"


def test_default_database_is_sqlite_under_var() -> None:
    settings = Settings(**API_OK | {"environment": "production"})  # type: ignore[arg-type]
    # API_OK has no key file to check; jwks_url is enough.
    assert settings.database_url == "sqlite:///var/homework-fhir.sqlite3"


@pytest.mark.parametrize("secret", ["changeme", "", "secret", "  ChangeMe "])
def test_placeholder_secret_fails_outside_development(secret: str) -> None:
    ehr = {
        "clinic": {
            "base_url": "https://ehr.example.org/fhir",
            "auth": {"type": "client-secret", "client_id": "app", "client_secret": secret},
        }
    }
    with pytest.raises(SettingsError) as info:
        load_settings(environment="staging", ehr=ehr, **API_OK)
    assert "ehr.clinic.auth.client_secret: missing or a placeholder" in str(info.value)

    with pytest.warns(UserWarning, match="client_secret"):
        settings = load_settings(environment="development", ehr=ehr, **API_OK)
    auth = settings.connection("clinic").auth
    assert isinstance(auth, ClientSecretAuth)


def test_all_problems_reported_together() -> None:
    ehr = {
        "a": {
            "base_url": "https://a.example.org/fhir",
            "auth": {"type": "client-secret", "client_id": "x", "client_secret": "changeme"},
        },
        "b": {
            "base_url": "https://b.example.org/fhir",
            "auth": {
                "type": "smart-backend",
                "client_id": "y",
                "private_key_file": "/nonexistent/key.pem",
                "kid": "k",
                "scopes": "system/Encounter.rs",
            },
        },
    }
    with pytest.raises(SettingsError) as info:
        load_settings(
            environment="production",
            ehr=ehr,
            database_url="postgresql+psycopg://hw:changeme@db/hw",
        )
    message = str(info.value)
    for expected in (
        "ehr.a.auth.client_secret",
        "ehr.b.auth.private_key_file: /nonexistent/key.pem not found",
        "homework-fhir keys generate",
        "api.auth: set jwks_url or public_key_file",
        "api.auth.issuer: not set",
        "database_url: the password is a placeholder",
    ):
        assert expected in message


def test_oracle_health_refuses_wildcard_scopes(key_file: Path) -> None:
    auth = {
        "type": "smart-backend",
        "client_id": "app",
        "private_key_file": str(key_file),
        "kid": "k1",
        "algorithm": "ES384",
        "scopes": "system/Encounter.read system/*.write",
    }
    ehr = {"oh": {"base_url": "https://oh.example.org/r4", "vendor": "oracle-health", "auth": auth}}
    with pytest.raises(SettingsError, match=r"refuses wildcard scopes \['system/\*.write'\]"):
        load_settings(environment="production", ehr=ehr, **API_OK)
    # The same scopes are fine for a generic server.
    ehr["oh"]["vendor"] = "generic"
    assert load_settings(environment="production", ehr=ehr, **API_OK).ehr["oh"]


def test_epic_backend_app_needs_a_jwks_url(key_file: Path) -> None:
    auth = {
        "type": "smart-backend",
        "client_id": "app",
        "private_key_file": str(key_file),
        "kid": "k1",
        "algorithm": "ES384",
        "scopes": ["system/Encounter.read"],
    }
    poll = {"scope": "group", "group": "Group/panel"}
    ehr = {"epic": {"base_url": "https://epic.example.org/fhir", "vendor": "epic", "auth": auth,
                    "encounter_poll": poll}}  # fmt: skip
    with pytest.raises(SettingsError, match=r"set auth\.jwks_url"):
        load_settings(environment="production", ehr=ehr, **API_OK)
    auth["jwks_url"] = "https://homework.example.org/.well-known/jwks.json"
    assert load_settings(environment="production", ehr=ehr, **API_OK).ehr["epic"].vendor == "epic"


def test_smart_backend_needs_explicit_scopes(key_file: Path) -> None:
    auth = {
        "type": "smart-backend",
        "client_id": "app",
        "private_key_file": str(key_file),
        "kid": "k1",
        "scopes": "",
    }
    with pytest.raises(SettingsError, match=r"ehr.x.auth.smart-backend.scopes"):
        load_settings(
            environment="production",
            ehr={"x": {"base_url": "https://x.example.org/fhir", "auth": auth}},
            **API_OK,
        )


def test_care_plan_store_can_be_a_separate_fhir_store(tmp_path: Path) -> None:
    config = _toml(
        tmp_path,
        """
environment = "production"
[api.auth]
issuer = "i"
audience = "a"
jwks_url = "https://idp.example.org/jwks"
[ehr.clinic]
base_url = "https://ehr.example.org/fhir"
[ehr.clinic.write.chart]
communication = true
[ehr.clinic.write.care_plan_store]
base_url = "http://fhir-store:8080/fhir"
[ehr.clinic.write.care_plan_store.auth]
type = "client-secret"
client_id = "homework"
client_secret = "a-real-secret-from-a-vault"
""",
    )
    clinic = load_settings(config).connection("clinic")
    store = clinic.write.care_plan_store
    assert isinstance(store, FhirStore)
    assert store.base_url == "http://fhir-store:8080/fhir"
    assert clinic.write.chart.communication is True
    assert [label for label, _ in clinic.fhir_stores()] == [
        "ehr.clinic",
        "ehr.clinic.write.care_plan_store",
    ]


def test_separate_store_secrets_are_checked_too(tmp_path: Path) -> None:
    ehr = {
        "clinic": {
            "base_url": "https://ehr.example.org/fhir",
            "write": {
                "care_plan_store": {
                    "base_url": "http://store/fhir",
                    "auth": {"type": "client-secret", "client_id": "c", "client_secret": "secret"},
                }
            },
        }
    }
    with pytest.raises(SettingsError, match=r"ehr.clinic.write.care_plan_store.auth.client_secret"):
        load_settings(environment="production", ehr=ehr, **API_OK)


def test_dev_embedded_api_auth_only_in_development() -> None:
    with pytest.raises(SettingsError, match="allowed only with environment = 'development'"):
        load_settings(environment="production", api={"auth": {"mode": "dev-embedded"}})
    settings = load_settings(environment="development", api={"auth": {"mode": "dev-embedded"}})
    assert settings.api.auth.mode == "dev-embedded"


def test_bad_values_give_one_line_per_problem(tmp_path: Path) -> None:
    config = _toml(
        tmp_path,
        """
environment = "testing"
[ehr.Main-Clinic]
base_url = "ftp://nope"
""",
    )
    with pytest.raises(SettingsError) as info:
        load_settings(config)
    message = str(info.value)
    assert message.startswith(f"invalid settings (config file {config}):")
    assert "environment: Input should be 'development', 'staging' or 'production'" in message
    assert "ehr.Main-Clinic.base_url: 'ftp://nope' is not an http(s) URL" in message


def test_missing_config_file_and_unknown_connection(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"config file .* not found"):
        load_settings(tmp_path / "nope.toml")
    settings = load_settings(environment="development", api={"auth": {"mode": "dev-embedded"}})
    with pytest.raises(SettingsError, match=r"no EHR connection 'x' \(known: none configured\)"):
        settings.connection("x")


def test_a_variable_that_is_not_json_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    # With no config file the message used to say "cannot read None".
    monkeypatch.setenv("HOMEWORK_FHIR_EHR", "{not json")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("cannot read the environment variable HOMEWORK_FHIR_EHR: ")
    assert "give it as JSON" in message and "None" not in message


def test_triton_backend_needs_a_url() -> None:
    with pytest.raises(SettingsError, match=r"set model\.triton_url"):
        load_settings(environment="production", model={"backend": "triton"}, **API_OK)
    settings = load_settings(
        environment="production",
        model={"backend": "triton", "triton_url": "triton:8001", "triton_protocol": "grpc"},
        **API_OK,
    )
    assert (settings.model.triton_url, settings.model.triton_protocol) == ("triton:8001", "grpc")


def test_encounter_poll_search_params() -> None:
    poll = EncounterPoll(
        statuses=["finished", "in-progress"],
        class_codes=["AMB", "VR"],
        type_codes=["http://snomed.info/sct|108311000"],
        lookback=timedelta(hours=6),
        extra_params={"location": "Location/psych-1"},
    )
    now = datetime(2025, 3, 1, 12, 30, tzinfo=UTC)
    assert poll.search_params(now)[0] == ("_lastUpdated", "ge2025-03-01T06:30:00Z")
    assert poll.search_params(now, since="date") == [
        ("date", "ge2025-03-01T06:30:00Z"),
        ("status", "finished,in-progress"),
        ("class", "AMB,VR"),
        ("type", "http://snomed.info/sct|108311000"),
        ("location", "Location/psych-1"),
    ]
    with pytest.raises(ValueError, match="timezone-aware"):
        poll.search_params(datetime(2025, 3, 1, 12, 30))


def test_settings_are_frozen() -> None:
    settings = load_settings(environment="development", api={"auth": {"mode": "dev-embedded"}})
    with pytest.raises(ValueError, match="frozen"):
        settings.environment = "production"  # type: ignore[misc]


def test_the_operating_point_comes_from_the_card_and_settings_override_it(tmp_path: Path) -> None:
    import json

    from fhir_adapter.model_backend import operating_point
    from inference_server.decision import OperatingPoint

    card = {
        "operating_points": {
            "balanced": {"homework": 0.4, "review": 0.45},
            "precision": {"homework": 0.8, "review": 0.7},
        }
    }
    (tmp_path / "model_card.json").write_text(json.dumps(card))
    model = {"model_dir": str(tmp_path)}
    # The service writes into charts: the surer point unless a deployment picks another.
    assert operating_point(Settings(**API_OK, model=model)) == OperatingPoint(0.8, 0.7)
    found_more = Settings(**API_OK, model={**model, "operating_point": "balanced"})
    assert operating_point(found_more) == OperatingPoint(0.4, 0.45)
    own = Settings(**API_OK, model={**model, "homework_threshold": 0.9})
    assert operating_point(own) == OperatingPoint(0.9, 0.7)
    with pytest.raises(ValueError, match="homework_threshold"):
        Settings(**API_OK, model={"homework_threshold": 1.5})
    with pytest.raises(ValueError, match="operating_point"):
        Settings(**API_OK, model={"operating_point": "recall"})
    (tmp_path / "model_card.json").write_text(
        json.dumps({"operating_points": {"x": card["operating_points"]["balanced"]}})
    )
    with pytest.raises(ValueError, match=r"model\.operating_point: the model card has no"):
        operating_point(Settings(**API_OK, model=model))


def test_the_job_queue_needs_postgresql() -> None:
    with pytest.raises(SettingsError, match=r"queue\.backend 'procrastinate' keeps its jobs"):
        load_settings(environment="development", queue={"backend": "procrastinate"})
    pg = "postgresql+psycopg://homework@db/homework"
    settings = load_settings(
        environment="development", database_url=pg, queue={"backend": "procrastinate"}
    )
    assert (settings.queue.backend, settings.queue.concurrency) == ("procrastinate", 2)


def test_epic_and_oracle_poll_a_group_per_patient(key_file: Path) -> None:
    auth = {"type": "smart-backend", "client_id": "c", "private_key_file": str(key_file),
            "kid": "k", "algorithm": "ES384", "scopes": "system/Encounter.rs",
            "jwks_url": "https://svc.example.org/.well-known/jwks.json"}  # fmt: skip
    base = {"base_url": "https://ehr.example.org/fhir", "auth": auth}
    for vendor in ("epic", "oracle-health"):
        with pytest.raises(SettingsError, match=f"vendor {vendor} searches encounters per patient"):
            load_settings(environment="development", ehr={"x": {**base, "vendor": vendor}})
    with pytest.raises(SettingsError, match=r"set encounter_poll\.group"):
        load_settings(environment="development",
                      ehr={"x": {**base, "encounter_poll": {"scope": "group"}}})  # fmt: skip
    panel = {"scope": "group", "group": "Group/bh-panel"}
    epic, oracle = (
        load_settings(
            environment="development", ehr={"x": {**base, "vendor": v, "encounter_poll": panel}}
        )
        for v in ("epic", "oracle-health")
    )
    generic = load_settings(environment="development", ehr={"x": base})
    # Epic's Encounter search filters by date; Oracle Health's and FHIR's by _lastUpdated.
    assert epic.ehr["x"].poll_since() == "date"
    assert oracle.ehr["x"].poll_since() == "last-updated"
    assert generic.ehr["x"].poll_since() == "last-updated"
