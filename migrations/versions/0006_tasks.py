"""MCP tasks: a table beside operations for what only a task has (the call, its revision, its input round)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Nothing from tracker (see 0001): the DDL of tracker.models' types as of this revision.
JSONValue = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column(
            "operation_id",
            sa.String(96),
            sa.ForeignKey("operations.id", ondelete="CASCADE", name="fk_tasks_operation_id_operations"),
            nullable=False,
        ),
        sa.Column("tool", sa.String(128), nullable=False),
        sa.Column("arguments", JSONValue, nullable=False),
        sa.Column("revision", sa.String(16), nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("input_requests", JSONValue, nullable=True),
        sa.Column("input_responses", JSONValue, nullable=True),
        sa.Column("asked_keys", JSONValue, nullable=True),
        sa.Column("request_state", sa.Text, nullable=True),
        sa.Column("rpc_error", JSONValue, nullable=True),
        sa.Column("rerun", sa.Boolean, nullable=False),
        sa.Column("takeovers", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("operation_id", name="pk_tasks"),
        sa.CheckConstraint("phase IN ('working', 'input_required')", name="ck_tasks_phase"),
    )


def downgrade() -> None:
    op.drop_table("tasks")
