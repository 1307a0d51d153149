"""Waiting for SQLite's write lock: writers poll it (db.begin_immediate) within the connection's busy timeout,
then fail with the usual 'database is locked', and leave the connection's busy timeout as it was."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy.exc import OperationalError, ProgrammingError

from tracker import Settings, Tracker
from tracker import db as tracker_db
from tracker.db import WRITE_LOCK_POLL_S, begin_immediate, sqlite_module



def _hold_write_lock(db: str, seconds: float) -> threading.Thread:
    locked = threading.Event()

    def hold() -> None:
        conn = sqlite_module().connect(db, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        locked.set()
        threading.Event().wait(seconds)  # not time.sleep, which a test may be counting
        conn.execute("COMMIT")
        conn.close()

    thread = threading.Thread(target=hold)
    thread.start()
    assert locked.wait(5)
    return thread


def test_a_writer_waits_for_a_held_lock_and_then_writes(
    tracker: Tracker, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(tracker_db.time, "sleep", sleep)
    holder = _hold_write_lock(settings.db, 0.5)
    try:
        batch = tracker.start_batch("import")  # BEGIN IMMEDIATE while the lock is held: it waits, then writes
        batch.record_success("a")
        batch.finish()
    finally:
        holder.join()
    assert tracker.get(batch.id).succeeded_count == 1
    # It waited by polling (not in SQLite's busy handler, whose sleeps grow to 100 ms, so about 6 in 0.5 s): short
    # sleeps, many tries. At least 10, not the ~100 of a quiet machine: under load each 2 ms sleep takes longer.
    assert len(slept) >= 10 and max(slept) <= WRITE_LOCK_POLL_S[1]
    with tracker.engine.connect() as conn:
        assert conn.connection.driver_connection.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000


def test_a_lock_held_past_the_busy_timeout_fails_as_locked(tracker: Tracker, settings: Settings) -> None:
    raw = sqlite_module().connect(settings.db, isolation_level=None)
    raw.execute("PRAGMA busy_timeout = 100")
    holder = _hold_write_lock(settings.db, 1.0)
    try:
        with pytest.raises(OperationalError, match="database is locked"):
            begin_immediate(raw)
        assert not raw.in_transaction
        assert raw.execute("PRAGMA busy_timeout").fetchone()[0] == 100  # put back
    finally:
        holder.join()
    begin_immediate(raw)  # free again: it gets the lock at once
    assert raw.in_transaction
    raw.execute("ROLLBACK")
    raw.close()


def test_other_errors_surface_as_they_are(tmp_path) -> None:  # noqa: ANN001
    raw = sqlite_module().connect(str(tmp_path / "x.db"), isolation_level=None)
    raw.execute("PRAGMA busy_timeout = 250")
    raw.execute("BEGIN")
    with pytest.raises(OperationalError, match="within a transaction"):
        begin_immediate(raw)  # a nested BEGIN is an error of its own, not a busy lock
    assert raw.execute("PRAGMA busy_timeout").fetchone()[0] == 250
    raw.execute("ROLLBACK")
    raw.close()


def test_a_closed_connection_is_an_sqlalchemy_error(tmp_path) -> None:  # noqa: ANN001
    raw = sqlite_module().connect(str(tmp_path / "x.db"), isolation_level=None)
    raw.close()
    with pytest.raises(ProgrammingError, match="closed"):  # callers catch SQLAlchemyError: never a raw driver error
        begin_immediate(raw)


def test_a_broken_connection_leaves_the_pool(tracker: Tracker) -> None:
    with tracker.engine.connect() as conn:
        conn.connection.driver_connection.close()  # as if the driver had lost it
        with pytest.raises(ProgrammingError):
            with conn.execution_options(write=True).begin():
                pass
        assert conn.invalidated
    batch = tracker.start_batch("import")  # a fresh connection from the pool
    batch.finish()
    assert tracker.get(batch.id).status == "completed"
