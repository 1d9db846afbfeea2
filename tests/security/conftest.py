"""The security suite: an API over a real store (SQLite and PostgreSQL) per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from fhir_adapter.store import open_store
from tests.security.support import app_over, seed


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    store = open_store(database_url)
    seed(store)
    # A 500 must reach the test as a 500, as a client would see it.
    with TestClient(app_over(store), raise_server_exceptions=False) as test_client:
        yield test_client
    store.close()
