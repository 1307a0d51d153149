"""One clock for shared decisions, and liveness no clock can fool. Processes with a shifted clock are real ones,
run under libfaketime (Debian's `faketime`, installed by .ci/run): a recorder whose clock reads 30 s behind stands
for a host clock stepped forward after it started; reapers running hours or seconds ahead stand for skewed hosts."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import update

from tracker import Settings, Tracker
from tracker.db import write_connection
from tracker.reaper import OWNER_GONE_GRACE_S, recover_orphans
from tracker.testing.env import child_env
from tracker.timeutil import iso, parse_iso, to_ms, utcnow

from .conftest import PYTHON
from .hosts import skewed
from .reap_helpers import WRITERS, set_times

pytestmark = pytest.mark.timeout(120)

RECORDER = r"""
import os, time, tracker
t = tracker.Tracker.open()
batch = t.start_batch("import", total=10)
batch.record_success("a")
batch.flush()
print(batch.id, os.getpid(), flush=True)
time.sleep(60)  # alive and quiet: inside one long call
"""

STARTER = r"""
import tracker
t = tracker.Tracker.open()
print(t.start_batch("import", total=6).id, flush=True)
t.close()  # the starter exits; other processes record the batch
"""


# The reapers of the owner-liveness tests run with a short lease, so the grace a dead owner gets (the shorter of
# the lease and OWNER_GONE_GRACE_S) is short too: the tests wait past it in well under a second.
SHORT_LEASE_S = 0.5
GRACE_S = min(SHORT_LEASE_S, OWNER_GONE_GRACE_S)


def _at(offset_s: float, db: str, **extra: str) -> dict[str, str]:
    """The environment of a process on `db` whose clock reads offset_s off."""
    return skewed(child_env(db, **extra), offset_s)


def _reap(db: str, offset_s: float, *args: str, lease_s: float | None = None) -> str:
    lease = {} if lease_s is None else {"TRACKER_HEARTBEAT_LEASE": f"{lease_s}s"}
    done = subprocess.run(
        [PYTHON, "-m", "tracker", "reap", *args], env=_at(offset_s, db, **lease), capture_output=True, text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_clock_step_does_not_make_a_live_owner_look_dead(settings: Settings, tracker: Tracker) -> None:
    """The old pid-reuse test compared the process start, derived from /proc/stat's btime (which moves with the
    wall clock), with the operation's start: after a step of 5 s or more, `tracker reap` failed a live recorder."""
    recorder = subprocess.Popen(
        [PYTHON, "-c", RECORDER], env=_at(-30, settings.db), stdout=subprocess.PIPE, text=True
    )
    try:
        batch_id, pid = recorder.stdout.readline().split()  
        time.sleep(GRACE_S + 0.5)  # quiet longer than the grace a dead owner gets
        _reap(settings.db, 0, lease_s=SHORT_LEASE_S)
        assert tracker.get(batch_id).status == "running"
        os.kill(int(pid), signal.SIGKILL)
    finally:
        recorder.kill()
        recorder.wait()
    time.sleep(GRACE_S + 0.5)
    _reap(settings.db, 0, lease_s=SHORT_LEASE_S)  # now really gone: failed
    assert tracker.get(batch_id).status == "failed"


def test_a_reaper_whose_clock_runs_hours_ahead_purges_nothing_early(postgres_server) -> None:
    """Retention is judged by the database's clock: a reaper two hours ahead of it must not purge an operation
    that completed seconds ago (the old one computed the cutoff from its own clock)."""
    db = postgres_server.create_database(f"skew_purge_{time.monotonic_ns()}")
    with Tracker(Settings.from_env({}, db=db)) as tracker:
        batch = tracker.start_batch("import", total=1)
        batch.record_success("a")
        batch.finish()
        _reap(db, 7200)
        assert tracker.get(batch.id) is not None
        _reap(db, 0, "--older-than", "0s")  # the same purge by the database's clock takes it
        assert tracker.get(batch.id) is None


def test_a_reaper_whose_clock_runs_ahead_does_not_fail_a_live_owner_elsewhere(postgres_server) -> None:
    """An owner on another host is judged by its heartbeat against the database's clock: a reaper 90 s ahead
    (more than the 60 s lease) must not fail it."""
    db = postgres_server.create_database(f"skew_lease_{time.monotonic_ns()}")
    with Tracker(Settings.from_env({}, db=db)) as tracker:
        batch = tracker.start_batch("import", total=1)
        set_times(tracker.engine, batch.id, owner_host="another-host", owner_pid=1, heartbeat_at=tracker.store.now())
        _reap(db, 90)
        assert tracker.get(batch.id).status == "running"


def test_an_attached_worker_keeps_the_batch_alive_after_its_starter_exits(settings: Settings, tracker: Tracker) -> None:
    """A process that attach()es to a batch started by a short-lived process records with pauses longer than the
    owner's grace: the batch is not an orphan while that worker lives (the old reaper failed it at the first
    pause over 2 s)."""
    starter = subprocess.run(
        [PYTHON, "-c", STARTER], env=child_env(settings.db), capture_output=True, text=True, timeout=60
    )
    assert starter.returncode == 0, starter.stderr
    batch_id = starter.stdout.strip()
    worker = tracker.attach(batch_id)
    for n in range(3):
        worker.record_success(f"item-{n}")
        worker.flush()
        time.sleep(GRACE_S + 0.4)
        assert recover_orphans(tracker.engine, lease_s=SHORT_LEASE_S) == 0
        _reap(settings.db, 0, lease_s=SHORT_LEASE_S)  # another process's reaper too
        assert tracker.get(batch_id).status == "running"
    worker.finish()
    record = tracker.get(batch_id)
    assert (record.status, record.succeeded_count) == ("completed", 3)


def test_an_attached_worker_on_another_host_keeps_it_alive_by_heartbeat(tracker: Tracker) -> None:
    """Seen from another host no pid can be checked: a writer there counts while its heartbeat is fresh."""
    batch = tracker.start_batch("import")
    set_times(tracker.engine, batch.id, owner_host="gone-host", owner_pid=1, heartbeat_at=utcnow())
    attached = tracker.attach(batch.id)
    with write_connection(tracker.engine) as conn:  # both writers live elsewhere; only the attached one is fresh
        conn.execute(update(WRITERS).where(WRITERS.c.operation_id == batch.id).values(host="gone-host"))
        conn.execute(update(WRITERS).where(WRITERS.c.writer_id == attached.writer_id).values(host="other-host"))
    later = utcnow()
    assert recover_orphans(tracker.engine, lease_s=60, now=later + timedelta(seconds=30)) == 0
    assert recover_orphans(tracker.engine, lease_s=60, now=later + timedelta(seconds=90)) == 1


def test_one_time_format_both_ways() -> None:
    moment = datetime(2026, 5, 9, 7, 35, 25, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert iso(moment) == "2026-05-09T05:35:25.123Z"
    assert parse_iso(iso(moment)) == to_ms(moment) and parse_iso(iso(moment)).tzinfo == timezone.utc
    assert iso(None) is None and parse_iso(iso(utcnow())).microsecond % 1000 == 0
    for bad in ("2026-05-09 05:35:25", "2026-05-09 05:35:25.123Z", "2026-02-30T05:35:25.123Z",
                "2026-05-09T24:00:00.000Z", 17, None):
        with pytest.raises(ValueError):
            parse_iso(bad)  # type: ignore[arg-type]
    # The fast paths (fromisoformat for the exact form; isoformat from year 1000 on) read and write what strptime
    # and strftime do.
    for text in ("0999-12-31T23:59:59.999Z", "1000-01-01T00:00:00.000Z", "2024-02-29T12:00:00.500Z",
                 "2026-5-9T5:35:25.1Z", "٢٠٢٦-05-09T05:35:25.123Z"):
        assert parse_iso(text) == datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert iso(parse_iso("1000-01-01T00:00:00.000Z")) == "1000-01-01T00:00:00.000Z"
    assert iso(datetime(2026, 5, 9, 5, 35, 25, 999999, tzinfo=timezone.utc)) == "2026-05-09T05:35:25.999Z"
