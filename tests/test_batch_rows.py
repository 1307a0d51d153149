"""A batch's reads select what their answer shows: status, list, adopt and poll reads never select inputs (a run
batch's 10,000 input rows may be 100 MB), and a run batch's rows live in run_batch_rows, written with the batch,
read one at a time by its worker, moved there from the inputs of running batches by migration 0004, and purged
with the batch. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import timedelta

from sqlalchemy import event, func, insert, select

from tracker import Settings, Tracker
from tracker.db import downgrade, open_engine, upgrade_to_head
from tracker.models import Operation, RunBatchRow
from tracker.reaper import purge
from tracker.remote import RunsService
from tracker.status import StatusService
from tracker.store import Store
from tracker.store.runs import RunStore
from tracker.timeutil import utcnow

from .conftest import FakeUpstreamProcess

_OPS = Operation.__table__
_ROWS = RunBatchRow.__table__


def _rows(count: int) -> list[dict[str, str]]:
    return [{"email": f"person{n}@example.com", "note": "x" * 50} for n in range(1, count + 1)]


def _grid_batch(runs: RunStore, rows: list[dict[str, str]], batch_id: str = "batch_grid_run_" + "1" * 32) -> str:
    params = {"grid_id": "g1", "mode": "async", "output_columns": None, "source_id": None, "concurrency": 2}
    runs.create_batch(
        {
            "id": batch_id, "kind": "batch", "operation_type": "grid_run", "total": len(rows),
            "inputs": {**params, "row_count": len(rows)}, "grid_id": "g1", "mode": "async", "resumable": True,
        },
        rows,
    )
    return batch_id


def _capture(engine) -> list[str]:
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda _c, _cur, statement, *_: statements.append(statement))
    return statements


def _row_count(engine, batch_id: str) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).where(_ROWS.c.batch_id == batch_id)).scalar_one()


def test_status_list_adopt_and_poll_reads_never_select_inputs(backend_tracker: Tracker) -> None:
    engine = backend_tracker.engine
    batch = backend_tracker.start_batch("import", total=2, inputs={"blob": "x" * 1000})
    batch.record_success("a")
    batch.flush()
    runs = RunStore(engine)
    grid_batch = _grid_batch(runs, _rows(3))
    runs.create({"id": "run_grid_run_" + "2" * 32, "kind": "run", "operation_type": "grid_run",
                 "inputs": {"inputs": {"email": "y" * 1000}}, "request_id": "req-1", "grid_id": "g1"})
    service = StatusService(backend_tracker)
    statements = _capture(engine)

    assert service.batch_status(batch.id)["operation"]["successful_ids"] == ["a"]
    assert service.batch_status(grid_batch)["operation"]["progress"]["total"] == 3
    assert {o["operation_id"] for o in service.list_operations(None, None, None, 20, None)["operations"]} >= {
        batch.id, grid_batch
    }
    assert service.operation_items(batch.id, "succeeded", None, 10)["items"] == ["a"]
    status_reads = list(statements)
    table_only = RunsService(replace(backend_tracker.settings, upstream_key=""), engine)  # answers from the table
    assert asyncio.run(table_only.get_run_status("req-1"))["request_id"] == "req-1"  # shows outputs, not inputs
    assert [b.id for b in runs.running_batches("grid_run")] == [grid_batch]
    assert [r.request_id for r in runs.due_for_poll(0.0, 10)] == ["req-1"]

    assert status_reads and statements[len(status_reads):]
    assert not [s for s in status_reads if "inputs" in s or "outputs" in s]
    assert not [s for s in statements if "inputs" in s]
    # The library's get still reads everything.
    detail = backend_tracker.get(batch.id)
    assert detail is not None and detail.inputs == {"blob": "x" * 1000}


def test_a_batch_keeps_its_rows_apart_and_the_worker_reads_each(backend_settings: Settings) -> None:
    engine = open_engine(backend_settings)
    runs = RunStore(engine)
    rows = _rows(5)
    batch_id = _grid_batch(runs, rows)
    detail = runs.get_detail(batch_id)
    assert detail is not None and "rows" not in detail.inputs and detail.inputs["row_count"] == 5
    assert [runs.batch_row(batch_id, n) for n in range(1, 6)] == rows
    engine.dispose()


def _old_batch(batch_id: str, status: str, rows: list[dict[str, str]], heartbeat_s_ago: float = 0) -> dict:
    now = utcnow()
    return {
        "id": batch_id, "kind": "batch", "operation_type": "grid_run", "status": status, "total": len(rows),
        "succeeded_count": 0, "failed_count": 0, "started_at": now, "updated_at": now, "resumable": True,
        "completed_at": None if status == "running" else now,
        "heartbeat_at": now - timedelta(seconds=heartbeat_s_ago), "owner_host": "a-host-that-is-gone",
        "owner_pid": 4_000_000, "grid_id": "g1", "mode": "async",
        "inputs": {"grid_id": "g1", "rows": rows, "mode": "async", "output_columns": None, "source_id": None,
                   "concurrency": 2},
    }


RUNNING_ID = "batch_grid_run_" + "3" * 32
ENDED_ID = "batch_grid_run_" + "4" * 32


def _database_at_0003_with_batches(settings: Settings, rows: list[dict[str, str]]):
    engine = open_engine(settings, migrate=False)
    upgrade_to_head(engine, "0003")
    with engine.begin() as conn:
        conn.execute(insert(_OPS), [
            _old_batch(RUNNING_ID, "running", rows, heartbeat_s_ago=3600), _old_batch(ENDED_ID, "completed", rows[:2])
        ])
    return engine


def test_migration_moves_running_batches_rows_out_of_inputs(backend_settings: Settings) -> None:
    rows = _rows(7)
    engine = _database_at_0003_with_batches(backend_settings, rows)
    upgrade_to_head(engine)
    runs = RunStore(engine)
    moved = runs.get_detail(RUNNING_ID)
    assert moved is not None and moved.inputs == {
        "grid_id": "g1", "mode": "async", "output_columns": None, "source_id": None, "concurrency": 2, "row_count": 7
    }
    assert [runs.batch_row(RUNNING_ID, n) for n in range(1, 8)] == rows
    ended = runs.get_detail(ENDED_ID)
    assert ended is not None and ended.inputs["rows"] == rows[:2]  # never read again: left until purged
    assert _row_count(engine, ENDED_ID) == 0
    downgrade(engine, "0003")  # and back, for a tracker of the previous version
    with engine.connect() as conn:
        inputs = conn.execute(select(_OPS.c.inputs).where(_OPS.c.id == RUNNING_ID)).scalar_one()
    assert inputs["rows"] == rows and "row_count" not in inputs
    engine.dispose()


def test_a_migrated_batch_is_resumed_and_submits_its_rows(
    upstream_settings: Settings, fake_upstream: FakeUpstreamProcess
) -> None:
    fake_upstream.configure(rate_limit=20)
    settings = replace(upstream_settings, upstream_rate_per_s=20.0)
    rows = _rows(6)
    _database_at_0003_with_batches(settings, rows).dispose()

    async def scenario():
        engine = open_engine(settings)  # migrates to head
        runs = RunsService(settings, engine)
        await runs.start()  # adopts the batch: its owner's lease ran out an hour ago
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                record = await asyncio.to_thread(runs.store.get, RUNNING_ID)
                if record is not None and record.is_terminal:
                    break
                await asyncio.sleep(0.05)
            children = await asyncio.to_thread(runs.store.children, RUNNING_ID)
            return record, children
        finally:
            await runs.aclose()
            engine.dispose()

    record, children = asyncio.run(scenario())
    assert record is not None and record.status == "completed" and record.completed == 6
    assert {c.row_number: c.inputs["inputs"] for c in children} == dict(enumerate(rows, 1))


def test_purge_deletes_a_batchs_rows(backend_settings: Settings) -> None:
    engine = open_engine(backend_settings)
    runs, store = RunStore(engine), Store(engine)
    small = _grid_batch(runs, _rows(3), "batch_grid_run_" + "5" * 32)
    large = _grid_batch(runs, _rows(10), "batch_grid_run_" + "6" * 32)  # more rows than one chunk takes
    kept = _grid_batch(runs, _rows(2), "batch_grid_run_" + "7" * 32)  # still running
    for batch_id in (small, large):
        store.cancel(batch_id)
    summary = purge(engine, 0, now=store.now() + timedelta(seconds=1), chunk_items=4, pause_s=0)
    assert summary.operations == 2
    assert (_row_count(engine, small), _row_count(engine, large), _row_count(engine, kept)) == (0, 0, 2)
    assert store.get(small) is None and store.get(large) is None
    engine.dispose()
