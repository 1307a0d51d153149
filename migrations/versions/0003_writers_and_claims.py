"""exactly-once writes across hosts: one row per process recording into an operation (its liveness and the last
group it applied), the owner's process identity, and poll claims that last until their answer is written

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Nothing from tracker, and every constraint named here with op.f() (see 0001): the DDL of tracker.models.UTCTimestamp
# as of this revision.
UTC_TIMESTAMP = sa.String(24).with_variant(sa.DateTime(timezone=True), "postgresql")


def upgrade() -> None:
    op.add_column("operations", sa.Column("owner_process", sa.String(64), nullable=True))
    op.add_column("operations", sa.Column("poll_claimed_until", UTC_TIMESTAMP, nullable=True))
    op.add_column("operations", sa.Column("poll_claim", sa.String(32), nullable=True))
    op.add_column("operations", sa.Column("ended_by", sa.String(32), nullable=True))
    op.create_table(
        "operation_writers",
        sa.Column(
            "operation_id",
            sa.String(96),
            sa.ForeignKey(
                "operations.id", ondelete="CASCADE", name=op.f("fk_operation_writers_operation_id_operations")
            ),
            nullable=False,
        ),
        sa.Column("writer_id", sa.String(32), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("process", sa.String(64), nullable=True),
        sa.Column("heartbeat_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("last_group", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("operation_id", "writer_id", name=op.f("pk_operation_writers")),
    )


def downgrade() -> None:
    op.drop_table("operation_writers")
    op.drop_column("operations", "ended_by")
    op.drop_column("operations", "poll_claim")
    op.drop_column("operations", "poll_claimed_until")
    op.drop_column("operations", "owner_process")
