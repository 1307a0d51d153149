"""How a purge's chunks are made: an operation's writer and task rows go with it (on SQLite through the foreign keys'
cascade), a chunk past its time limit commits after the group it is deleting and leaves whole operations, the
purge's one connection goes back to the pool with its usual settings, and the WAL is checkpointed between chunks
only as often as its page budget needs. Nothing here measures time: a time limit of 0 makes every chunk stop after
its first group."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, insert, select

from tracker import Tracker
from tracker.db import write_connection
from tracker.models import Task
from tracker.reaper import purge
from tracker.store.reaping import GROUP_ROWS, ReapingStore
from tracker.timeutil import utcnow

from .reap_helpers import ITEMS, OPS, WRITERS, insert_finished, table_counts

HOUR = 3600.0
TASKS = Task.__table__


def _count(tracker: Tracker, table) -> int:  # noqa: ANN001
    with tracker.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def test_an_operations_writer_and_task_rows_go_with_it(backend_tracker: Tracker) -> None:
    tracker = backend_tracker
    old = insert_finished(tracker.engine, 3, 4, utcnow() - timedelta(days=1))
    kept = insert_finished(tracker.engine, 1, 4, utcnow())
    now = utcnow()
    with write_connection(tracker.engine) as conn:
        for op_id in old + kept:
            conn.execute(insert(WRITERS).values(
                operation_id=op_id, writer_id="w1", host="h", pid=1, heartbeat_at=now, last_group=3,
            ))
            conn.execute(insert(TASKS).values(
                operation_id=op_id, tool="greet", arguments={}, revision="r1", phase="working", rerun=False,
                takeovers=0,
            ))
    summary = purge(tracker.engine, HOUR, chunk_items=5, chunk_operations=2, pause_s=0)
    assert (summary.operations, summary.items) == (3, 12)
    assert table_counts(tracker.engine) == (1, 4)
    assert _count(tracker, WRITERS) == 1 and _count(tracker, TASKS) == 1


def test_a_chunk_past_its_time_limit_commits_after_one_group(tracker: Tracker) -> None:
    per_group = GROUP_ROWS // 10  # operations of 9 items: 10 rows each
    ops = insert_finished(tracker.engine, 3 * per_group, 9, utcnow() - timedelta(days=1))
    store = ReapingStore(tracker.engine)
    cutoff = utcnow() - timedelta(seconds=HOUR)
    results = []
    with store.purge_session() as session:
        while not (result := session.delete_chunk(cutoff, 100_000, 10_000, hold_s=0)).nothing:
            results.append(result)
            left = table_counts(tracker.engine)
            assert left[1] == 9 * left[0]  # whole operations only, between any two chunks
    assert [(r.operations, r.timed_out) for r in results] == [(per_group, True)] * 2 + [(per_group, False)]
    assert table_counts(tracker.engine) == (0, 0)
    assert len(ops) == 3 * per_group


def test_without_a_time_limit_a_chunk_takes_all_it_picked(tracker: Tracker) -> None:
    insert_finished(tracker.engine, 300, 9, utcnow() - timedelta(days=1))
    result = ReapingStore(tracker.engine).delete_expired_chunk(utcnow() - timedelta(seconds=HOUR), 100_000, 10_000)
    assert (result.operations, result.items, result.timed_out) == (300, 2_700, False)


def test_the_purge_connection_goes_back_with_its_usual_settings(tracker: Tracker) -> None:
    def settings() -> list[tuple[int, int, int]]:
        conns = [tracker.engine.connect() for _ in range(3)]  # whichever of the pool's connections the purge had
        try:
            raws = [c.connection.driver_connection for c in conns]
            return [tuple(raw.execute(f"PRAGMA {name}").fetchone()[0]
                          for name in ("cache_size", "wal_autocheckpoint", "mmap_size")) for raw in raws]
        finally:
            for c in conns:
                c.close()

    usual = settings()
    insert_finished(tracker.engine, 50, 5, utcnow() - timedelta(days=1))
    assert purge(tracker.engine, HOUR, chunk_items=40, pause_s=0).operations == 50
    assert settings() == usual
    assert usual[0][2] == 0  # no memory map outside a purge


def test_the_wal_is_checkpointed_only_as_often_as_its_budget_needs(tracker: Tracker) -> None:
    insert_finished(tracker.engine, 400, 5, utcnow() - timedelta(days=1))
    summary = purge(tracker.engine, HOUR, chunk_items=50, chunk_operations=10, pause_s=0, checkpoint_min_rows=0)
    assert (summary.operations, summary.items) == (400, 2_000)
    assert summary.chunks >= 40
    assert 1 <= summary.checkpoints < summary.chunks / 2  # small chunks add few pages: several per checkpoint
    assert summary.checkpoint in ("truncate", "passive")


def test_summary_says_where_the_time_went(tracker: Tracker) -> None:
    insert_finished(tracker.engine, 100, 5, utcnow() - timedelta(days=1))
    summary = purge(tracker.engine, HOUR, chunk_items=50, pause_s=0.001)
    assert summary.chunks >= 10
    assert 0 <= summary.locked_cpu_s and 0 <= summary.paused_s and 0 <= summary.checkpoint_s
    # Disjoint stretches of one purge's time (no bound on any of them: the machine's speed is not tested here).
    assert summary.locked_s + summary.checkpoint_s + summary.paused_s <= summary.seconds
    assert _count(tracker, OPS) == 0 and _count(tracker, ITEMS) == 0
