"""date ranges for FHIR date search; the treating practitioner as a search column; indexes
for fidelity searches and identifier rewrites

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from fhir_adapter.store.search_index import extract

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_resource = sa.table(
    "resource",
    sa.column("resource_type", sa.String),
    sa.column("id", sa.String),
    sa.column("body", sa.JSON),
    sa.column("date", sa.DateTime(timezone=True)),
    sa.column("date_end", sa.DateTime(timezone=True)),
    sa.column("practitioner", sa.String),
)


def upgrade() -> None:
    with op.batch_alter_table("resource") as batch:
        batch.add_column(sa.Column("date_end", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("practitioner", sa.String(length=256), nullable=True))
    op.create_index("ix_resource_type_date", "resource", ["resource_type", "date"])
    op.create_index(
        "ix_resource_type_business_status", "resource", ["resource_type", "business_status"]
    )
    op.create_index("ix_resource_type_code", "resource", ["resource_type", "code"])
    op.create_index(
        "ix_resource_type_practitioner", "resource", ["resource_type", "practitioner"]
    )
    op.create_index("ix_identifier_resource", "resource_identifier", ["resource_type", "id"])
    # Stored dates become ranges (their precision, or their period), and practitioners are
    # indexed, read from the bodies.
    connection = op.get_bind()
    rows = connection.execute(sa.select(_resource.c.resource_type, _resource.c.id,
                                        _resource.c.body)).all()  # fmt: skip
    for resource_type, rid, body in rows:
        columns = extract(body)
        connection.execute(
            _resource.update()
            .where(_resource.c.resource_type == resource_type, _resource.c.id == rid)
            .values(
                date=columns.date, date_end=columns.date_end, practitioner=columns.practitioner
            )
        )


def downgrade() -> None:
    op.drop_index("ix_identifier_resource", table_name="resource_identifier")
    op.drop_index("ix_resource_type_practitioner", table_name="resource")
    op.drop_index("ix_resource_type_code", table_name="resource")
    op.drop_index("ix_resource_type_business_status", table_name="resource")
    op.drop_index("ix_resource_type_date", table_name="resource")
    with op.batch_alter_table("resource") as batch:
        batch.drop_column("practitioner")
        batch.drop_column("date_end")
