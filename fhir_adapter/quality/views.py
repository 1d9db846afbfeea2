"""Our ViewDefinitions materialised as tables in the store's database, and as CSV/Parquet.

A quality team points its BI tool at `homework_sessions`, `homework_tasks` and
`homework_scores` (SQLite or PostgreSQL). `materialise` rebuilds each table from the current
resources: rows go into `<name>__new`, which then replaces `<name>` in one transaction, so a
reader sees the old table or the new one, never a half-filled one. Times are ISO 8601 text
(ours are UTC, `Z`), which both databases and every BI tool compare as written.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from datetime import date
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
    insert,
    select,
    text,
)
from sqlalchemy.engine import Connection
from sqlalchemy.types import TypeEngine

from fhir_adapter.store import Store
from fhir_adapter.store.models import ResourceRow
from mapping.quality.viewdef import Column as ViewColumn
from mapping.quality.viewdef import CompiledView, compile_view
from mapping.quality.views import VIEW_NAMES, view_definition

__all__ = [
    "QUERIES",
    "ExportFormat",
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


def _rows(connection: Connection, view: CompiledView) -> Iterator[dict[str, Any]]:
    query = (
        select(ResourceRow.body)
        .where(ResourceRow.resource_type == view.resource)
        .order_by(ResourceRow.id)
        .execution_options(yield_per=_BATCH)
    )
    for body in connection.execute(query).scalars():
        yield from view.rows(body)


def _batches(rows: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == _BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def materialise(store: Store, progress: Progress | None = None) -> dict[str, int]:
    """Rebuild every view's table; returns the rows written per view."""
    written: dict[str, int] = {}
    for name, view in compiled_views():
        metadata = MetaData()
        staging = _table(view, f"{name}__new", metadata)
        final = _table(view, name, metadata)
        count = 0
        with store.engine.begin() as connection:
            staging.drop(connection, checkfirst=True)
            staging.create(connection)
            for batch in _batches(_rows(connection, view)):
                connection.execute(insert(staging), batch)
                count += len(batch)
                if progress:
                    progress(name, count)
            final.drop(connection, checkfirst=True)
            connection.exec_driver_sql(f'ALTER TABLE "{name}__new" RENAME TO "{name}"')
        written[name] = count
    store.refresh_statistics()
    return written


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
