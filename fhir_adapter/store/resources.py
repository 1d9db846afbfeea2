"""Versioned storage and FHIR search over the resources the service produced.

This is the built-in FHIR store: the care-plan store by default, and the record of everything
the service wrote anywhere. Ids are assigned here when a resource has none.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, not_, or_, select, true
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fhir_adapter.store.models import IdentifierRow, ResourceRow, ResourceVersionRow
from fhir_adapter.store.search_index import extract


def _now() -> datetime:
    return datetime.now(UTC)


def _with_meta(body: dict[str, Any], version: int, when: datetime) -> dict[str, Any]:
    meta = dict(body.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = when.isoformat().replace("+00:00", "Z")
    return {**body, "meta": meta}


def _content(body: dict[str, Any]) -> dict[str, Any]:
    """The resource without server-managed meta, to tell a real change from a rewrite."""
    meta = {
        k: v for k, v in (body.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")
    }
    return {**body, "meta": meta}


def put(session: Session, body: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """Create or update a resource; a rewrite with identical content keeps its version.

    A resource without `id` is matched by its business identifiers first, so writing the same
    draft twice updates one resource instead of creating two.
    """
    now = now or _now()
    resource_type = body["resourceType"]
    rid = body.get("id")
    columns = extract(body)
    if rid is None:
        for system, value in columns.identifiers:
            found = session.get(IdentifierRow, (resource_type, system, value))
            if found is not None:
                rid = found.id
                break
    rid = rid or str(uuid.uuid4())
    row = session.get(ResourceRow, (resource_type, rid))
    candidate = {**body, "id": rid}
    if row is None:
        row = _insert_first_version(session, resource_type, rid, candidate, now)
        if row is None:  # created just now by this call
            row = session.get(ResourceRow, (resource_type, rid))
            assert row is not None
            stored = row.body
            _index(session, row, columns, stored, resource_type, rid)
            return stored
    if _content(row.body) == _content(candidate):
        return row.body
    version = row.version_id + 1
    stored = _with_meta(candidate, version, now)
    row.version_id = version
    row.last_updated = now
    row.body = stored
    _index(session, row, columns, stored, resource_type, rid)
    return stored


def _insert_first_version(
    session: Session, resource_type: str, rid: str, candidate: dict[str, Any], now: datetime
) -> ResourceRow | None:
    """Insert version 1; None when this call inserted it, else the row another transaction
    inserted first (processes drafting different patients both write the model's Device and
    card: one insert wins, the other becomes a no-op or an update)."""
    stored = _with_meta(candidate, 1, now)
    try:
        with session.begin_nested():
            first = ResourceRow(resource_type=resource_type, id=rid)
            first.version_id, first.last_updated, first.body = 1, now, stored
            session.add(first)
            session.flush()
    except IntegrityError:
        found = session.get(ResourceRow, (resource_type, rid), populate_existing=True)
        if found is None:
            raise
        return found
    return None


def _index(
    session: Session, row: ResourceRow, columns: Any, stored: dict[str, Any],
    resource_type: str, rid: str,
) -> None:  # fmt: skip
    """The search columns, the version history row and the identifiers of what was stored."""
    row.patient = columns.patient
    row.encounter = columns.encounter
    row.status = columns.status
    row.code_system = columns.code_system
    row.code = columns.code
    row.business_status = columns.business_status
    row.date = columns.date
    row.date_end = columns.date_end
    row.practitioner = columns.practitioner
    session.flush()
    session.add(
        ResourceVersionRow(
            resource_type=resource_type, id=rid, version_id=row.version_id,
            last_updated=row.last_updated, body=stored,
        )
    )  # fmt: skip
    session.execute(
        delete(IdentifierRow).where(
            IdentifierRow.resource_type == resource_type, IdentifierRow.id == rid
        )
    )
    for system, value in dict.fromkeys(columns.identifiers):
        session.merge(
            IdentifierRow(resource_type=resource_type, system=system, value=value, id=rid)
        )
    session.flush()


def get(session: Session, resource_type: str, rid: str) -> dict[str, Any] | None:
    row = session.get(ResourceRow, (resource_type, rid))
    return None if row is None else row.body


def history(session: Session, resource_type: str, rid: str) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(ResourceVersionRow)
        .where(ResourceVersionRow.resource_type == resource_type, ResourceVersionRow.id == rid)
        .order_by(ResourceVersionRow.version_id.desc())
    )
    return [row.body for row in rows]


def by_identifier(
    session: Session, resource_type: str, system: str, value: str
) -> dict[str, Any] | None:
    found = session.get(IdentifierRow, (resource_type, system, value))
    return None if found is None else get(session, resource_type, found.id)


@dataclass(frozen=True)
class DateBound:
    """One FHIR date comparison: `op` (eq, ne, lt, le, gt, ge, sa, eb) against the interval
    [value, end) the search value stands for (its precision: 2026-03 is the whole month);
    `end` None is the instant `value` itself."""

    op: str
    value: datetime
    end: datetime | None = None

    @property
    def upper(self) -> datetime:
        return self.end if self.end is not None else self.value


@dataclass
class Query:
    """A parsed FHIR search over one resource type (see `fhir_adapter.api.search`)."""

    resource_type: str
    ids: Sequence[str] = ()
    patient: str | None = None
    encounter: str | None = None
    practitioner: str | None = None
    status: Sequence[str] = ()
    code: Sequence[tuple[str | None, str]] = ()
    business_status: Sequence[str] = ()
    date: Sequence[DateBound] = ()
    last_updated: Sequence[DateBound] = ()
    identifier: tuple[str | None, str] | None = None
    count: int = 50
    offset: int = 0
    extra: dict[str, str] = field(default_factory=dict)
    # More conditions, each ANDed with this one's (a search parameter given twice: `status=a&
    # status=b` means both, while `status=a,b` means either).
    also: list[Query] = field(default_factory=list)
    # Where the caller may look (SMART v2 scope restrictions): a match must satisfy at least
    # one of these, when any are given.
    within: list[Query] = field(default_factory=list)


def _interval_conditions(
    start: Any, end: Any, bounds: Sequence[DateBound]
) -> list[ColumnElement[bool]]:
    """FHIR R4 date search against stored ranges [start, end) (end NULL: open-ended):
    eq means the search range contains the stored one; gt/lt an end past / a start before
    the search range; ge/le those or eq; sa/eb wholly after / before it."""
    where: list[ColumnElement[bool]] = []
    for bound in bounds:
        low, high = bound.value, bound.upper
        ends_after = or_(end.is_(None), end > high)
        # `start < high` follows from the rest; said, it bounds the index range on start.
        contained = and_(start >= low, start < high, end.is_not(None), end <= high)
        clause: ColumnElement[bool] = {
            "eq": contained,
            "ne": not_(contained),
            "gt": ends_after,
            "lt": start < low,
            "ge": or_(ends_after, contained),
            "le": or_(start < low, contained),
            "sa": start >= high,
            "eb": and_(end.is_not(None), end <= low),
        }[bound.op]
        where.append(and_(start.is_not(None), clause))
    return where


def _instant_conditions(column: Any, bounds: Sequence[DateBound]) -> list[ColumnElement[bool]]:
    """The same rules for an instant (meta.lastUpdated): a point, not a range."""
    where: list[ColumnElement[bool]] = []
    for bound in bounds:
        low, high = bound.value, bound.upper
        inside = and_(column >= low, column < high) if high > low else column == low
        where.append(
            {
                "eq": inside,
                "ne": not_(inside),
                "gt": column >= high if high > low else column > low,
                "lt": column < low,
                "ge": column >= low,
                "le": column < high if high > low else column <= low,
                "sa": column >= high if high > low else column > low,
                "eb": column < low,
            }[bound.op]
        )
    return where


def _conditions(query: Query) -> list[ColumnElement[bool]]:
    """The WHERE conditions of `query` (its own parameters, `also` and `within`)."""
    row = ResourceRow
    where: list[ColumnElement[bool]] = []
    if query.ids:
        where.append(row.id.in_(query.ids))
    if query.patient:
        where.append(row.patient == query.patient)
    if query.encounter:
        where.append(row.encounter == query.encounter)
    if query.practitioner:
        where.append(row.practitioner == query.practitioner)
    if query.status:
        where.append(row.status.in_(query.status))
    if query.business_status:
        where.append(row.business_status.in_(query.business_status))
    if query.code:
        where.append(
            or_(
                *(
                    and_(row.code == c, row.code_system == s) if s else row.code == c
                    for s, c in query.code
                )
            )
        )
    if query.identifier:
        system, value = query.identifier
        ids = select(IdentifierRow.id).where(
            IdentifierRow.resource_type == query.resource_type, IdentifierRow.value == value
        )
        if system:
            ids = ids.where(IdentifierRow.system == system)
        where.append(row.id.in_(ids))
    where += _interval_conditions(row.date, row.date_end, query.date)
    where += _instant_conditions(row.last_updated, query.last_updated)
    for more in query.also:
        where += _conditions(more)
    if query.within:
        where.append(or_(*(and_(true(), *_conditions(scope)) for scope in query.within)))
    return where


def filters(query: Query) -> bool:
    """Whether `query` narrows what matches (some condition), beyond paging and counting."""
    return bool(_conditions(query))


def search(session: Session, query: Query) -> tuple[list[dict[str, Any]], int]:
    """Run a search; returns one page of bodies (oldest update first) and the total."""
    stmt = select(ResourceRow).where(
        ResourceRow.resource_type == query.resource_type, *_conditions(query)
    )
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    rows = session.scalars(
        stmt.order_by(ResourceRow.last_updated, ResourceRow.id)
        .offset(query.offset)
        .limit(query.count)
    )
    return [row.body for row in rows], total
