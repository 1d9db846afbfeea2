"""No log line of a full pipeline run carries transcript text: not in normal operation, not
when the database fails with the resource in its parameters, not when a library error quotes
its input. What is checked is the operators' log (the handler every process logs through)."""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.task import Task
from sqlalchemy import text, update

from fhir_adapter.commands._common import log_handler
from fhir_adapter.log_redaction import redacted_traceback
from fhir_adapter.pipeline import draft
from fhir_adapter.samples.build import build_resources
from fhir_adapter.service import build_service, dev_token
from fhir_adapter.store import work
from fhir_adapter.store.models import EncounterRow
from mapping.transcripts import read_document
from tests.fhir_adapter.pipeline.support import settings_for

pytestmark = pytest.mark.integration


@pytest.fixture
def operator_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = log_handler(stream)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


N = 5  # words in a row that make a phrase: unmistakable, and short enough to survive the
# truncation libraries apply to what they quote


def _ngrams(text: str) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9']+", text.lower())
    return {tuple(words[i : i + N]) for i in range(len(words) - N + 1)}


def _phrases(resources: list[dict[str, Any]]) -> set[tuple[str, ...]]:
    """Every run of N words in the sample transcripts' utterances."""
    found: set[tuple[str, ...]] = set()
    for doc in resources:
        for utterance in read_document(doc).utterances:
            found |= _ngrams(utterance.text)
    assert len(found) > 500
    return found


def _until_complete(client: TestClient, url: str, auth: dict[str, str]) -> None:
    deadline = time.monotonic() + 300
    while client.get(url, headers=auth).status_code == 202:
        assert time.monotonic() < deadline, "the push did not complete"
        time.sleep(0.5)


def test_no_log_line_of_a_pipeline_run_carries_transcript_text(
    tmp_path: Path, operator_log: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    by_type = build_resources()
    pushed = [r for kind in by_type.values() for r in kind]
    phrases = _phrases(by_type["DocumentReference"])
    settings = settings_for(tmp_path, [])
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"resource": r} for r in pushed]}  # fmt: skip
    auth = {"Authorization": f"Bearer {dev_token(settings, 'system/Bundle.c')}"}

    # 1. The database refuses a write whose parameters hold the transcript.
    real_stage_source = work.stage_source

    def failing_stage_source(
        session: Any, connection: str, resource: dict[str, Any], *a: Any
    ) -> Any:
        if resource["resourceType"] == "DocumentReference":
            session.execute(text("INSERT INTO no_such_table VALUES (:body)"),
                            {"body": str(resource)})  # fmt: skip
        return real_stage_source(session, connection, resource, *a)

    # 2. A library error quoting its input (pydantic repeats what it refused) while drafting.
    def failing_build(ctx: Any, detections: Any, *a: Any, **kw: Any) -> Any:
        quote = detections[0].dialogue.therapist.text if detections else "no detections"
        Task.model_validate(
            {"resourceType": "Task", "status": "draft", "intent": "proposal", "authoredOn": quote}
        )
        raise AssertionError("unreachable: the Task above is invalid")

    service = build_service(settings)
    with TestClient(service.app, raise_server_exceptions=False) as client:
        monkeypatch.setattr(work, "stage_source", failing_stage_source)
        assert client.post("/ingest", json=bundle, headers=auth).status_code == 500
        monkeypatch.setattr(work, "stage_source", real_stage_source)

        monkeypatch.setattr(draft, "build_session_resources", failing_build)
        first = client.post("/ingest", json=bundle, headers=auth)
        assert first.status_code == 202
        deadline = time.monotonic() + 120
        while "ValidationError" not in operator_log.getvalue():
            assert time.monotonic() < deadline, "the draft step never ran"
            time.sleep(0.5)
        monkeypatch.undo()

        # 3. A clean run to the end (the failed sessions retried), at DEBUG.
        with service.store.session() as session:
            session.execute(update(EncounterRow).values(retry_at=None))  # due now
        again = client.post("/ingest", json=bundle, headers=auth)
        assert again.status_code == 202
        _until_complete(client, again.headers["Content-Location"], auth)

    log = operator_log.getvalue()
    # Not one utterance of any transcript...
    leaked = phrases & _ngrams(log)
    assert not leaked, f"{len(leaked)} transcript phrases in the log, e.g. {sorted(leaked)[:3]}"
    # ...though the failures were logged, with their types and frames.
    assert "OperationalError" in log and "no_such_table" in log
    assert "pydantic_core._pydantic_core.ValidationError: <message withheld" in log


def test_a_redacted_traceback_keeps_frames_and_safe_messages() -> None:
    private = "".join(["the client said ", "something private"])  # not in a source line
    try:
        try:
            raise KeyError(private)
        except KeyError as exc:
            raise TimeoutError("model server did not answer in 30 s") from exc
    except TimeoutError as exc:
        rendered = redacted_traceback(exc)
    assert private not in rendered
    assert "KeyError: <message withheld" in rendered
    assert "TimeoutError: model server did not answer in 30 s" in rendered
    assert "test_logs.py" in rendered  # the frames stay
