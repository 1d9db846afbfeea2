"""Read fidelity records (sessions, homework items, scores) out of the built-in store.

Rows are narrowed in SQL by type and date (indexed) with a day's margin, since the indexed date
is not always the one a record is dated by; `mapping.quality` then applies the exact period.
A note is indexed by its `date`, which is when it was written: its session's end for a draft,
the approval for a reviewed version (days or weeks later). Notes are never written before their
session, so they are narrowed by the period's start only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from fhir_adapter.store import Store
from fhir_adapter.store.models import ResourceRow
from mapping.quality.records import (
    ScoreRecord,
    SessionRecord,
    TaskRecord,
    score_record,
    session_record,
    shifted,
    task_record,
)

R = TypeVar("R")
_MARGIN = timedelta(days=1)
_BATCH = 500  # rows fetched per round trip: bodies are large, memory stays flat


@dataclass(frozen=True)
class Records:
    sessions: list[SessionRecord]
    tasks: list[TaskRecord]
    scores: list[ScoreRecord]


# The elements each reader looks at: only these are read out of the JSON, in SQL, so a note's
# base64 attachments (most of its body) are neither sent by the database nor parsed here.
_ELEMENTS: dict[str, tuple[str, ...]] = {
    "DocumentReference": (
        "resourceType", "identifier", "status", "context", "subject", "date", "author", "custodian",
    ),
    "Task": (
        "resourceType", "id", "identifier", "status", "code", "businessStatus", "encounter",
        "for", "authoredOn", "requester", "output", "description",
    ),
    "Observation": (
        "resourceType", "status", "code", "subject", "encounter", "effectiveDateTime",
        "valueInteger",
    ),
}  # fmt: skip


def _rows(
    session: Session,
    resource_type: str,
    start: date | None,
    end: date | None,
    read: Callable[[dict[str, Any]], R | None],
) -> Iterator[R]:
    names = _ELEMENTS[resource_type]
    query = select(*(ResourceRow.body[name] for name in names)).where(
        ResourceRow.resource_type == resource_type
    )
    if start is not None:
        query = query.where(
            ResourceRow.date >= shifted(datetime.combine(start, time(), UTC), -_MARGIN)
        )
    # A note's date may fall any time after its session (approval), so no upper bound for it.
    if end is not None and resource_type != "DocumentReference":
        query = query.where(
            ResourceRow.date < shifted(datetime.combine(end, time(), UTC), 2 * _MARGIN)
        )
    for values in session.execute(query.execution_options(yield_per=_BATCH)):
        body = {k: v for k, v in zip(names, values, strict=True) if v is not None}
        found = read(body)
        if found is not None:
            yield found


def load(store: Store, start: date | None = None, end: date | None = None) -> Records:
    """Every homework item and score dated within [start - 1 day, end + 1 day], and every
    session whose note is dated from start - 1 day on (the caller applies the exact period)."""
    with store.session() as session:
        return Records(
            sessions=list(_rows(session, "DocumentReference", start, end, session_record)),
            tasks=list(_rows(session, "Task", start, end, task_record)),
            scores=list(_rows(session, "Observation", start, end, score_record)),
        )
