"""the date index carries the end of each stored date's interval

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Date search compares intervals (date, date_end); with date_end in the index a search's
    # filter and its total are answered from the index. On SQLite the columns after `body`
    # are otherwise read through the body's overflow pages, row by row: `Task?authored-on=
    # 2026-03` at 100 k Tasks went from 41 to 26 ms (bench/store_scale.py).
    op.create_index(
        "ix_resource_type_date_range", "resource", ["resource_type", "date", "date_end"]
    )
    op.drop_index("ix_resource_type_date", table_name="resource")


def downgrade() -> None:
    op.create_index("ix_resource_type_date", "resource", ["resource_type", "date"])
    op.drop_index("ix_resource_type_date_range", table_name="resource")
