"""a composite index for the fidelity query: a therapist's Tasks in a date range

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # `Task?requester=R&authored-on=ge..&authored-on=lt..`: the therapist's Tasks, found by
    # date in the index, not read one by one (bench/store_scale.py).
    op.create_index(
        "ix_resource_type_practitioner_date", "resource", ["resource_type", "practitioner", "date"]
    )


def downgrade() -> None:
    op.drop_index("ix_resource_type_practitioner_date", table_name="resource")
