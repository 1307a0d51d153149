"""`tracker serve` runs the reaper: orphan recovery at start, then a purge every TRACKER_REAP_INTERVAL."""

from __future__ import annotations

import subprocess
import time
from datetime import timedelta
from pathlib import Path

from tracker import Settings, Tracker
from tracker.timeutil import utcnow

from .conftest import PYTHON
from .reap_helpers import finished_ago, set_times
from .sessions import sync_session


def _dead_pid() -> int:
    child = subprocess.Popen([PYTHON, "-c", "pass"])
    child.wait()
    return child.pid


def _seed(db: Path) -> tuple[str, str, str]:
    with Tracker(Settings.from_env({}, db=str(db))) as tracker:
        expired = tracker.start_batch("import", total=1)
        expired.record_success("a")
        expired.finish()
        finished_ago(tracker.engine, expired.id, utcnow() - timedelta(hours=2))
        fresh = tracker.start_batch("import", total=1)
        fresh.finish()
        orphan = tracker.start_batch("update", total=10)
        orphan.record_success("half-done")
        orphan.flush()
        orphan._close(RuntimeError("simulated owner death"))  # this handle stops flushing and heartbeating
        # its last sign of life, from a process that is gone
        set_times(tracker.engine, orphan.id, heartbeat_at=utcnow() - timedelta(minutes=5), owner_pid=_dead_pid())
    return expired.id, fresh.id, orphan.id


def _wait_for(predicate, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def test_serve_recovers_orphans_at_start_and_purges_on_schedule(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    expired, fresh, orphan = _seed(db)
    with sync_session(db, tmp_path / "server.log", TRACKER_REAP_INTERVAL="1s") as session:
        status = lambda op_id: session.call("get_batch_status", {"batch_operation_id": op_id}).value  # noqa: E731
        assert _wait_for(lambda: status(orphan)["operation"]["status"] == "failed")
        recovered = status(orphan)["operation"]
        assert recovered["error"] == "interrupted: owner process exited"
        assert recovered["progress"]["completed"] == 1 and recovered["completed_at"] is not None
        assert _wait_for(lambda: status(expired)["found"] is False)
        assert "kept for 1 hour" in status(expired)["message"]
        assert status(fresh)["found"] is True


def test_reap_interval_zero_still_recovers_orphans_but_never_purges(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    expired, _, orphan = _seed(db)
    with sync_session(db, tmp_path / "server.log", TRACKER_REAP_INTERVAL="0") as session:
        status = lambda op_id: session.call("get_batch_status", {"batch_operation_id": op_id}).value  # noqa: E731
        assert _wait_for(lambda: status(orphan)["operation"]["status"] == "failed")
        time.sleep(1.5)
        assert status(expired)["found"] is True
