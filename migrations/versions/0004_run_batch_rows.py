"""a run batch's input rows in their own table (run_batch_rows), out of the batch's inputs: reading its status no
longer reads them. Running batches' rows are moved there; the batch's inputs keep its parameters and a row count.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# This file's own types and tables, as they are at this revision (the models may change later).
JSONValue = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
operations = sa.table(
    "operations",
    sa.column("id", sa.String(96)),
    sa.column("kind", sa.String(8)),
    sa.column("operation_type", sa.String(64)),
    sa.column("status", sa.String(16)),
    sa.column("inputs", JSONValue),
)
run_batch_rows = sa.table(
    "run_batch_rows",
    sa.column("batch_id", sa.String(96)),
    sa.column("row_number", sa.Integer),
    sa.column("inputs", JSONValue),
)
GRID_BATCH = (
    (operations.c.kind == "batch") & (operations.c.operation_type == "grid_run") & (operations.c.status == "running")
)
CHUNK_ROWS = 500  # rows inserted per statement: a 10,000-row batch never sits in one parameter list


def upgrade() -> None:
    op.create_table(
        "run_batch_rows",
        sa.Column(
            "batch_id",
            sa.String(96),
            sa.ForeignKey("operations.id", ondelete="CASCADE", name="fk_run_batch_rows_batch_id_operations"),
            nullable=False,
        ),
        sa.Column("row_number", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("inputs", JSONValue, nullable=False),
        sa.PrimaryKeyConstraint("batch_id", "row_number", name="pk_run_batch_rows"),
    )
    # Running batches only: their workers (or a resumer) read the rows from here from now on. An ended batch's rows
    # are never read again; they stay in its inputs until the purge removes it.
    conn = op.get_bind()
    batch_ids = [batch_id for (batch_id,) in conn.execute(sa.select(operations.c.id).where(GRID_BATCH))]
    for batch_id in batch_ids:  # one batch's inputs in memory at a time
        params = conn.execute(sa.select(operations.c.inputs).where(operations.c.id == batch_id)).scalar()
        if not isinstance(params, dict) or not isinstance(params.get("rows"), list):
            continue
        rows = params.pop("rows")
        for start in range(0, len(rows), CHUNK_ROWS):
            conn.execute(
                sa.insert(run_batch_rows),
                [
                    {"batch_id": batch_id, "row_number": start + n, "inputs": row}
                    for n, row in enumerate(rows[start : start + CHUNK_ROWS], 1)
                ],
            )
        conn.execute(
            sa.update(operations).where(operations.c.id == batch_id).values(inputs={**params, "row_count": len(rows)})
        )


def downgrade() -> None:
    # Put running batches' rows back where revision 0003's worker reads them.
    conn = op.get_bind()
    batch_ids = [batch_id for (batch_id,) in conn.execute(sa.select(operations.c.id).where(GRID_BATCH))]
    for batch_id in batch_ids:
        params = conn.execute(sa.select(operations.c.inputs).where(operations.c.id == batch_id)).scalar()
        rows = conn.execute(
            sa.select(run_batch_rows.c.inputs)
            .where(run_batch_rows.c.batch_id == batch_id)
            .order_by(run_batch_rows.c.row_number)
        ).scalars().all()
        if not isinstance(params, dict) or not rows:
            continue
        params.pop("row_count", None)
        conn.execute(
            sa.update(operations).where(operations.c.id == batch_id).values(inputs={**params, "rows": list(rows)})
        )
    op.drop_table("run_batch_rows")
