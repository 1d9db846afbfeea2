"""Fixtures for the pipeline's end-to-end tests: real sekmet-fhir, real Triton, real databases.

- `sekmet_server` (session, tests/fhir_adapter/sekmet_server.py): the EHR. Each test seeds a
  clinic of its own (`seed.seed_clinic`) and polls only that clinic's encounters.
- `pipeline_triton` (session): a real Triton serving the SHIPPED weights
  (inference_server/weights), so the detections are the product's own. Restartable on fixed
  ports, for the test that takes it down mid-run.
- `triton_backend` (per test): a `TritonBackend` on that server (its HTTP client belongs to
  the test's event loop).
- `store`: our store on SQLite, fresh per test.

Nothing is skipped: a server that cannot start fails the test with its log.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from fhir_adapter.settings import ModelSettings
from fhir_adapter.store import Store, open_store
from inference_server import decision
from inference_server.classifier import packaged_card
from inference_server.client import TritonBackend
from inference_server.triton_server import build_repository
from tests.fhir_adapter.pipeline.support import TritonHandle, shipped_weights


@pytest.fixture(scope="session")
def pipeline_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonHandle]:
    root = tmp_path_factory.mktemp("pipeline-triton")
    repo = build_repository(root / "repository", weights_dir=shipped_weights(), precision="fp32")
    handle = TritonHandle(repo, root)
    handle.start()
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
async def triton_backend(pipeline_triton: TritonHandle) -> AsyncIterator[TritonBackend]:
    if not pipeline_triton.running():  # a test that stopped it failed before restarting it
        pipeline_triton.start()
    # At the service's default operating point, as make_backend would build it.
    point = decision.from_card(packaged_card(), ModelSettings().operating_point)
    backend = TritonBackend(pipeline_triton.url, timeout_s=30.0, point=point)
    try:
        yield backend
    finally:
        await backend.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = open_store(f"sqlite:///{tmp_path / 'homework.sqlite3'}")
    try:
        yield opened
    finally:
        opened.close()
