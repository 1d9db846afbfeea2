"""Tables. Every datetime column is timezone-aware and stored in UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetimes in, UTC-aware datetimes out, on SQLite too (it drops tzinfo)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; pass a timezone-aware one")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSON}


class ResourceRow(Base):
    """The current version of a resource the service produced, with its search columns.

    The columns after `body` are extracted at write time (see `search_index.py`), so FHIR
    search is plain SQL and never parses JSON.
    """

    __tablename__ = "resource"

    resource_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version_id: Mapped[int] = mapped_column(Integer)
    last_updated: Mapped[datetime]
    body: Mapped[dict[str, Any]]
    patient: Mapped[str | None] = mapped_column(String(256), index=True)
    encounter: Mapped[str | None] = mapped_column(String(256), index=True)
    status: Mapped[str | None] = mapped_column(String(64))
    code: Mapped[str | None] = mapped_column(String(256))
    code_system: Mapped[str | None] = mapped_column(String(256))
    business_status: Mapped[str | None] = mapped_column(String(64))
    date: Mapped[datetime | None]
    # The end (exclusive) of `date`'s precision or period; NULL with a date: open-ended.
    date_end: Mapped[datetime | None]
    practitioner: Mapped[str | None] = mapped_column(String(256))

    __table_args__ = (
        Index("ix_resource_type_updated", "resource_type", "last_updated"),
        # date_end too: a date search's filter and total are read from the index.
        Index("ix_resource_type_date_range", "resource_type", "date", "date_end"),
        Index("ix_resource_type_business_status", "resource_type", "business_status"),
        Index("ix_resource_type_code", "resource_type", "code"),
        Index("ix_resource_type_practitioner", "resource_type", "practitioner"),
        # A therapist's Tasks in a quarter (the fidelity query) by date within the index.
        Index("ix_resource_type_practitioner_date", "resource_type", "practitioner", "date"),
    )


class ResourceVersionRow(Base):
    """Every version ever written, for `_history` and audit."""

    __tablename__ = "resource_version"

    resource_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_updated: Mapped[datetime]
    body: Mapped[dict[str, Any]]

    __table_args__ = (
        ForeignKeyConstraint(
            ["resource_type", "id"], ["resource.resource_type", "resource.id"], ondelete="CASCADE"
        ),
    )


class IdentifierRow(Base):
    """Business identifiers of stored resources: the key for idempotent writes."""

    __tablename__ = "resource_identifier"

    resource_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    system: Mapped[str] = mapped_column(String(256), primary_key=True)
    value: Mapped[str] = mapped_column(String(256), primary_key=True)
    id: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        ForeignKeyConstraint(
            ["resource_type", "id"], ["resource.resource_type", "resource.id"], ondelete="CASCADE"
        ),
        # Every write replaces a resource's identifiers by (type, id): without this index each
        # write scanned the table, and filling a store was quadratic.
        Index("ix_identifier_resource", "resource_type", "id"),
    )


class EncounterRow(Base):
    """One encounter's progress through the pipeline; each step reads and writes its state."""

    __tablename__ = "encounter_work"

    connection: Mapped[str] = mapped_column(String(64), primary_key=True)
    encounter: Mapped[str] = mapped_column(String(256), primary_key=True)
    patient: Mapped[str] = mapped_column(String(256), index=True)
    period_start: Mapped[datetime | None]
    period_end: Mapped[datetime | None]
    step: Mapped[str] = mapped_column(String(32))
    state: Mapped[dict[str, Any]]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime]
    # After a failure, not tried again before this time (backoff); None = due now.
    retry_at: Mapped[datetime | None] = mapped_column(default=None)


class LeaseRow(Base):
    """A named lease one process holds until it expires (or releases it): a patient's sessions
    are processed by one process at a time, a connection is polled by one at a time."""

    __tablename__ = "lease"

    name: Mapped[str] = mapped_column(String(400), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime]


class IngestJobRow(Base):
    """A push accepted by `POST /ingest`: what it staged, for its status URL."""

    __tablename__ = "ingest_job"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    connection: Mapped[str] = mapped_column(String(64))
    encounters: Mapped[list[str]] = mapped_column(JSON)
    staged: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class CursorRow(Base):
    """Where polling left off, per connection and feed."""

    __tablename__ = "cursor"

    connection: Mapped[str] = mapped_column(String(64), primary_key=True)
    feed: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))
    updated_at: Mapped[datetime]


class OutboxRow(Base):
    """A write to a FHIR server (EHR chart or care-plan store), kept until it succeeds.

    Keyed by business identifier, so enqueuing the same resource twice is a no-op and a write
    that succeeded remembers the server id it got.
    """

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    connection: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(32))
    resource_type: Mapped[str] = mapped_column(String(64))
    identifier_system: Mapped[str] = mapped_column(String(256))
    identifier_value: Mapped[str] = mapped_column(String(256))
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), index=True)
    server_id: Mapped[str | None] = mapped_column(String(128))
    server_version: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    __table_args__ = (
        UniqueConstraint(
            "connection",
            "target",
            "resource_type",
            "identifier_system",
            "identifier_value",
            name="uq_outbox_business_id",
        ),
    )


class SourceRow(Base):
    """A resource read from an EHR (or pushed/backfilled), kept until its encounter is done.

    Staging the inputs makes each pipeline step a function of the database alone: a rerun after
    a crash needs neither the EHR nor the original push request.
    """

    __tablename__ = "source_resource"

    connection: Mapped[str] = mapped_column(String(64), primary_key=True)
    resource_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    encounter: Mapped[str | None] = mapped_column(String(256), index=True)
    patient: Mapped[str | None] = mapped_column(String(256), index=True)
    body: Mapped[dict[str, Any]]
    received_at: Mapped[datetime]


class FeedbackRow(Base):
    """A clinician's decision on one Task as a labelled example for the model team
    (`mapping.fhir.approval.feedback_record`): no patient or encounter reference."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(String(160), index=True)
    decision: Mapped[str] = mapped_column(String(16))
    record: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class WebSessionRow(Base):
    """A browser session (dashboard, clinician app) or a pending SMART launch, shared by every
    API process, so replicas behind a load balancer need no sticky sessions.

    Keyed by a hash of the id in the browser's cookie; the payload is encrypted with a key
    derived from that id (`fhir_adapter.web.sessions`), so the table alone (a backup, a
    replica) gives no session and no EHR access token."""

    __tablename__ = "web_session"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    expires_at: Mapped[datetime] = mapped_column(index=True)
