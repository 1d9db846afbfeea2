"""Our ViewDefinitions materialised as tables in the store's database, and as CSV/Parquet.

A quality team points its BI tool at `homework_sessions`, `homework_tasks` and
`homework_scores` (SQLite or PostgreSQL). `materialise` builds each table from the current
resources: rows go into `<name>__new`, which then replaces `<name>` in one transaction, so a
reader sees the old table or the new one, never a half-filled one. Later refreshes replace only
the rows of resources changed since (by `last_updated`), so the pipeline refreshes after every
pass. Times are ISO 8601 text (ours are UTC, `Z`), which both databases and every BI tool
compare as written.
"""

from __future__ import annotations

import csv
import hashlib
import json
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Integer,
    MetaData,
    Numeric,
    Table,
    Text,
    delete,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeEngine

from fhir_adapter.store import Store, leases
from fhir_adapter.store.models import ResourceRow
from fhir_adapter.store.work import get_cursor, set_cursor
from mapping.quality.viewdef import Column as ViewColumn
from mapping.quality.viewdef import CompiledView, compile_view
from mapping.quality.views import VIEW_NAMES, view_definition

__all__ = [
    "QUERIES",
    "ExportFormat",
    "ViewsBusyError",
    "compiled_views",
    "export",
    "materialise",
    "query_sql",
    "run_query",
]

ExportFormat = Literal["csv", "parquet"]
_BATCH = 500  # resources read, and rows inserted, per round trip
# FHIR types -> column types; everything else (strings, codes, ids, dates) is text.
_SQL_TYPES: dict[str, Callable[[], TypeEngine[Any]]] = {
    "integer": Integer,
    "positiveInt": Integer,
    "unsignedInt": Integer,
    "decimal": lambda: Numeric(asdecimal=True),
    "boolean": Boolean,
}
Progress = Callable[[str, int], None]  # (view name, rows so far)
CURSOR = "quality-views"  # cursor rows: (CURSOR, view name) -> fingerprint|watermark
VIEWS_LEASE = "quality-views"
VIEWS_LEASE_TTL = timedelta(hours=1)  # a full rebuild of a large store can take minutes
# Changes re-read before the watermark: a write stamped before it may commit after it (a
# long transaction); re-reading a row is harmless, missing one is not.
OVERLAP = timedelta(minutes=10)


def compiled_views() -> list[tuple[str, CompiledView]]:
    """Each view's table name (its ViewDefinition `name`) and the view, compiled once."""
    return [(name, compile_view(view_definition(name))) for name in VIEW_NAMES]


def _sql_type(column: ViewColumn) -> TypeEngine[Any]:
    if column.collection:
        return JSON()
    make = _SQL_TYPES.get(column.type or "")
    return make() if make else Text()


def _table(view: CompiledView, name: str, metadata: MetaData) -> Table:
    return Table(name, metadata, *(Column(c.name, _sql_type(c)) for c in view.columns))


def _rows(
    connection: Connection, view: CompiledView, since: datetime | None = None
) -> Iterator[dict[str, Any]]:
    query = select(ResourceRow.body).where(ResourceRow.resource_type == view.resource)
    if since is not None:
        query = query.where(ResourceRow.last_updated >= since)
    query = query.order_by(ResourceRow.id).execution_options(yield_per=_BATCH)
    for body in connection.execute(query).scalars():
        yield from view.rows(body)


def _batches(rows: Iterable[Any]) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for row in rows:
        batch.append(row)
        if len(batch) == _BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


class ViewsBusyError(RuntimeError):
    """Another process is refreshing the views."""


@dataclass(frozen=True)
class _State:
    """What a table was built from: the definition's fingerprint and the newest change read."""

    fingerprint: str
    watermark: datetime

    def encode(self) -> str:
        return f"{self.fingerprint}|{self.watermark.isoformat()}"

    @staticmethod
    def decode(value: str | None) -> _State | None:
        fingerprint, _, when = (value or "").partition("|")
        try:
            return _State(fingerprint, datetime.fromisoformat(when)) if when else None
        except ValueError:
            return None


def _fingerprint(name: str) -> str:
    canonical = json.dumps(view_definition(name), sort_keys=True).encode()
    return hashlib.sha256(canonical).hexdigest()[:16]


def _newest(connection: Connection, resource_type: str) -> datetime:
    found = connection.execute(
        select(func.max(ResourceRow.last_updated)).where(ResourceRow.resource_type == resource_type)
    ).scalar()
    return found if isinstance(found, datetime) else datetime(1970, 1, 1, tzinfo=UTC)


def _rebuild(
    connection: Connection, name: str, view: CompiledView, progress: Progress | None
) -> int:
    """Fill `<name>__new` and swap it in (one transaction: readers see old or new)."""
    metadata = MetaData()
    staging = _table(view, f"{name}__new", metadata)
    final = _table(view, name, metadata)
    staging.drop(connection, checkfirst=True)
    staging.create(connection)
    count = 0
    for batch in _batches(_rows(connection, view)):
        connection.execute(insert(staging), batch)
        count += len(batch)
        if progress:
            progress(name, count)
    final.drop(connection, checkfirst=True)
    connection.exec_driver_sql(f'ALTER TABLE "{name}__new" RENAME TO "{name}"')
    return count


def _update(
    connection: Connection, name: str, view: CompiledView, since: datetime,
    progress: Progress | None,
) -> int:  # fmt: skip
    """Replace the rows of resources changed since `since`: a changed resource's rows are
    deleted, then its current rows inserted (it may have left the view)."""
    table = _table(view, name, MetaData())
    changed = select(ResourceRow.id).where(
        ResourceRow.resource_type == view.resource, ResourceRow.last_updated >= since
    )
    for ids in _batches(connection.execute(changed).scalars().all()):
        keys = [f"{view.resource}/{rid}" for rid in ids]
        connection.execute(delete(table).where(table.c.id.in_(keys)))
    count = 0
    for batch in _batches(_rows(connection, view, since)):
        connection.execute(insert(table), batch)
        count += len(batch)
        if progress:
            progress(name, count)
    return count


def materialise(
    store: Store,
    progress: Progress | None = None,
    *,
    full: bool = False,
    overlap: timedelta = OVERLAP,
) -> dict[str, int]:
    """Bring every view's table up to date; returns the rows written per view.

    A table is built whole the first time, when its ViewDefinition changed, or with `full`;
    otherwise only the rows of resources changed since the last refresh are replaced (read
    with an overlap, so a write committed late is not missed). One process at a time: another
    one's refresh raises ViewsBusyError.
    """
    owner = f"views:{uuid.uuid4().hex}"
    if not leases.acquire(store, VIEWS_LEASE, owner, ttl=VIEWS_LEASE_TTL):
        raise ViewsBusyError("another process is refreshing the views; try again later")
    try:
        written: dict[str, int] = {}
        tables = set(inspect(store.engine).get_table_names())
        for name, view in compiled_views():
            with store.engine.begin() as connection:
                session = Session(connection)
                state = _State.decode(get_cursor(session, CURSOR, name))
                newest = _newest(connection, view.resource)
                fingerprint = _fingerprint(name)
                if full or name not in tables or state is None or state.fingerprint != fingerprint:
                    written[name] = _rebuild(connection, name, view, progress)
                else:
                    since = state.watermark - overlap
                    written[name] = _update(connection, name, view, since, progress)
                set_cursor(session, CURSOR, name, _State(fingerprint, newest).encode())
                session.flush()
        store.refresh_statistics()
        return written
    finally:
        leases.release(store, VIEWS_LEASE, owner)


def _csv_cell(value: Any) -> Any:
    if isinstance(value, list | dict):
        return json.dumps(value, default=str)
    return "" if value is None else value


def export(
    store: Store, out_dir: Path, fmt: ExportFormat, progress: Progress | None = None
) -> list[Path]:
    """Each view as `<name>.csv` or `<name>.parquet` in `out_dir` (created); the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, view in compiled_views():
        path = out_dir / f"{name}.{fmt}"
        columns = [c.name for c in view.columns]
        with store.engine.connect() as connection:
            rows = _rows(connection, view)
            if fmt == "csv":
                with path.open("w", newline="", encoding="utf-8") as f:
                    writer = csv.DictWriter(f, fieldnames=columns)
                    writer.writeheader()
                    for i, row in enumerate(rows, 1):
                        writer.writerow({k: _csv_cell(v) for k, v in row.items()})
                        if progress and i % _BATCH == 0:
                            progress(name, i)
            else:
                _parquet(path, view, list(rows))
        written.append(path)
    return written


def _parquet(path: Path, view: CompiledView, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"integer": pa.int64(), "decimal": pa.float64(), "boolean": pa.bool_()}
    fields = [
        pa.field(
            c.name, pa.list_(pa.string()) if c.collection else types.get(c.type or "", pa.string())
        )
        for c in view.columns
    ]
    data = {
        c.name: [float(r[c.name]) if isinstance(r[c.name], Decimal) else r[c.name] for r in rows]
        for c in view.columns
    }
    pq.write_table(pa.table(data, schema=pa.schema(fields)), path)


# The fidelity questions as SQL over the materialised views (`fhir_adapter/quality/sql/`),
# for a BI tool to copy; each takes :start and :end (YYYY-MM-DD, inclusive).
QUERIES = (
    "assignment_rate",
    "review_rate",
    "assignment_rate_by_therapist",
    "review_rate_by_therapist",
    "rates_by_month",
)


def query_sql(name: str) -> str:
    if name not in QUERIES:
        raise KeyError(f"no query {name!r}; queries: {', '.join(QUERIES)}")
    return resources.files("fhir_adapter.quality").joinpath(f"sql/{name}.sql").read_text("utf-8")


def run_query(store: Store, name: str, start: date, end: date) -> list[dict[str, Any]]:
    """One fidelity query's rows over the materialised views (run `materialise` first)."""
    with store.engine.connect() as connection:
        result = connection.execute(
            text(query_sql(name)), {"start": start.isoformat(), "end": end.isoformat()}
        )
        return [dict(row._mapping) for row in result]
