"""Orphan recovery: a running operation whose owner is gone (a really killed process on this host, or a heartbeat
older than the lease from any host) is marked failed; a resumable one is left running; a live owner, a fresh
heartbeat and a terminal state are never touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest

from tracker import Settings, Tracker
from tracker.liveness import alive, holder_alive, identity_of
from tracker.reaper import ORPHAN_ERROR, OWNER_GONE_GRACE_S, find_orphans, recover_orphans
from tracker.store.reaping import ReapingStore
from tracker.testing.env import child_env
from tracker.timeutil import elapsed_ms, utcnow

from .conftest import PYTHON
from .reap_helpers import set_times

LEASE = 60.0

OWNER = r"""
import time, tracker
t = tracker.Tracker.open()
batch = t.start_batch("import", total=100)
resumable = t.start_batch("grid_batch", total=10, resumable=True)
for n in range(30):
    batch.record_success(f"c-{n}")
batch.record_failure("duplicate email", row_number=31)
batch.flush()
resumable.record_success("row-1")
resumable.flush()
print(batch.id, resumable.id, flush=True)
time.sleep(120)  # killed long before this ends
"""


def test_operation_of_a_killed_process_is_marked_failed(tracker: Tracker, settings: Settings) -> None:
    owner = subprocess.Popen([PYTHON, "-c", OWNER], env=child_env(settings.db), stdout=subprocess.PIPE, text=True)
    try:
        batch_id, resumable_id = owner.stdout.readline().split()
        assert alive(owner.pid, tracker.get(batch_id).owner_process)
        assert recover_orphans(tracker.engine, LEASE) == 0  # alive: nothing to do
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=30)
    finally:
        owner.kill()
        owner.wait()
    before = tracker.get(batch_id)
    assert before.status == "running" and before.owner_pid == owner.pid
    assert not alive(owner.pid, before.owner_process)
    # The pid test waits for the heartbeat to be quiet a moment (other processes may have attached and record).
    quiet_for = (utcnow() - before.heartbeat_at).total_seconds()
    time.sleep(max(0.0, OWNER_GONE_GRACE_S + 0.2 - quiet_for))

    orphans = find_orphans(tracker.engine, LEASE)
    assert {(o.operation.id, o.reason, o.resumable) for o in orphans} == {
        (batch_id, "owner process exited", False),
        (resumable_id, "owner process exited", True),
    }
    assert recover_orphans(tracker.engine, LEASE) == 1
    record = tracker.get(batch_id)
    assert (record.status, record.error) == ("failed", ORPHAN_ERROR)
    assert record.completed_at is not None and record.completed_at >= before.heartbeat_at
    assert record.execution_time_ms == elapsed_ms(record.started_at, record.completed_at)
    assert (record.succeeded_count, record.failed_count) == (30, 1)  # what it recorded stays
    assert tracker.store.count_items(batch_id) == (30, 1)
    left = tracker.get(resumable_id)
    assert (left.status, left.error) == ("running", None)  # left for its batch's resumption
    assert recover_orphans(tracker.engine, LEASE) == 0  # idempotent


def test_a_live_owner_on_this_host_is_left_alone_however_quiet(tracker: Tracker) -> None:
    """Its pid decides, not its heartbeat: a live owner may be inside one long call without recording."""
    batch = tracker.start_batch("import")
    now = utcnow()
    _set(tracker, batch.id, heartbeat_at=now - timedelta(hours=2))
    assert find_orphans(tracker.engine, LEASE, now=now) == []
    assert recover_orphans(tracker.engine, LEASE, now=now) == 0
    assert tracker.get(batch.id).status == "running"


@pytest.mark.parametrize("quiet_s, marked", [(LEASE - 1, False), (LEASE + 1, True)])
def test_heartbeat_lease_from_any_host(tracker: Tracker, quiet_s: float, marked: bool) -> None:
    batch = tracker.start_batch("import")
    now = utcnow()
    _set(tracker, batch.id, owner_host="another-host", owner_pid=1, heartbeat_at=now - timedelta(seconds=quiet_s))
    assert recover_orphans(tracker.engine, LEASE, now=now) == int(marked)
    record = tracker.get(batch.id)
    assert (record.status, record.error) == (("failed", ORPHAN_ERROR) if marked else ("running", None))
    if marked:
        assert record.completed_at == now


def test_resumable_with_a_stale_heartbeat_is_left_running(tracker: Tracker) -> None:
    batch = tracker.start_batch("grid_batch", resumable=True)
    now = utcnow()
    _set(tracker, batch.id, owner_host="another-host", heartbeat_at=now - timedelta(hours=1))
    assert [o.operation.id for o in find_orphans(tracker.engine, LEASE, now=now) if o.resumable] == [batch.id]
    assert recover_orphans(tracker.engine, LEASE, now=now) == 0
    assert tracker.get(batch.id).status == "running"


def test_terminal_states_and_fresh_heartbeats_never_change(tracker: Tracker) -> None:
    store = ReapingStore(tracker.engine)
    now = utcnow()
    finishing = tracker.start_batch("import")
    reviving = tracker.start_batch("import")
    for handle in (finishing, reviving):
        _set(tracker, handle.id, owner_host="another-host", heartbeat_at=now - timedelta(hours=1))
    judged = [o.operation for o in find_orphans(tracker.engine, LEASE, now=now)]
    assert {o.id for o in judged} == {finishing.id, reviving.id}
    # Between the look and the mark: one finishes, the other shows a sign of life.
    finishing.finish()
    reviving.heartbeat()
    assert store.mark_failed(judged, ORPHAN_ERROR, now) == 0
    assert tracker.get(finishing.id).status == "completed"
    assert tracker.get(reviving.id).status == "running"
    # An old terminal operation is not even a candidate.
    later = find_orphans(tracker.engine, LEASE, now=now + timedelta(days=1))
    assert [o.operation.id for o in later] == [reviving.id]


def test_dry_run_counts_without_marking(tracker: Tracker) -> None:
    batch = tracker.start_batch("import")
    now = utcnow()
    _set(tracker, batch.id, owner_host="another-host", heartbeat_at=now - timedelta(hours=1))
    assert recover_orphans(tracker.engine, LEASE, dry_run=True, now=now) == 1
    assert tracker.get(batch.id).status == "running"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process start times are read from Linux /proc")
def test_pid_reuse_reboots_and_zombies_count_as_gone() -> None:
    me = identity_of(os.getpid())
    boot, _, ticks = me.rpartition(":")
    assert alive(os.getpid()) and alive(os.getpid(), me)
    assert not alive(os.getpid(), f"{boot}:{int(ticks) + 1}")  # a later process that reused the pid
    assert not alive(os.getpid(), f"00000000-0000-0000-0000-000000000000:{ticks}")  # recorded before a reboot
    child = subprocess.Popen([PYTHON, "-c", "import time; time.sleep(60)"])
    try:
        os.kill(child.pid, signal.SIGKILL)
        time.sleep(0.3)  # dead but not yet waited for: a zombie, which kill(pid, 0) still finds
        assert not alive(child.pid)
    finally:
        child.kill()
        child.wait()
    assert not alive(child.pid)
    assert not alive(0) and not alive(-5) and not alive(None)


def _set(tracker: Tracker, operation_id: str, **values: object) -> None:
    set_times(tracker.engine, operation_id, **values)


def test_holder_alive_rule() -> None:
    """Another host: the heartbeat within the lease. This host: the pid; grace_s lets a fresh heartbeat outlive a
    dead pid, lease_binds_here lets a stale heartbeat end a live one."""
    now, me = utcnow(), os.getpid()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    fresh, stale = now - timedelta(seconds=5), now - timedelta(seconds=61)
    assert holder_alive("far", 1, None, fresh, now, 60, here="near")
    assert not holder_alive("far", 1, None, stale, now, 60, here="near")
    assert not holder_alive("far", 1, None, None, now, 60, here="near")
    assert holder_alive("near", None, None, fresh, now, 60, here="near")  # no pid: judged like another host
    assert holder_alive("near", me, identity_of(me), stale, now, 60, here="near")  # live pid: heartbeat ignored
    assert not holder_alive("near", gone.pid, None, fresh, now, 60, here="near")
    assert holder_alive("near", gone.pid, None, fresh, now, 60, here="near", grace_s=10)
    assert not holder_alive("near", me, None, stale, now, 60, here="near", lease_binds_here=True)
    assert not holder_alive("near", me, None, None, now, 60, here="near", lease_binds_here=True)
