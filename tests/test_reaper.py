"""Retention: what a purge deletes (boundaries, running never by age, items with their operation), that it
deletes in whole chunks while another process records, that a busy database is retried then reported, that the
file stops growing across record/purge cycles, and the periodic reaper."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from tracker import DatabaseUnavailable, Settings, Tracker
from tracker.db import write_connection
from tracker.models import TERMINAL_STATUSES
from tracker.reaper import PeriodicReaper, purge
from tracker.store.reaping import ReapingStore
from tracker.testing.env import child_env
from tracker.timeutil import utcnow

from .conftest import PYTHON
from .reap_helpers import OPS, finished_ago, insert_finished, set_times, table_counts

HOUR = 3600.0


def _finished(tracker: Tracker, status: str, items: int = 3) -> str:
    batch = tracker.start_batch("update", total=items)
    for n in range(items):
        batch.record_success(f"item-{n}")
    {"completed": batch.finish, "failed": lambda: batch.fail("boom"), "cancelled": batch.cancel}[status]()
    return batch.id


# -- what is purged --------------------------------------------------------------------------------------------------


def test_retention_boundaries(backend_tracker: Tracker) -> None:
    tracker, engine = backend_tracker, backend_tracker.engine
    now = utcnow()
    cutoff = now - timedelta(seconds=HOUR)
    ms = timedelta(milliseconds=1)
    cases = {
        "just_over": (cutoff - ms, True),  # completed 1 ms before the cutoff: expired
        "at_cutoff": (cutoff, False),  # exactly the retention: kept (strictly older goes)
        "just_under": (cutoff + ms, False),
        "recent": (now - timedelta(minutes=5), False),
    }
    ids = {}
    for name, (completed_at, _) in cases.items():
        ids[name] = _finished(tracker, "completed")
        finished_ago(engine, ids[name], completed_at)
    for status in TERMINAL_STATUSES:  # every terminal state expires the same way
        ids[f"old_{status}"] = _finished(tracker, status)
        finished_ago(engine, ids[f"old_{status}"], now - timedelta(days=3))
    ancient_running = tracker.start_batch("import", total=10)
    ancient_running.record_success("a")
    ancient_running.flush()
    month_ago = now - timedelta(days=30)
    with write_connection(engine) as conn:  # running for a month: never purged by age, whatever its timestamps
        conn.execute(
            update(OPS).where(OPS.c.id == ancient_running.id).values(started_at=month_ago, updated_at=month_ago)
        )

    expired = {ids["just_over"], *(ids[f"old_{s}"] for s in TERMINAL_STATUSES)}
    dry = purge(engine, HOUR, dry_run=True, now=now)
    assert (dry.operations, dry.items, dry.dry_run) == (4, 12, True)
    assert all(tracker.get(i) is not None for i in ids.values())  # the dry run changed nothing

    summary = purge(engine, HOUR, now=now)
    assert (summary.operations, summary.items) == (4, 12)
    for op_id in ids.values():
        if op_id in expired:
            assert tracker.get(op_id) is None
            assert tracker.store.count_items(op_id) == (0, 0)  # items went with it
        else:
            assert tracker.store.count_items(op_id) == (3, 0)  # kept whole
    assert tracker.get(ancient_running.id).status == "running"
    assert tracker.store.count_items(ancient_running.id) == (1, 0)
    again = purge(engine, HOUR, now=now)
    assert (again.operations, again.items) == (0, 0)
    # A zero retention purges every finished operation, still never a running one.
    purge(engine, 0)
    assert [r.id for r in tracker.list(limit=50)] == [ancient_running.id]


def test_a_run_outlives_its_purged_batch(tracker: Tracker) -> None:
    parent = _finished(tracker, "completed")
    finished_ago(tracker.engine, parent, utcnow() - timedelta(days=1))
    now = utcnow()
    child = tracker.store.create_operation(
        {"id": "run_child_1", "kind": "run", "operation_type": "grid_run", "started_at": now, "parent_id": parent}
    )
    assert child.parent_id == parent
    assert purge(tracker.engine, HOUR).operations == 1
    assert tracker.get(parent) is None
    assert tracker.get(child.id).parent_id is None  # ON DELETE SET NULL: the run stays, unlinked


def test_large_operation_goes_over_several_chunks(tracker: Tracker) -> None:
    old = utcnow() - timedelta(days=2)
    big = insert_finished(tracker.engine, 1, 12_000, old, prefix="batch_big")[0]
    small = insert_finished(tracker.engine, 30, 10, old)
    keep = insert_finished(tracker.engine, 2, 10, utcnow())
    summary = purge(tracker.engine, HOUR, chunk_items=5000, chunk_operations=500, checkpoint_min_rows=0)
    assert (summary.operations, summary.items) == (31, 12_300)
    assert summary.chunks >= 4  # 12,000 items cannot go in fewer than three 5,000-item chunks, plus the small ones
    assert summary.checkpoint in ("truncate", "passive")
    assert table_counts(tracker.engine) == (2, 20)
    assert tracker.get(big) is None and all(tracker.get(i) is None for i in small)
    assert all(tracker.store.count_items(i) == (10, 0) for i in keep)


def test_every_chunk_leaves_whole_operations(tracker: Tracker) -> None:
    """Crash safety, chunk by chunk: between any two chunks, every operation that fits a chunk is all there or all
    gone; only an operation larger than a chunk may be seen part-deleted, and the next purge finishes it."""
    old = utcnow() - timedelta(days=2)
    big = insert_finished(tracker.engine, 1, 2_500, old, prefix="batch_big")[0]
    small = insert_finished(tracker.engine, 40, 25, old)
    store = ReapingStore(tracker.engine)
    cutoff = utcnow() - timedelta(seconds=HOUR)
    seen_partial = False
    while True:
        result = store.delete_expired_chunk(cutoff, max_items=1000, max_operations=15)
        for op_id in small:
            record = tracker.get(op_id)
            assert tracker.store.count_items(op_id) == ((25, 0) if record is not None else (0, 0))
        record = tracker.get(big)
        if record is not None and tracker.store.count_items(big)[0] < 2_500:
            seen_partial = True  # the documented exception: expired, still matched, finished by a later chunk
        if (result.operations, result.items) == (0, 0):
            break
    assert seen_partial
    assert table_counts(tracker.engine) == (0, 0)


def test_an_interrupted_purge_is_finished_by_the_next(tracker: Tracker) -> None:
    old = utcnow() - timedelta(days=2)
    big = insert_finished(tracker.engine, 1, 3_000, old, prefix="batch_big")[0]
    ReapingStore(tracker.engine).delete_expired_chunk(utcnow() - timedelta(seconds=HOUR), 1000, 10)  # then "crash"
    assert tracker.store.count_items(big) == (2_000, 0)
    summary = purge(tracker.engine, HOUR)
    assert (summary.operations, summary.items) == (1, 2_000)
    assert tracker.get(big) is None


# -- busy database ---------------------------------------------------------------------------------------------------


def _hold_write_lock(db: str, seconds: float, locked: threading.Event) -> threading.Thread:
    def hold() -> None:
        from tracker.db import sqlite_module

        conn = sqlite_module().connect(db, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        locked.set()
        time.sleep(seconds)
        conn.execute("ROLLBACK")
        conn.close()

    thread = threading.Thread(target=hold)
    thread.start()
    return thread


def test_busy_database_is_retried_then_reported(tracker: Tracker, settings: Settings) -> None:
    insert_finished(tracker.engine, 5, 10, utcnow() - timedelta(days=1))
    locked = threading.Event()
    holder = _hold_write_lock(settings.db, 2.0, locked)
    assert locked.wait(5)
    try:
        with pytest.raises(DatabaseUnavailable) as caught:
            purge(tracker.engine, HOUR, busy_timeout_s=0.1, attempts=2)
        message = str(caught.value)
        assert "busy" in message and "purge stopped after 0 operations and 0 items" in message
        assert "\n" not in message and "DELETE" not in message and "SELECT" not in message
        assert table_counts(tracker.engine) == (5, 50)  # nothing half-done
    finally:
        holder.join()
    # A lock that goes away while the purge retries: it succeeds.
    locked.clear()
    holder = _hold_write_lock(settings.db, 0.3, locked)
    assert locked.wait(5)
    summary = purge(tracker.engine, HOUR, busy_timeout_s=0.1, attempts=4)
    holder.join()
    assert (summary.operations, summary.items) == (5, 50)


# -- a writer recording meanwhile ------------------------------------------------------------------------------------

WRITER = r"""
import json, select, sys, time
import tracker
with tracker.Tracker.open() as t:
    batch = t.start_batch("import")
    print(batch.id, flush=True)
    recorded, stalls = 0, []
    while not select.select([sys.stdin], [], [], 0)[0]:
        for _ in range(20):
            batch.record_success(f"w-{recorded}")
            recorded += 1
        began = time.monotonic()
        batch.flush()  # one write transaction: the time it waits for the purge's chunks is the stall
        stalls.append(time.monotonic() - began)
        time.sleep(0.002)
    batch.finish()
    print(json.dumps({"recorded": recorded, "flushes": len(stalls), "worst_s": max(stalls)}), flush=True)
"""


def test_chunked_purge_while_another_process_records(tracker: Tracker, settings: Settings) -> None:
    old = utcnow() - timedelta(days=2)
    insert_finished(tracker.engine, 2, 6_000, old, prefix="batch_big")
    insert_finished(tracker.engine, 600, 40, old)
    writer = subprocess.Popen(
        [PYTHON, "-c", WRITER], env=child_env(settings.db), text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        writer_batch = writer.stdout.readline().strip()
        assert writer_batch.startswith("batch_import_"), writer.stderr.read()
        time.sleep(0.2)
        summary = purge(tracker.engine, HOUR, chunk_items=2_000, chunk_operations=100)
        time.sleep(0.2)
        out, err = writer.communicate("stop\n", timeout=60)
    finally:
        writer.kill()
    assert writer.returncode == 0, err
    assert "locked" not in err and "busy" not in err, err
    report = json.loads(out.strip().splitlines()[-1])
    assert (summary.operations, summary.items) == (602, 36_000)
    assert summary.chunks >= 18
    record = tracker.get(writer_batch)
    assert (record.status, record.succeeded_count) == ("completed", report["recorded"])
    assert tracker.store.count_items(writer_batch) == (report["recorded"], 0)  # exact: nothing lost or doubled
    assert table_counts(tracker.engine) == (1, report["recorded"])
    print(
        f"\npurge: {summary.operations + summary.items:,} rows in {summary.seconds:.2f}s "
        f"({summary.rows_per_s:,.0f} rows/s, {summary.chunks} chunks, "
        f"longest {summary.longest_chunk_s * 1000:.0f} ms); "
        f"writer: {report['recorded']:,} items in {report['flushes']} flushes, worst stall "
        f"{report['worst_s'] * 1000:.0f} ms"
    )
    assert report["worst_s"] < 5.0  # a loose sanity bound; the figure is printed, not asserted tightly


# -- the file does not keep growing ----------------------------------------------------------------------------------


def test_file_size_is_stable_across_record_and_purge_cycles(tracker: Tracker, settings: Settings) -> None:
    db = Path(settings.db)
    wal = Path(settings.db + "-wal")
    sizes = []
    for cycle in range(5):
        for n in range(20):
            with tracker.start_batch("import", total=300) as batch:
                for i in range(300):
                    if i % 10 == 9:
                        batch.record_failure("rejected: missing email", row_number=i + 1)
                    else:
                        batch.record_success(f"contact-{n:03d}-{i:05d}")
        with write_connection(tracker.engine) as conn:  # everything finished two hours ago
            conn.execute(
                update(OPS).where(OPS.c.status != "running").values(completed_at=utcnow() - timedelta(hours=2))
            )
        summary = purge(tracker.engine, HOUR, checkpoint_min_rows=0)
        assert (summary.operations, summary.items) == (20, 6_000)
        assert summary.checkpoint == "truncate"
        assert not wal.exists() or wal.stat().st_size == 0  # the WAL folded back and truncated
        sizes.append(db.stat().st_size)
    print(f"\nfile size after each purge: {sizes}")
    assert max(sizes[1:]) <= sizes[0] * 1.05  # later cycles reuse the freed pages


# -- the periodic reaper ---------------------------------------------------------------------------------------------


def _wait_for(predicate, timeout_s: float = 10.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_periodic_reaper_purges_on_its_interval(tracker: Tracker, settings: Settings) -> None:
    quick = Settings.from_env({}, db=settings.db, retention_s=HOUR, reap_interval_s=0.1)
    reaper = PeriodicReaper(tracker.engine, quick)
    assert reaper.tick() is None  # nothing expired: the cheap probe skips the purge
    reaper.start()
    try:
        assert _wait_for(lambda: reaper.ticks >= 2)
        keep = _finished(tracker, "completed")
        gone = _finished(tracker, "failed")
        finished_ago(tracker.engine, gone, utcnow() - timedelta(hours=2))
        assert _wait_for(lambda: tracker.get(gone) is None)
        assert tracker.get(keep) is not None
    finally:
        reaper.stop()
    assert reaper._thread is None


def test_periodic_reaper_off_still_recovers_orphans_at_start(tracker: Tracker, settings: Settings) -> None:
    off = Settings.from_env({}, db=settings.db, reap_interval_s=0)
    old = _finished(tracker, "completed")
    finished_ago(tracker.engine, old, utcnow() - timedelta(days=1))
    stale = tracker.start_batch("import")
    set_times(tracker.engine, stale.id, owner_host="another-host", heartbeat_at=utcnow() - timedelta(minutes=5))
    reaper = PeriodicReaper(tracker.engine, off)
    assert not reaper.enabled
    reaper.start()
    assert _wait_for(lambda: tracker.get(stale.id).status == "failed")
    reaper.stop()
    assert reaper.ticks == 0 and tracker.get(old) is not None  # no purge when turned off


def test_periodic_reaper_as_an_asyncio_task(tracker: Tracker, settings: Settings) -> None:
    quick = Settings.from_env({}, db=settings.db, reap_interval_s=0.05)
    gone = _finished(tracker, "cancelled")
    finished_ago(tracker.engine, gone, utcnow() - timedelta(hours=2))
    reaper = PeriodicReaper(tracker.engine, quick)

    async def main() -> int:
        task = asyncio.create_task(reaper.run_forever())
        beats = 0
        while tracker.get(gone) is not None and beats < 500:
            await asyncio.sleep(0.01)  # the loop stays responsive while the reaper works
            beats += 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return beats

    assert asyncio.run(main()) < 500
    assert tracker.get(gone) is None


def test_two_purgers_split_the_work(tracker: Tracker) -> None:
    insert_finished(tracker.engine, 300, 20, utcnow() - timedelta(days=1))
    results = []

    def run() -> None:
        results.append(purge(tracker.engine, HOUR, chunk_items=500, chunk_operations=20))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r.operations for r in results) == 300  # each operation deleted exactly once
    assert sum(r.items for r in results) == 6_000
    assert table_counts(tracker.engine) == (0, 0)
