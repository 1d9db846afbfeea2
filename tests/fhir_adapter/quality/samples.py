"""The bundled sample sessions, processed once by the real pipeline (`homework-fhir demo`),
and copied into a fresh store per test (SQLite or PostgreSQL)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fhir_adapter.store import Store, open_store, resources
from mapping.fhir.codes import SID_NOTE


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`homework-fhir demo --no-serve` run once: its data dir holds demo.sqlite3."""
    data_dir = tmp_path_factory.mktemp("demo")
    done = subprocess.run(
        [sys.executable, "-c", "from fhir_adapter.cli import main; main()", "demo",
         "--data-dir", str(data_dir), "--no-serve"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return data_dir


@pytest.fixture(scope="session")
def sample_resources(demo_dir: Path) -> list[dict[str, Any]]:
    """Every resource the demo's backfill of the samples wrote (model, pipeline and all)."""
    demo = open_store(f"sqlite:///{demo_dir / 'demo.sqlite3'}")
    try:
        with demo.session() as session:
            found, _ = resources.search(session, resources.Query("Task", count=10_000))
            bodies = list(found)
            for resource_type in (
                "DocumentReference",
                "Observation",
                "CarePlan",
                "Provenance",
                "Communication",
                "Device",
            ):
                more, _ = resources.search(session, resources.Query(resource_type, count=10_000))
                bodies.extend(more)
    finally:
        demo.close()
    assert len(bodies) > 40, "the demo wrote fewer resources than the samples hold"
    return bodies


@pytest.fixture
def sample_store(database_url: str, sample_resources: list[dict[str, Any]]) -> Iterator[Store]:
    store = open_store(database_url)
    with store.session() as session:
        for body in sample_resources:
            resources.put(session, body)
    yield store
    store.close()


def approve_later(store: Store, encounter: str, when: str) -> None:
    """Re-date `encounter`'s chart note to `when`, as a clinician's approval does: the reviewed
    version, written over the draft in the built-in store, is dated by the approval."""
    with store.session() as session:
        found, _ = resources.search(
            session, resources.Query("DocumentReference", encounter=encounter)
        )
        [note] = [n for n in found if any(i["system"] == SID_NOTE for i in n["identifier"])]
        resources.put(session, {**note, "date": when})
