"""operations, their items, and the operation_status view for operators

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# This revision imports nothing from tracker, so that a later change to tracker/models.py cannot change what it
# creates: the column types are frozen copies of the DDL of tracker.models' types as of this revision (it converts
# no values, so the Python side of UTCTimestamp is not needed), and every constraint is named here with op.f()
# (final, whatever naming convention the metadata in env.py carries).
UTC_TIMESTAMP = sa.String(24).with_variant(sa.DateTime(timezone=True), "postgresql")  # models.UTCTimestamp
JSON_VALUE = sa.JSON().with_variant(JSONB(), "postgresql")  # models.JSONValue
# INTEGER PRIMARY KEY is SQLite's rowid alias (no extra index); PostgreSQL gets a bigint identity.
ITEM_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # models.ItemSeq

# One row per operation, with its items as JSON: what an operator reads with the sqlite3 shell.
SQLITE_VIEW = """
CREATE VIEW operation_status AS
SELECT o.id, o.kind, o.operation_type, o.status,
       o.succeeded_count + o.failed_count AS completed, o.total,
       CASE WHEN o.total > 0
            THEN min(100.0, round(100.0 * (o.succeeded_count + o.failed_count) / o.total, 2))
            WHEN o.status = 'running' THEN 0.0 ELSE 100.0 END AS percent,
       o.succeeded_count, o.failed_count,
       o.started_at, o.updated_at, o.completed_at, o.execution_time_ms, o.error,
       o.request_id, o.grid_id, o.mode, o.parent_id, o.owner_host, o.owner_pid, o.heartbeat_at,
       (SELECT json_group_array(s.item_id) FROM
          (SELECT item_id FROM operation_items WHERE operation_id = o.id AND ok = 1 ORDER BY seq) AS s
       ) AS successful_ids,
       (SELECT json_group_array(json_object('id', f.item_id, 'row_number', f.row_number, 'error', f.error)) FROM
          (SELECT item_id, row_number, error FROM operation_items WHERE operation_id = o.id AND ok = 0 ORDER BY seq) AS f
       ) AS failed_items
FROM operations AS o
"""

POSTGRESQL_VIEW = """
CREATE VIEW operation_status AS
SELECT o.id, o.kind, o.operation_type, o.status,
       o.succeeded_count + o.failed_count AS completed, o.total,
       CASE WHEN o.total > 0
            THEN least(100.0, round(100.0 * (o.succeeded_count + o.failed_count) / o.total, 2))
            WHEN o.status = 'running' THEN 0.0 ELSE 100.0 END AS percent,
       o.succeeded_count, o.failed_count,
       o.started_at, o.updated_at, o.completed_at, o.execution_time_ms, o.error,
       o.request_id, o.grid_id, o.mode, o.parent_id, o.owner_host, o.owner_pid, o.heartbeat_at,
       coalesce((SELECT json_agg(i.item_id ORDER BY i.seq) FROM operation_items i
                 WHERE i.operation_id = o.id AND i.ok), '[]'::json) AS successful_ids,
       coalesce((SELECT json_agg(json_build_object('id', i.item_id, 'row_number', i.row_number, 'error', i.error)
                                 ORDER BY i.seq)
                 FROM operation_items i WHERE i.operation_id = o.id AND NOT i.ok), '[]'::json) AS failed_items
FROM operations AS o
"""


def upgrade() -> None:
    op.create_table(
        "operations",
        sa.Column("id", sa.String(96), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("operation_type", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("succeeded_count", sa.Integer, nullable=False),
        sa.Column("failed_count", sa.Integer, nullable=False),
        sa.Column("started_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("updated_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("completed_at", UTC_TIMESTAMP, nullable=True),
        sa.Column("execution_time_ms", sa.Integer, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("inputs", JSON_VALUE, nullable=True),
        sa.Column("outputs", JSON_VALUE, nullable=True),
        sa.Column("owner_host", sa.String(255), nullable=True),
        sa.Column("owner_pid", sa.Integer, nullable=True),
        sa.Column("heartbeat_at", UTC_TIMESTAMP, nullable=True),
        sa.Column("resumable", sa.Boolean, nullable=False),
        sa.Column("parent_id", sa.String(96), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("grid_id", sa.String(128), nullable=True),
        sa.Column("mode", sa.String(8), nullable=True),
        sa.Column("idempotency_key", sa.String(256), nullable=True),
        sa.Column("last_polled_at", UTC_TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_operations")),
        sa.CheckConstraint("kind IN ('run', 'batch')", name=op.f("ck_operations_kind")),
        sa.CheckConstraint(
            "status IN ('running', 'completed', 'failed', 'cancelled')", name=op.f("ck_operations_status")
        ),
        sa.CheckConstraint(
            "total >= 0 AND succeeded_count >= 0 AND failed_count >= 0", name=op.f("ck_operations_counts")
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["operations.id"], ondelete="SET NULL", name=op.f("fk_operations_parent_id_operations")
        ),
        sa.UniqueConstraint("request_id", name=op.f("uq_operations_request_id")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_operations_idempotency_key")),
    )
    op.create_index("ix_operations_started_at_id", "operations", ["started_at", "id"])
    op.create_index("ix_operations_status_completed_at", "operations", ["status", "completed_at"])
    op.create_index("ix_operations_parent_id", "operations", ["parent_id"])
    op.create_table(
        "operation_items",
        sa.Column("seq", ITEM_SEQ, nullable=False, autoincrement=True),
        sa.Column(
            "operation_id",
            sa.String(96),
            sa.ForeignKey("operations.id", ondelete="CASCADE", name=op.f("fk_operation_items_operation_id_operations")),
            nullable=False,
        ),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("item_id", sa.Text, nullable=True),
        sa.Column("row_number", sa.Integer, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_operation_items")),
    )
    op.create_index("ix_operation_items_operation_id_ok_seq", "operation_items", ["operation_id", "ok", "seq"])
    op.execute(POSTGRESQL_VIEW if op.get_bind().dialect.name == "postgresql" else SQLITE_VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW operation_status")
    op.drop_index("ix_operation_items_operation_id_ok_seq", table_name="operation_items")
    op.drop_table("operation_items")
    op.drop_index("ix_operations_parent_id", table_name="operations")
    op.drop_index("ix_operations_status_completed_at", table_name="operations")
    op.drop_index("ix_operations_started_at_id", table_name="operations")
    op.drop_table("operations")
