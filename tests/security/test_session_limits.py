"""One session cannot flood the service: a transcript over `pipeline.max_transcript_chars` or
with more micro-dialogues than `pipeline.max_micro_dialogues` is set aside (step `failed`)
with the reason on the encounter, nothing drafted from it, never cut short silently; raising
the bound and retrying processes it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fhir_adapter.pipeline.jobs import ingest_resources
from fhir_adapter.runtime import open_runtime
from fhir_adapter.samples.build import build_resources
from fhir_adapter.settings import PipelineSettings, Settings
from fhir_adapter.store import resources, work
from fhir_adapter.store.resources import Query
from tests.fhir_adapter.pipeline.support import settings_for

pytestmark = pytest.mark.integration


def _settings(tmp_path: Path, **limits: Any) -> Settings:
    return settings_for(tmp_path, [], pipeline=PipelineSettings(**limits))


async def test_sessions_over_the_bounds_are_set_aside_with_the_reason(tmp_path: Path) -> None:
    pushed = [r for kind in build_resources().values() for r in kind]
    async with open_runtime(_settings(tmp_path, max_micro_dialogues=10)) as runtime:
        summary = await ingest_resources(runtime, pushed)
        with runtime.store.session() as session:
            failed = work.listing(session, steps=["failed"])
            done = work.listing(session, steps=["done"])
            tasks, _ = resources.search(session, Query("Task", count=1000))
        assert failed and summary.encounters_failed == 0  # set aside, not an error
        for row in failed:
            assert "over pipeline.max_micro_dialogues (10)" in str(row.last_error)
            assert row.state["failed_at"] == "detect"
        drafted_for = {t["encounter"]["reference"] for t in tasks}
        assert not drafted_for & {row.encounter for row in failed}
        assert len(failed) + len(done) == 9

    async with open_runtime(_settings(tmp_path)) as runtime:  # the default bounds
        with runtime.store.session() as session:
            retried = work.retry(session, "failed", encounters=[r.encounter for r in failed])
        assert len(retried) == len(failed)
        await ingest_resources(runtime, [])
        with runtime.store.session() as session:
            assert len(work.listing(session, steps=["done"])) == 9


async def test_a_long_transcript_is_refused_before_the_model_reads_it(tmp_path: Path) -> None:
    pushed = [r for kind in build_resources().values() for r in kind]
    async with open_runtime(_settings(tmp_path, max_transcript_chars=1000)) as runtime:
        await ingest_resources(runtime, pushed)
        with runtime.store.session() as session:
            failed = work.listing(session, steps=["failed"])
        assert len(failed) == 9
        assert all("over pipeline.max_transcript_chars (1000)" in str(r.last_error) for r in failed)
