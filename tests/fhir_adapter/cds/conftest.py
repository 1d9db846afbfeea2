"""CDS Hooks over a real store (SQLite and PostgreSQL) and JWK Sets served on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from fhir_adapter.store import Store, open_store
from tests.fhir_adapter.cds.support import JwksServer, app_over, jwks_server, seed


@pytest.fixture
def server() -> Iterator[JwksServer]:
    with jwks_server() as served:
        yield served


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    opened = open_store(database_url)
    seed(opened)
    yield opened
    opened.close()


@pytest.fixture
def client(store: Store, server: JwksServer) -> Iterator[TestClient]:
    # A 500 must reach the test as a 500, as an EHR would see it.
    with TestClient(app_over(store, server), raise_server_exceptions=False) as test_client:
        yield test_client
