"""The CLI's transcript readers on hostile DocumentReferences: exit 2 and one line naming the
place, never a traceback (README's promise for bad input)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fhir_adapter.cli import app


@pytest.mark.parametrize(
    "content",
    [
        [{"attachment": None}],
        [{"attachment": {"url": 5, "contentType": "text/plain"}}],
        [{"attachment": {"data": 5, "contentType": "text/plain"}}],
        [{"attachment": {"contentType": ["text/plain"]}}],
        [5],
        {"attachment": {}},
    ],
    ids=["null-attachment", "numeric-url", "numeric-data", "list-type", "number", "object"],
)
def test_hostile_documents_exit_2_with_one_line(tmp_path: Path, content: object) -> None:
    path = tmp_path / "doc.json"
    document = {"resourceType": "DocumentReference", "status": "current", "content": content}
    path.write_text(json.dumps(document))
    result = CliRunner().invoke(app, ["transcript", str(path)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: ")
