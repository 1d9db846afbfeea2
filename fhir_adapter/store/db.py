"""Engine, sessions and migrations.

`open_store(url)` creates the engine, applies Alembic migrations up to head and returns a
`Store`; nothing touches the database at import time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# PostgreSQL aborts one of two transactions that wait on each other's row locks
# (deadlock_detected) or that it cannot order (serialization_failure); the other commits.
RETRY_SQLSTATES = frozenset({"40P01", "40001"})
T = TypeVar("T")


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Alembic's ConfigParser treats % as interpolation; URLs may carry %-escapes.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # Foreign keys are off by default in SQLite; WAL lets the API read while the job writes.
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False}, hide_parameters=True
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, hide_parameters=True)


class Store:
    """The database handle: a sessionmaker over one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed on success, rolled back on any error."""
        with self._sessions.begin() as session:
            yield session

    def run(self, work: Callable[[Session], T], attempts: int = 3) -> T:
        """`work` in a unit of work, run again (from the start, in a new transaction) where the
        database aborted it for another transaction it waited on: run again, it reads what that
        one committed. Only for work whose effects are all in the database."""
        for attempt in range(1, attempts + 1):
            try:
                with self.session() as session:
                    return work(session)
            except OperationalError as exc:
                sqlstate = getattr(exc.orig, "sqlstate", None)
                if sqlstate not in RETRY_SQLSTATES or attempt == attempts:
                    raise
                log.warning("transaction aborted by the database (SQLSTATE %s, another one "
                            "held its rows); running it again, attempt %d of %d", sqlstate,
                            attempt + 1, attempts)  # fmt: skip
        raise AssertionError("unreachable: the last attempt returns or raises")

    def refresh_statistics(self) -> None:
        """Let SQLite's planner know the tables' sizes (PostgreSQL's autovacuum does this for
        it): without statistics every search read all rows of its type (115 ms at 100 k
        resources, 4 ms after). Run at open and after each pass.

        Every index is read in full (about 0.1 s at 100 k resources). A sample
        (`analysis_limit`) reads only the first entries of each index, all of one resource type
        and one therapist in an index that starts with them: at 100 k it counted 1,000 Tasks
        where a therapist has 20,000 and sent a therapist's quarter through the date index
        (85 ms instead of 8, bench/store_scale.py)."""
        if self.engine.dialect.name != "sqlite":
            return
        with self.engine.begin() as connection:
            connection.exec_driver_sql("PRAGMA analysis_limit=0")
            connection.exec_driver_sql("ANALYZE")

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def close(self) -> None:
        self.engine.dispose()


# PostgreSQL advisory lock key under which migrations run: processes starting together
# (replicas, a cron run beside a worker) queue on it and the later ones find head applied.
MIGRATION_LOCK_KEY = 0x686F6D65776F726B  # "homework"


def open_store(url: str) -> Store:
    """Connect, migrate to head (one process at a time), and return the store."""
    engine = make_engine(url)
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            # Held to the end of this transaction, which is the migration's (DDL is
            # transactional on PostgreSQL).
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
        config = alembic_config(url)
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    store = Store(engine)
    store.refresh_statistics()
    return store
