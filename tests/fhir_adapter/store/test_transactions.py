"""`Store.run`: a unit of work the database aborted for another one it waited on (a deadlock)
runs again and commits. On the local PostgreSQL only: SQLite serialises writers, so two of its
transactions never wait on each other's rows."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from fhir_adapter.store import Store, open_store, outbox
from fhir_adapter.store.models import OutboxRow
from tests.databases import postgres_database


@pytest.fixture
def store() -> Iterator[Store]:
    for url in postgres_database():
        opened = open_store(url)
        yield opened
        opened.close()


def _two_rows(store: Store) -> tuple[int, int]:
    with store.session() as session:
        first, second = (outbox.enqueue(session, "c", outbox.CHART, ("urn:t", value),
                                        {"resourceType": "Basic", "id": value})
                         for value in ("a", "b"))  # fmt: skip
        return first.id, second.id


def _lock(session: Session, row_id: int) -> None:
    session.scalar(select(OutboxRow).where(OutboxRow.id == row_id).with_for_update())


def _crossed(store: Store, attempts: int) -> tuple[list[str], list[object]]:
    """Two units of work that lock the same two rows in opposite orders, each holding its first
    while the other takes its own (on their first run): PostgreSQL aborts one of them."""
    a, b = _two_rows(store)
    both_hold = threading.Barrier(2, timeout=10)
    runs: list[str] = []

    def work(name: str, first: int, second: int) -> Callable[[Session], str]:
        def run(session: Session) -> str:
            runs.append(name)
            _lock(session, first)
            if runs.count(name) == 1:
                both_hold.wait()
            _lock(session, second)
            row = session.get(OutboxRow, first, populate_existing=True)
            assert row is not None
            row.last_error = f"by {name}"
            return name

        return run

    outcomes: list[object] = []
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(store.run, work("x", a, b), attempts),
                   pool.submit(store.run, work("y", b, a), attempts)]  # fmt: skip
        for future in futures:
            try:
                outcomes.append(future.result(timeout=30))
            except OperationalError as exc:
                outcomes.append(exc)
    return runs, outcomes


def test_a_unit_of_work_aborted_by_a_deadlock_runs_again_and_commits(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    runs, outcomes = _crossed(store, attempts=3)
    assert outcomes == ["x", "y"]
    assert sorted(runs) in (["x", "x", "y"], ["x", "y", "y"])  # one of them ran twice
    with store.session() as session:
        errors = sorted(str(e) for e in session.scalars(select(OutboxRow.last_error)))
    assert errors == ["by x", "by y"]  # both committed
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith("transaction aborted by the database (SQLSTATE 40P01")


def test_without_another_attempt_the_deadlock_is_raised(store: Store) -> None:
    """What `run` guards against: one of the two is aborted, nothing of it committed."""
    runs, outcomes = _crossed(store, attempts=1)
    assert sorted(runs) == ["x", "y"]
    [aborted] = [o for o in outcomes if isinstance(o, OperationalError)]
    assert getattr(aborted.orig, "sqlstate", None) == "40P01"
    with store.session() as session:
        errors = [e for e in session.scalars(select(OutboxRow.last_error)) if e is not None]
    assert errors == [next(f"by {o}" for o in outcomes if isinstance(o, str))]


def test_other_errors_are_not_run_again(store: Store) -> None:
    runs: list[int] = []

    def work(session: Session) -> None:
        runs.append(1)
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        store.run(work)
    assert runs == [1]
