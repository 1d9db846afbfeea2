"""Bulk Data export reading, and the annotated configuration example in deploy/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fhir_adapter.bulk import BulkExportError, read_export
from fhir_adapter.ehr.capabilities import read_problems
from fhir_adapter.settings import SettingsError, load_settings

EXAMPLE = Path(__file__).parents[2] / "deploy" / "config.example.toml"


def test_export_is_read_file_by_file(tmp_path: Path) -> None:
    (tmp_path / "Encounter.ndjson").write_text(
        json.dumps({"resourceType": "Encounter", "id": "e1"}) + "\n\n"
    )
    (tmp_path / "Patient.ndjson").write_text(json.dumps({"resourceType": "Patient", "id": "p1"}))
    (tmp_path / "notes.txt").write_text("ignored")
    assert [r["id"] for r in read_export(tmp_path)] == ["e1", "p1"]


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "Encounter.ndjson line 2: not JSON"), ('["a list"]', "line 2: not a FHIR")],
)
def test_bad_lines_name_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "Encounter.ndjson").write_text(
        '{"resourceType": "Encounter", "id": "e1"}\n' + content
    )
    with pytest.raises(BulkExportError, match=message):
        list(read_export(tmp_path))


def test_a_file_that_is_not_utf8_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "Encounter.ndjson").write_bytes(
        b'{"resourceType": "Encounter", "id": "e1"}\n{"resourceType": "Encounter", "id": "\xe9"}\n'
    )
    with pytest.raises(BulkExportError, match=r"Encounter\.ndjson line 2: not UTF-8.*to UTF-8"):
        list(read_export(tmp_path))


def test_empty_or_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BulkExportError, match=r"no \.ndjson files"):
        list(read_export(tmp_path))
    with pytest.raises(BulkExportError, match="not a directory"):
        list(read_export(tmp_path / "missing"))


def test_config_example_loads_and_names_missing_secrets_in_production() -> None:
    with pytest.warns(UserWarning, match="private_key_file"):
        settings = load_settings(EXAMPLE, environment="development")
    clinic = settings.connection("clinic")
    assert clinic.vendor == "epic" and clinic.write.care_plan_store == "builtin"
    assert "system/DocumentReference.c" in clinic.auth.scopes  # type: ignore[union-attr]
    assert read_problems(clinic) == []  # its scopes cover all the pipeline reads
    with pytest.raises(SettingsError, match="private_key_file"):
        load_settings(EXAMPLE)
