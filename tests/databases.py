"""Database fixtures shared by store, pipeline and API tests: SQLite and the local PostgreSQL.

PostgreSQL is real (127.0.0.1:5432, trust auth, as on the dev and CI machines; override with
HOMEWORK_FHIR_TEST_PG_ADMIN_URL). Each test session creates a database of its own and drops
it afterwards. If PostgreSQL is unreachable the tests fail, they are not skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

PG_ADMIN_URL = os.environ.get(
    "HOMEWORK_FHIR_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _sqlalchemy_url(conninfo: str, dbname: str) -> str:
    base = conninfo.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{dbname}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL per test, on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    yield from postgres_database()


def postgres_database() -> Iterator[str]:
    """Create a fresh PostgreSQL database, yield its SQLAlchemy URL, drop it afterwards."""
    name = f"homework_fhir_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({exc}); start it "
            "(pg_ctlcluster <version> main start) or set HOMEWORK_FHIR_TEST_PG_ADMIN_URL"
        )
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _sqlalchemy_url(PG_ADMIN_URL, name)
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
