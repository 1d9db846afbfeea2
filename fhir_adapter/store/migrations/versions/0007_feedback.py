"""clinicians' decisions as labelled feedback for the model team

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("task", sa.String(length=160), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("record", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_feedback_task"), "feedback", ["task"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_feedback_task"), table_name="feedback")
    op.drop_table("feedback")
