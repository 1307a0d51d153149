"""each caller sees its own: operations carry the subject of the authenticated caller that started them; an index
per subject in list order; idempotency keys unique per subject instead of across the table

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-10

On PostgreSQL this adds the column, swaps the unique constraint for two unique indexes and adds the list index.
SQLite cannot drop a UNIQUE constraint written in CREATE TABLE (0001's on idempotency_key), so there the table is
rebuilt the way SQLite documents it: a new table, every row copied, the old one dropped, the new one renamed, its
indexes and the operation_status view made again. tracker.db runs migrations on SQLite with foreign keys off
(PRAGMA foreign_keys cannot change inside the migration's transaction), so dropping the old table does not
cascade to the items, writers and batch rows that reference it; the ids are copied unchanged, so those rows refer
to the new table.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SUBJECT_CHARS = 64  # tracker.limits.SUBJECT_CHARS as of this revision
# Nothing from tracker (see 0001): the DDL of tracker.models' types as of this revision.
UTC_TIMESTAMP = sa.String(24).with_variant(sa.DateTime(timezone=True), "postgresql")

# list_operations of one subject walks this index newest first, as it walks ix_operations_started_at_id for all.
LIST_INDEX = ("ix_operations_subject_started_at_id", ["subject", "started_at", "id"])
# An idempotency key is unique per subject: (key, subject) among subject-bound runs, the key alone among runs
# recorded without a subject (NULLs are distinct in a unique index, so that needs its own). Both only over rows
# that have a key: a few runs, not every operation.
KEY_PER_SUBJECT = "ux_operations_idempotency_key_subject"
KEY_WITHOUT_SUBJECT = "ux_operations_idempotency_key_unbound"
HAS_KEY = "idempotency_key IS NOT NULL"
UNBOUND_KEY = "subject IS NULL AND idempotency_key IS NOT NULL"

# The columns of operations at 0004, in their order there; the copy names them, so order does not matter.
COLUMNS_0004 = (
    "id, kind, operation_type, status, total, succeeded_count, failed_count, started_at, updated_at, completed_at, "
    "execution_time_ms, error, inputs, outputs, owner_host, owner_pid, heartbeat_at, resumable, parent_id, "
    "request_id, grid_id, mode, idempotency_key, last_polled_at, row_number, owner_process, poll_claimed_until, "
    "poll_claim, ended_by"
)
# Indexes of operations at 0004 besides the unique constraints, re-made after the SQLite rebuild.
INDEXES_0004 = (
    ("ix_operations_started_at_id", ["started_at", "id"], False),
    ("ix_operations_status_completed_at", ["status", "completed_at"], False),
    ("ix_operations_parent_id", ["parent_id"], False),
    ("ux_operations_parent_id_row_number", ["parent_id", "row_number"], True),
)

_VIEW_ITEMS_SQLITE = """
       (SELECT json_group_array(s.item_id) FROM
          (SELECT item_id FROM operation_items WHERE operation_id = o.id AND ok = 1 ORDER BY seq) AS s
       ) AS successful_ids,
       (SELECT json_group_array(json_object('id', f.item_id, 'row_number', f.row_number, 'error', f.error)) FROM
          (SELECT item_id, row_number, error FROM operation_items WHERE operation_id = o.id AND ok = 0 ORDER BY seq) AS f
       ) AS failed_items
FROM operations AS o
"""
_VIEW_ITEMS_POSTGRESQL = """
       coalesce((SELECT json_agg(i.item_id ORDER BY i.seq) FROM operation_items i
                 WHERE i.operation_id = o.id AND i.ok), '[]'::json) AS successful_ids,
       coalesce((SELECT json_agg(json_build_object('id', i.item_id, 'row_number', i.row_number, 'error', i.error)
                                 ORDER BY i.seq)
                 FROM operation_items i WHERE i.operation_id = o.id AND NOT i.ok), '[]'::json) AS failed_items
FROM operations AS o
"""


def _view(dialect: str, with_subject: bool) -> str:
    """operation_status as 0001 made it, or with the subject after heartbeat_at (this revision)."""
    least = "least" if dialect == "postgresql" else "min"
    return f"""
CREATE VIEW operation_status AS
SELECT o.id, o.kind, o.operation_type, o.status,
       o.succeeded_count + o.failed_count AS completed, o.total,
       CASE WHEN o.total > 0
            THEN {least}(100.0, round(100.0 * (o.succeeded_count + o.failed_count) / o.total, 2))
            WHEN o.status = 'running' THEN 0.0 ELSE 100.0 END AS percent,
       o.succeeded_count, o.failed_count,
       o.started_at, o.updated_at, o.completed_at, o.execution_time_ms, o.error,
       o.request_id, o.grid_id, o.mode, o.parent_id, o.owner_host, o.owner_pid, o.heartbeat_at,{" o.subject," if with_subject else ""}
{(_VIEW_ITEMS_POSTGRESQL if dialect == "postgresql" else _VIEW_ITEMS_SQLITE).lstrip()}"""


def _operations_table(name: str, with_subject: bool) -> sa.Table:
    """operations as of 0004 (key unique across the table) or this revision (subject; key unique per subject)."""
    json_value = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    metadata = sa.MetaData()
    sa.Table("operations", metadata, sa.Column("id", sa.String(96)))  # what the self-reference names (not created)
    extra: list = (
        [sa.Column("subject", sa.String(SUBJECT_CHARS), nullable=True)]
        if with_subject
        else [sa.UniqueConstraint("idempotency_key", name="uq_operations_idempotency_key")]
    )
    return sa.Table(
        name,
        metadata,
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
        sa.Column("inputs", json_value, nullable=True),
        sa.Column("outputs", json_value, nullable=True),
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
        sa.Column("row_number", sa.Integer, nullable=True),
        sa.Column("owner_process", sa.String(64), nullable=True),
        sa.Column("poll_claimed_until", UTC_TIMESTAMP, nullable=True),
        sa.Column("poll_claim", sa.String(32), nullable=True),
        sa.Column("ended_by", sa.String(32), nullable=True),
        *extra,
        sa.PrimaryKeyConstraint("id", name="pk_operations"),
        sa.CheckConstraint("kind IN ('run', 'batch')", name="ck_operations_kind"),
        sa.CheckConstraint("status IN ('running', 'completed', 'failed', 'cancelled')", name="ck_operations_status"),
        sa.CheckConstraint("total >= 0 AND succeeded_count >= 0 AND failed_count >= 0", name="ck_operations_counts"),
        # The table's final name: after the rename it refers to itself.
        sa.ForeignKeyConstraint(
            ["parent_id"], ["operations.id"], ondelete="SET NULL", name="fk_operations_parent_id_operations"
        ),
        sa.UniqueConstraint("request_id", name="uq_operations_request_id"),
    )


def _rebuild_sqlite(with_subject: bool) -> None:
    """Replace operations by a copy of itself with the revision's columns and constraints (SQLite only)."""
    conn = op.get_bind()
    if conn.exec_driver_sql("PRAGMA foreign_keys").scalar():
        raise RuntimeError("0005 on SQLite needs foreign keys off (tracker.db.upgrade_to_head turns them off)")
    op.execute("DROP VIEW operation_status")
    _operations_table("operations_0005", with_subject).create(conn)
    op.execute(f"INSERT INTO operations_0005 ({COLUMNS_0004}) SELECT {COLUMNS_0004} FROM operations")
    op.execute("DROP TABLE operations")
    op.execute("ALTER TABLE operations_0005 RENAME TO operations")
    for name, columns, unique in INDEXES_0004:
        op.create_index(name, "operations", columns, unique=unique)


def _key_indexes() -> None:
    op.create_index(
        KEY_PER_SUBJECT, "operations", ["idempotency_key", "subject"], unique=True,
        sqlite_where=sa.text(HAS_KEY), postgresql_where=sa.text(HAS_KEY),
    )
    op.create_index(
        KEY_WITHOUT_SUBJECT, "operations", ["idempotency_key"], unique=True,
        sqlite_where=sa.text(UNBOUND_KEY), postgresql_where=sa.text(UNBOUND_KEY),
    )


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        _rebuild_sqlite(with_subject=True)
    else:
        op.execute("DROP VIEW operation_status")
        op.add_column("operations", sa.Column("subject", sa.String(SUBJECT_CHARS), nullable=True))
        op.drop_constraint("uq_operations_idempotency_key", "operations", type_="unique")
    _key_indexes()
    op.create_index(LIST_INDEX[0], "operations", LIST_INDEX[1])
    op.execute(_view(dialect, with_subject=True))


def downgrade() -> None:
    # Keys were unique per subject; across the table, the oldest run keeps a key that several subjects used.
    op.execute(
        "UPDATE operations SET idempotency_key = NULL WHERE idempotency_key IS NOT NULL AND EXISTS ("
        "SELECT 1 FROM operations AS earlier WHERE earlier.idempotency_key = operations.idempotency_key "
        "AND earlier.id < operations.id)"
    )
    dialect = op.get_bind().dialect.name
    op.drop_index(LIST_INDEX[0], table_name="operations")
    op.drop_index(KEY_WITHOUT_SUBJECT, table_name="operations")
    op.drop_index(KEY_PER_SUBJECT, table_name="operations")
    if dialect == "sqlite":
        _rebuild_sqlite(with_subject=False)
    else:
        op.execute("DROP VIEW operation_status")
        op.create_unique_constraint("uq_operations_idempotency_key", "operations", ["idempotency_key"])
        op.drop_column("operations", "subject")
    op.execute(_view(dialect, with_subject=False))
