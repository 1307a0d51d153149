"""Purge and orphan recovery (tracker/reaper.py) as contract tests: the same assertions on SQLite and on a real
PostgreSQL server. Retention counts from completion, running operations are never purged by age, a purge deletes
operations with their items in bounded chunks while another process records, and an operation whose owner is gone
(killed on this host, or silent past the lease on another) is marked failed unless it is resumable."""

from __future__ import annotations

import signal
import subprocess
import time
from datetime import timedelta

import pytest

from tracker import OperationClosed, Settings, Tracker
from tracker.models import Operation
from tracker.reaper import OWNER_GONE_GRACE_S, ORPHAN_ERROR, purge, recover_orphans
from tracker.store.reaping import ReapingStore
from tracker.testing.env import child_env
from tracker.timeutil import utcnow

from . import reap_helpers
from .conftest import PYTHON

OPS = Operation.__table__
HOUR = 3600.0


@pytest.fixture
def tracker(backend_tracker: Tracker) -> Tracker:
    return backend_tracker


def set_times(tracker: Tracker, op_id: str, **values: object) -> None:
    reap_helpers.set_times(tracker.engine, op_id, **values)


def finished(tracker: Tracker, items: int, completed_ago: timedelta, status: str = "completed") -> str:
    batch = tracker.start_batch("import", total=items)
    for n in range(items):
        if n % 5 == 4:
            batch.record_failure("bad", item_id=f"f{n}")
        else:
            batch.record_success(f"s{n}")
    {"completed": batch.finish, "failed": lambda: batch.fail("boom"), "cancelled": batch.cancel}[status]()
    when = utcnow() - completed_ago
    set_times(tracker, batch.id, started_at=when - timedelta(seconds=1), completed_at=when, updated_at=when)
    return batch.id


def whole_or_gone(tracker: Tracker, op_id: str, items: int) -> bool:
    record = tracker.get(op_id)
    counted = sum(tracker.store.count_items(op_id))
    return counted == (items if record is not None else 0)


# -- purge ----------------------------------------------------------------------------------------------------------


def test_purge_takes_expired_operations_whole_and_never_a_running_one(tracker: Tracker) -> None:
    expired = [finished(tracker, 8, timedelta(hours=2), status) for status in ("completed", "failed", "cancelled") * 3]
    big = finished(tracker, 25, timedelta(days=1))
    recent = [finished(tracker, 8, timedelta(minutes=59)) for _ in range(2)]
    running = tracker.start_batch("import")
    running.record_success("r")
    running.flush()
    month = utcnow() - timedelta(days=30)
    set_times(tracker, running.id, started_at=month, updated_at=month)

    store = ReapingStore(tracker.engine)
    cutoff = utcnow() - timedelta(seconds=HOUR)
    while True:  # chunk by chunk: between any two, each operation that fits a chunk is all there or all gone
        result = store.delete_expired_chunk(cutoff, max_items=10, max_operations=3)
        assert all(whole_or_gone(tracker, op_id, 8) for op_id in expired + recent)
        if (result.operations, result.items) == (0, 0):
            break
    assert all(tracker.get(op_id) is None for op_id in expired + [big])
    assert all(whole_or_gone(tracker, op_id, 8) and tracker.get(op_id) for op_id in recent)
    assert tracker.get(running.id).status == "running" and tracker.store.count_items(running.id) == (1, 0)
    # Retention counts from completion: a zero retention takes the recent ones too, never the running one.
    summary = purge(tracker.engine, 0, chunk_items=10, chunk_operations=3, pause_s=0)
    assert (summary.operations, summary.items) == (2, 16) and summary.chunks >= 2
    assert [r.id for r in tracker.list(limit=50)] == [running.id]


RECORDER = """
import sys, tracker
with tracker.Tracker.open() as t:
    batch = t.attach(sys.argv[1])
    print("ready", flush=True)
    for n in range(int(sys.argv[2])):
        batch.record_success(f"item-{n}")
        if n % 100 == 99:
            batch.flush()  # many small groups, so the purge's chunks and these commits interleave
    batch.flush()
"""


def test_purge_while_another_process_records(tracker: Tracker, backend_settings: Settings) -> None:
    for _ in range(60):
        finished(tracker, 20, timedelta(hours=3))
    batch = tracker.start_batch("import", total=20_000)
    recorder = subprocess.Popen(
        [PYTHON, "-c", RECORDER, batch.id, "20000"], env=child_env(backend_settings.db),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert recorder.stdout is not None and recorder.stdout.readline().strip() == "ready"
    summary = purge(tracker.engine, HOUR, chunk_items=100, chunk_operations=5)
    _, err = recorder.communicate(timeout=120)
    assert recorder.returncode == 0, err
    assert (summary.operations, summary.items) == (60, 1200)
    record = batch.finish()
    assert (record.succeeded_count, tracker.store.count_items(batch.id)) == (20_000, (20_000, 0))


# -- orphans --------------------------------------------------------------------------------------------------------

SHORT_LEASE_S = 0.5  # every recorder here is on this host: judged by its pid, the lease only shortens the grace

OWNER = """
import sys, time, tracker
with tracker.Tracker.open() as t:
    plain = t.start_batch("import", total=100)
    resumable = t.start_batch("grid_run", total=100, resumable=True)
    for n in range(10):
        plain.record_success(f"p{n}")
        resumable.record_success(f"r{n}")
    plain.flush()
    resumable.flush()
    print(plain.id, resumable.id, flush=True)
    time.sleep(600)
"""


def test_a_killed_owner_leaves_no_running_operation_but_a_resumable_one(
    tracker: Tracker, backend_settings: Settings
) -> None:
    owner = subprocess.Popen(
        [PYTHON, "-c", OWNER], env=child_env(backend_settings.db), stdout=subprocess.PIPE, text=True
    )
    assert owner.stdout is not None
    plain_id, resumable_id = owner.stdout.readline().split()
    alive = tracker.start_batch("update")  # owned by this (live) process
    done = finished(tracker, 3, timedelta(minutes=1))
    assert recover_orphans(tracker.engine) == 0  # the owner still runs
    owner.send_signal(signal.SIGKILL)
    owner.wait(timeout=30)
    # A dead pid counts once the heartbeat has been quiet for the grace: the shorter of the lease and
    # OWNER_GONE_GRACE_S (test_orphans.py waits out the default one), here a short lease's.
    time.sleep(min(SHORT_LEASE_S, OWNER_GONE_GRACE_S) + 0.2)

    assert recover_orphans(tracker.engine, SHORT_LEASE_S) == 1
    plain = tracker.get(plain_id)
    assert (plain.status, plain.error, plain.succeeded_count) == ("failed", ORPHAN_ERROR, 10)
    assert plain.completed_at is not None and tracker.store.count_items(plain_id) == (10, 0)
    assert tracker.get(resumable_id).status == "running"  # left for its batch's resumer
    assert tracker.get(alive.id).status == "running"
    assert tracker.get(done).status == "completed"
    assert recover_orphans(tracker.engine, SHORT_LEASE_S) == 0  # idempotent
    # Its retention runs from the recovery, not from the start: kept for now, purged with a zero retention.
    assert purge(tracker.engine, HOUR).operations == 0
    assert purge(tracker.engine, 0).operations == 2
    assert tracker.get(plain_id) is None


def test_an_owner_on_another_host_is_judged_by_its_heartbeat(tracker: Tracker) -> None:
    silent = tracker.start_batch("import")
    talking = tracker.start_batch("import")
    now = utcnow()
    set_times(tracker, silent.id, owner_host="elsewhere", owner_pid=1, heartbeat_at=now - timedelta(seconds=61))
    set_times(tracker, talking.id, owner_host="elsewhere", owner_pid=1, heartbeat_at=now - timedelta(seconds=30))
    assert recover_orphans(tracker.engine, lease_s=60) == 1
    assert tracker.get(silent.id).status == "failed" and tracker.get(silent.id).error == ORPHAN_ERROR
    assert tracker.get(talking.id).status == "running"
    with pytest.raises(OperationClosed, match="already failed"):
        silent.record_success("late")
        silent.flush()
