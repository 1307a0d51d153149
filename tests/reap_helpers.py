"""Helpers for the reaper, orphan, CLI and recipe tests: make operations old by writing their timestamps directly
(the reaper reads them from the table, so this is what age looks like to it), and bulk-insert finished ones."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, insert, select, update

from tracker.db import write_connection
from tracker.models import Operation, OperationItem, OperationWriter

OPS = Operation.__table__
ITEMS = OperationItem.__table__
WRITERS = OperationWriter.__table__


def set_times(engine: Engine, operation_id: str, **values: Any) -> None:
    """Overwrite columns (completed_at, started_at, heartbeat_at, owner_host...) of one operation. Moving it to
    another host or process (owner_host, owner_pid) moves its registered writers too (the process that started it
    registered itself), with the operation's heartbeat."""
    with write_connection(engine) as conn:
        assert conn.execute(update(OPS).where(OPS.c.id == operation_id).values(**values)).rowcount == 1
        moved = {name: values[f"owner_{name}"] for name in ("host", "pid") if f"owner_{name}" in values}
        if moved:
            if values.get("heartbeat_at") is not None:
                moved["heartbeat_at"] = values["heartbeat_at"]
            conn.execute(update(WRITERS).where(WRITERS.c.operation_id == operation_id).values(**moved))


def finished_ago(engine: Engine, operation_id: str, completed_at: datetime) -> None:
    """Make a finished operation look as if it completed at completed_at (and started a second before)."""
    set_times(engine, operation_id, completed_at=completed_at, started_at=completed_at - timedelta(seconds=1),
              updated_at=completed_at, heartbeat_at=completed_at)


def insert_finished(
    engine: Engine, count: int, items_each: int, completed_at: datetime, status: str = "completed",
    prefix: str = "batch_bulk",
) -> list[str]:
    """Bulk-insert finished operations with their items (counters matching), random ids like real ones."""
    ids = [f"{prefix}_{secrets.token_hex(16)}" for _ in range(count)]
    rows: list[dict[str, Any]] = [
        {
            "id": op_id, "kind": "batch", "operation_type": "import", "status": status, "total": items_each,
            "succeeded_count": items_each, "failed_count": 0, "started_at": completed_at - timedelta(seconds=1),
            "updated_at": completed_at, "completed_at": completed_at, "execution_time_ms": 1000, "resumable": False,
        }
        for op_id in ids
    ]
    with write_connection(engine) as conn:
        conn.execute(insert(OPS), rows)
        if items_each:
            conn.execute(
                insert(ITEMS),
                [{"operation_id": op_id, "ok": True, "item_id": f"{op_id[-6:]}-{n}", "row_number": None, "error": None}
                 for op_id in ids for n in range(items_each)],
            )
    return ids


def table_counts(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return (conn.execute(select(func.count()).select_from(OPS)).scalar_one(),
                conn.execute(select(func.count()).select_from(ITEMS)).scalar_one())
