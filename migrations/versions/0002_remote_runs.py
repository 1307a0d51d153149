"""remote runs: a batch row's run remembers its row_number; a shared rate-limit slot per upstream workspace

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Nothing from tracker, and every constraint named here with op.f() (see 0001).


def upgrade() -> None:
    # Plain ADD COLUMN (no batch copy): SQLite supports it natively and the operation_status view stays valid.
    op.add_column("operations", sa.Column("row_number", sa.Integer, nullable=True))
    # At most one run per input row of a batch: the durable "this row was (maybe) submitted" marker.
    op.create_index("ux_operations_parent_id_row_number", "operations", ["parent_id", "row_number"], unique=True)
    op.create_table(
        "upstream_rate_limits",
        sa.Column("workspace", sa.String(64), nullable=False),
        sa.Column("next_slot_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("workspace", name=op.f("pk_upstream_rate_limits")),
    )


def downgrade() -> None:
    op.drop_table("upstream_rate_limits")
    op.drop_index("ux_operations_parent_id_row_number", table_name="operations")
    op.drop_column("operations", "row_number")
