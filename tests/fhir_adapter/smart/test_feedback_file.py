"""The feedback export quotes session turns (PHI): the file is its owner's alone."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime
from pathlib import Path

from fhir_adapter.smart.feedback import export
from fhir_adapter.store import open_store
from fhir_adapter.store.models import FeedbackRow


def test_the_export_is_readable_by_its_owner_alone(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'store.sqlite3'}")
    record = {"task": "Task/t1", "decision": "reject", "therapist_quote": "try the walk"}
    with store.session() as session:
        session.add(FeedbackRow(task="Task/t1", decision="reject", record=record,
                                created_at=datetime.now(UTC)))  # fmt: skip
    out = tmp_path / "feedback.jsonl"
    out.write_text("an older export\n")
    out.chmod(0o644)  # an earlier file, world-readable: the export narrows it
    fresh = tmp_path / "fresh.jsonl"
    try:
        assert export(store, out) == 1 and export(store, fresh) == 1
    finally:
        store.close()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    assert [json.loads(line) for line in out.read_text().splitlines()] == [record]
