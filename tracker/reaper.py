"""Retention and orphan recovery: purge expired operations in short chunks, fail running operations whose owner
is gone, and a periodic reaper for long-lived servers.

Using it from a server (e.g. the MCP server's lifespan):

    reaper = PeriodicReaper(tracker.engine, settings)   # interval settings.reap_interval_s; 0 = no periodic purge
    reaper.start()      # background thread: one orphan-recovery pass at once, then a reap every interval
    ...
    reaper.stop()       # on shutdown; waits for a chunk in progress (each is short) and returns

or, inside an asyncio server, as a task that is cancelled on shutdown:

    task = asyncio.create_task(reaper.run_forever())    # the database work runs in a worker thread
    ...
    task.cancel()

Several servers on one database stay cheap: each tick is one orphan query over the running operations plus an
index probe for anything expired; the heavy purge only starts when something is. Two servers purging at once
split the work (each chunk picks what is still there inside its own write transaction) rather than repeat it,
so no lease is needed; ticks are jittered by +-10% so servers started together drift apart."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from . import liveness
from .aio import off_loop
from .db import database_errors, is_busy, unavailable
from .errors import DatabaseUnavailable
from .settings import Settings, format_duration
from .store.reaping import ChunkResult, ReapingStore, RunningOperation, WriterSign

log = logging.getLogger(__name__)

ORPHAN_ERROR = "interrupted: owner process exited"
CHUNK_ITEMS = 20_000  # item rows per purge transaction (at most)
CHUNK_OPERATIONS = 2_000  # operation rows per purge transaction (at most; chunks also stop at CHUNK_TARGET_S)
CHECKPOINT_MIN_ROWS = 10_000  # a purge this large folds the WAL back into the file afterwards
# A chunk holds the write lock for about this long at most: it commits after the group of operations that reaches
# it (store.reaping.GROUP_ROWS), and chunks that end whole but late shrink (a chunk's cost varies with the data more
# than with its row count: old databases hold random ids, whose rows sit on index pages all over the file).
CHUNK_TARGET_S = 0.025
# Between chunks the purger lets go of the write lock for at least this long (plus up to half again, jittered), so
# that a writer waiting for it gets in: writers poll the lock every 2 ms at most (db.WRITE_LOCK_POLL_S). The pause
# grows with the chunk (PAUSE_RATIO of the time it held the lock) to leave other writers a share of the time.
PAUSE_S = 0.003
PAUSE_RATIO = 0.1
WAL_FRAMES_TARGET = 800  # WAL pages one chunk may add (SQLite checkpoints automatically at 1,000)
# The WAL is checkpointed between chunks before it could grow past this many pages (below SQLite's automatic
# checkpoint at 1,000, which a recorder's commit would otherwise run): every second chunk or so, not after each.
WAL_CHECKPOINT_FRAMES = 900
# Past this many pages the WAL is made to start over (RESTART) at a checkpoint between chunks that another writer's
# commit kept from copying all of it: at 0, always, so recorders' commits never find the WAL past the
# automatic-checkpoint size and never run a checkpoint themselves.
WAL_RESTART_FRAMES = 0
ATTEMPTS = 3  # tries per chunk when the database stays busy past its busy timeout
# On the owner's host a dead pid fails the operation at once, but only after the heartbeat has been quiet this
# long: other processes that attached to it and still record keep the heartbeat fresh on every flush.
OWNER_GONE_GRACE_S = 2.0
ORPHAN_CHUNK = 500  # operations marked failed per transaction (40,000 in one held the write lock for ~8 s)

T = TypeVar("T")


@dataclass(frozen=True)
class PurgeSummary:
    operations: int  # operations purged (or that would be, on a dry run)
    items: int  # their items
    seconds: float
    dry_run: bool
    cutoff: datetime  # completed before this = expired
    chunks: int  # write transactions used
    checkpoint: str | None  # 'truncate' or 'passive' when the WAL was checkpointed afterwards
    locked_s: float = 0.0  # time spent inside chunk transactions (holding the write lock on SQLite)
    longest_chunk_s: float = 0.0
    locked_cpu_s: float = 0.0  # CPU time the purging thread used inside them (the rest: waiting for a CPU or I/O)
    checkpoints: int = 0  # WAL checkpoints between chunks
    checkpoint_s: float = 0.0  # time they took
    paused_s: float = 0.0  # time slept between chunks (beyond the checkpoints) for other writers to get in

    @property
    def rows_per_s(self) -> float:
        return (self.operations + self.items) / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class ReapSummary:
    purge: PurgeSummary
    orphans_failed: int
    orphans_resumable: int  # left running for their batch's resumption

    def line(self) -> str:
        """The one summary line `tracker reap` prints."""
        p = self.purge
        verb = "would purge" if p.dry_run else "purged"
        text = f"{verb} {p.operations} operations and {p.items} items in {p.seconds:.2f}s"
        if self.orphans_failed or self.orphans_resumable:
            marked = "would mark" if p.dry_run else "marked"
            text += f"; {marked} {self.orphans_failed} orphaned operations failed"
            if self.orphans_resumable:
                text += f", left {self.orphans_resumable} resumable ones running"
        if p.dry_run:
            text += " (dry run: nothing changed)"
        return text


@dataclass(frozen=True)
class Orphan:
    operation: RunningOperation
    reason: str  # 'owner process exited' or 'heartbeat expired'

    @property
    def resumable(self) -> bool:
        return self.operation.resumable


# -- purge ----------------------------------------------------------------------------------------------------------


def purge(
    engine: Engine,
    older_than_s: float,
    dry_run: bool = False,
    *,
    now: datetime | None = None,
    chunk_items: int = CHUNK_ITEMS,
    chunk_operations: int = CHUNK_OPERATIONS,
    attempts: int = ATTEMPTS,
    busy_timeout_s: float | None = None,
    checkpoint_min_rows: int = CHECKPOINT_MIN_ROWS,
    chunk_target_s: float = CHUNK_TARGET_S,
    pause_s: float = PAUSE_S,
    pause_ratio: float = PAUSE_RATIO,
    stop: threading.Event | None = None,
    store: ReapingStore | None = None,
) -> PurgeSummary:
    """Delete operations that reached a terminal state more than older_than_s ago, with their items, in short
    transactions (each bounded by chunk_items items and chunk_operations operations). Running operations are never
    purged by age. A dry run counts what would go and changes nothing.

    A chunk that finds the database busy past its busy timeout is retried (attempts in all), then
    DatabaseUnavailable is raised saying how far the purge got; every chunk already committed is whole, so
    running it again finishes the job.

    Other writers wait while a chunk holds the write lock, so a chunk commits once it has held the lock
    chunk_target_s (after the group of operations it is deleting: on a busy machine the purging thread may wait
    for a CPU while it holds the lock, and the chunk then ends sooner), and chunks shrink when one adds more than
    WAL_FRAMES_TARGET pages to the WAL or, whole, took longer than chunk_target_s (and grow back up to the limits
    when cheap). After each chunk the purge checkpoints the WAL if it nears WAL_CHECKPOINT_FRAMES pages, and
    pauses (the checkpoint included) about pause_ratio times as long as it held the lock (at least pause_s), for
    waiting writers to get in. On PostgreSQL, where a chunk locks only the rows it deletes and no writer waits for
    it, chunks have no time limit and no pause: they run at their size limits. All chunks run on one connection
    (ReapingStore.purge_session). A set `stop` event ends it early, after a whole chunk."""
    if older_than_s < 0:
        raise ValueError("older_than_s must be >= 0")
    store = store or ReapingStore(engine, busy_timeout_s)
    started = time.monotonic()
    # Retention is judged by the database's clock: a reaper whose own clock runs ahead purges nothing early.
    cutoff = (now or store.now()) - timedelta(seconds=older_than_s)
    if dry_run:
        operations, items = _with_retries(store, attempts, lambda: store.count_expired(cutoff), "count expired")
        return PurgeSummary(operations, items, time.monotonic() - started, True, cutoff, 0, None)
    totals = _Totals()
    hold_s: float | None = chunk_target_s
    if not store.is_sqlite:
        # Measured on a durable PostgreSQL server, 1,000,000 operations: the 25 ms limit kept chunks at a few
        # thousand rows and the pauses were 15% of the purge.
        hold_s, chunk_target_s, pause_s, pause_ratio = None, math.inf, 0.0, 0.0
    sizer = _ChunkSizer(chunk_items, chunk_operations, chunk_target_s)
    wal = _WalBudget()
    with store.purge_session() as session:
        while True:
            max_items, max_operations = sizer.limits()
            began, cpu_began = time.monotonic(), time.thread_time()
            try:
                result: ChunkResult = _with_retries(
                    store, attempts, lambda: session.delete_chunk(cutoff, max_items, max_operations, hold_s),
                    "purge",
                )
            except DatabaseUnavailable as exc:
                raise DatabaseUnavailable(
                    f"{exc}; purge stopped after {totals.operations} operations and {totals.items} items "
                    "(what was purged is whole: run it again)"
                ) from None
            held = time.monotonic() - began
            if result.nothing:
                break
            totals.add_chunk(result, held, time.thread_time() - cpu_began)
            if stop is not None and stop.is_set():
                break
            # Outside the lock, when the WAL nears its budget: fold the pages of the chunks since into the file
            # (PASSIVE blocks no one), so no recorder's commit inherits a large automatic checkpoint. That time
            # counts towards the pause; the pause is jittered, so a waiting writer's polls cannot fall into step
            # with our chunks.
            pause = max(pause_s, held * pause_ratio) * random.uniform(1.0, 1.5)
            began = time.monotonic()
            rows = result.operations + result.items + result.batch_rows
            wal.wrote(rows)
            if wal.due(next_rows=rows * 5 // 4):  # the next chunk: at most a quarter larger (_ChunkSizer)
                try:
                    wal.checkpointed(store.checkpoint_between_chunks(WAL_RESTART_FRAMES))
                except SQLAlchemyError as exc:
                    log.debug("%s; the purge goes on", unavailable(store.location, exc, "checkpoint during purge"))
                totals.add_checkpoint(time.monotonic() - began)
            sizer.observe(held, wal.chunk_frames(rows), result.timed_out)
            rest = max(0.0, pause - (time.monotonic() - began))
            totals.paused_s += rest
            time.sleep(rest)
    checkpoint = None
    if totals.operations + totals.items >= checkpoint_min_rows:
        try:
            checkpoint = store.checkpoint()
        except SQLAlchemyError as exc:  # the purge itself is done; a later checkpoint will fold the WAL
            log.warning("%s", unavailable(store.location, exc, "WAL checkpoint after purge"))
    summary = totals.summary(time.monotonic() - started, cutoff, checkpoint)
    if summary.operations:
        log.info("purged %d operations and %d items in %.2fs", summary.operations, summary.items, summary.seconds)
    return summary


class _Totals:
    """What a purge did and where its time went (PurgeSummary)."""

    def __init__(self) -> None:
        self.operations = self.items = self.chunks = self.checkpoints = 0
        self.locked_s = self.longest_s = self.locked_cpu_s = self.checkpoint_s = self.paused_s = 0.0

    def add_chunk(self, result: ChunkResult, held_s: float, cpu_s: float) -> None:
        self.operations += result.operations
        self.items += result.items
        self.chunks += 1
        self.locked_s += held_s
        self.longest_s = max(self.longest_s, held_s)
        self.locked_cpu_s += cpu_s

    def add_checkpoint(self, seconds: float) -> None:
        self.checkpoints += 1
        self.checkpoint_s += seconds

    def summary(self, seconds: float, cutoff: datetime, checkpoint: str | None) -> PurgeSummary:
        return PurgeSummary(
            self.operations, self.items, seconds, False, cutoff, self.chunks, checkpoint, self.locked_s,
            self.longest_s, self.locked_cpu_s, self.checkpoints, self.checkpoint_s, self.paused_s,
        )


class _WalBudget:
    """When to checkpoint between chunks: before the WAL could reach WAL_CHECKPOINT_FRAMES pages, by the pages per
    purged row the checkpoints so far found (each checkpoint mostly waits for two fsyncs, whatever it copies, so
    one after every chunk took a third of a purge's time under load). Until a checkpoint has measured that, after
    every chunk."""

    def __init__(self) -> None:
        self.frames_per_row: float | None = None
        self.rows = 0  # rows purged since the WAL last started over

    def wrote(self, rows: int) -> None:
        self.rows += rows

    def due(self, next_rows: int) -> bool:
        per_row = self.frames_per_row
        return per_row is None or (self.rows + next_rows) * per_row > WAL_CHECKPOINT_FRAMES

    def checkpointed(self, wal: tuple[int, bool] | None) -> None:
        if wal is None:  # not SQLite: nothing to budget
            self.frames_per_row, self.rows = 0.0, 0
            return
        frames, restarted = wal
        if self.rows:
            # Up at once, down gently: a WAL past SQLite's automatic checkpoint costs a recorder a checkpoint.
            measured = frames / self.rows
            previous = self.frames_per_row
            self.frames_per_row = measured if previous is None or measured > previous else (previous + measured) / 2
        if restarted:
            self.rows = 0

    def chunk_frames(self, rows: int) -> int | None:
        return None if self.frames_per_row is None else int(rows * self.frames_per_row)


class _ChunkSizer:
    """Chunk limits that follow what a chunk costs others: the time it holds the write lock (target_s) and the WAL
    pages it adds (WAL_FRAMES_TARGET, below SQLite's 1,000-page automatic checkpoint, so a recorder committing
    right after a chunk does not inherit a checkpoint). Scaled down after a costly chunk, back up (to the
    configured maximum) after cheap ones."""

    def __init__(self, max_items: int, max_operations: int, target_s: float) -> None:
        self.max_items, self.max_operations, self.target_s = max(1, max_items), max(1, max_operations), target_s
        # Start small: the first chunks read cold pages, and the oldest expired operations may be scattered over
        # the file (the cancelled ones, picked first: 'cancelled' sorts first in the index), a page or more each.
        self.scale = 0.1

    def limits(self) -> tuple[int, int]:
        return max(1, int(self.max_items * self.scale)), max(1, int(self.max_operations * self.scale))

    def observe(self, held_s: float, frames: int | None, timed_out: bool = False) -> None:
        """timed_out: the chunk stopped at its time limit before deleting all it picked; its length then says
        nothing about the limits (a smaller chunk would have stopped no sooner)."""
        over = (frames or 0) / WAL_FRAMES_TARGET
        if not timed_out:
            over = max(over, held_s / self.target_s)
        if over > 1:
            self.scale = max(0.01, self.scale * max(0.25, 1 / over))
        elif over < 0.75 and not timed_out:
            self.scale = min(1.0, self.scale * min(1.25, 0.75 / max(over, 0.01)))


def _with_retries(store: ReapingStore, attempts: int, fn: Callable[[], T], what: str) -> T:
    for attempt in range(1, max(1, attempts) + 1):
        try:
            return fn()
        except SQLAlchemyError as exc:
            if not (isinstance(exc, OperationalError) and is_busy(exc)):
                raise unavailable(store.location, exc, what) from None
            if attempt >= attempts:
                raise DatabaseUnavailable(
                    f"database {store.location} stayed busy (locked by another writer) through {attempts} attempts"
                ) from None
            log.warning("database busy during %s, retrying (%d/%d)", what, attempt, attempts)
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


# -- orphans --------------------------------------------------------------------------------------------------------


def find_orphans(
    engine: Engine,
    lease_s: float,
    *,
    now: datetime | None = None,
    host: str | None = None,
    store: ReapingStore | None = None,
) -> list[Orphan]:
    """Running operations whose every recording process is gone: the owner, and each process that attached.

    A process on this host (its host name == host) is judged by tracker.liveness: gone when its pid is not
    alive, is a zombie, or now names a later process (pid reuse, by start ticks and boot id, which no clock step
    moves). The owner is judged gone only once the operation's heartbeat has also been quiet for
    OWNER_GONE_GRACE_S. A live owner is never judged by its heartbeat: it may be inside one long call (a sync
    upstream request) without recording. A process on another host, where no pid can be checked, is gone when
    its heartbeat is older than lease_s, by the database's clock (now defaults to it, read with the rows).
    Resumable ones are included (with .resumable) for the code that resumes them; recovery leaves them running."""
    store = store or ReapingStore(engine)
    host = host or socket.gethostname()
    with database_errors(store.location):
        running, db_time = store.running_operations()
    now = now or db_time
    grace_s = min(lease_s, OWNER_GONE_GRACE_S)
    orphans = []
    for op in running:
        owner_alive = liveness.holder_alive(
            op.owner_host, op.owner_pid, op.owner_process, op.heartbeat_at or op.started_at, now, lease_s,
            here=host, grace_s=grace_s,
        )
        if owner_alive or any(_writer_alive(w, host, now, lease_s) for w in op.writers):
            continue
        here = op.owner_host == host and op.owner_pid is not None
        orphans.append(Orphan(op, "owner process exited" if here else "heartbeat expired"))
    return orphans


def _writer_alive(writer: WriterSign, host: str, now: datetime, lease_s: float) -> bool:
    return liveness.holder_alive(writer.host, writer.pid, writer.process, writer.heartbeat_at, now, lease_s, here=host)


def recover_orphans(
    engine: Engine,
    lease_s: float = 60.0,
    dry_run: bool = False,
    *,
    now: datetime | None = None,
    store: ReapingStore | None = None,
    orphans: list[Orphan] | None = None,
    chunk: int = ORPHAN_CHUNK,
) -> int:
    """Mark running operations whose owner is gone (find_orphans) `failed` with the error 'interrupted: owner
    process exited' (completed_at now by the database's clock, so retention counts from here), in transactions
    of at most `chunk` operations, so other writers get in between. Resumable ones are left running for
    resumption. Returns how many were marked (on a dry run: how many would be)."""
    store = store or ReapingStore(engine)
    if orphans is None:
        orphans = find_orphans(engine, lease_s, now=now, store=store)
    # In id order: two reapers marking overlapping sets lock the rows in the same order (no deadlock).
    doomed = sorted((o.operation for o in orphans if not o.resumable), key=lambda op: op.id)
    if dry_run or not doomed:
        return len(doomed)
    changed = 0
    size = max(1, chunk)
    for start in range(0, len(doomed), size):
        part = doomed[start : start + size]
        changed += _with_retries(store, ATTEMPTS, lambda: store.mark_failed(part, ORPHAN_ERROR, now), "orphan recovery")
    if changed:
        log.info("marked %d orphaned operations failed (owner process gone)", changed)
    return changed


# -- one reap and the periodic reaper -------------------------------------------------------------------------------


def reap(
    engine: Engine,
    settings: Settings,
    older_than_s: float | None = None,
    dry_run: bool = False,
    *,
    busy_timeout_s: float | None = None,
) -> ReapSummary:
    """Orphan recovery, then a purge of what is older than older_than_s (default settings.retention_s)."""
    store = ReapingStore(engine, busy_timeout_s)
    orphans = find_orphans(engine, settings.heartbeat_lease_s, store=store)
    resumable = sum(1 for o in orphans if o.resumable)
    failed = recover_orphans(engine, settings.heartbeat_lease_s, dry_run, store=store, orphans=orphans)
    retention = settings.retention_s if older_than_s is None else older_than_s
    summary = purge(engine, retention, dry_run, store=store)
    return ReapSummary(summary, failed, resumable)


class PeriodicReaper:
    """Reaps every interval_s (default settings.reap_interval_s; 0 turns the periodic purge off) in a daemon
    thread. start() also runs one orphan-recovery pass at once, whatever the interval: a server that starts
    fails what its dead predecessors left running. Errors are logged, never raised: the next tick tries again."""

    def __init__(self, engine: Engine, settings: Settings, interval_s: float | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.interval_s = settings.reap_interval_s if interval_s is None else interval_s
        self._store = ReapingStore(engine)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ticks = 0  # completed ticks, for tests and logs

    @property
    def enabled(self) -> bool:
        return self.interval_s > 0

    def recover(self) -> int:
        """One orphan-recovery pass; logged, never raises."""
        try:
            return recover_orphans(self.engine, self.settings.heartbeat_lease_s, store=self._store)
        except Exception:  # noqa: BLE001 - a background task must survive a bad moment
            log.exception("orphan recovery failed; will retry next tick")
            return 0

    def tick(self) -> PurgeSummary | None:
        """One pass: orphan recovery, then a purge only if the index says something expired. Never raises."""
        self.recover()
        try:
            cutoff = self._store.now() - timedelta(seconds=self.settings.retention_s)
            if not self._store.has_expired(cutoff):
                return None
            return purge(self.engine, self.settings.retention_s, stop=self._stop, store=self._store)
        except Exception:  # noqa: BLE001
            log.exception("periodic purge failed; will retry next tick")
            return None
        finally:
            self.ticks += 1

    def _next_wait(self) -> float:
        return self.interval_s * random.uniform(0.9, 1.1)

    # -- threads --

    def start(self) -> None:
        """Start the background thread (idempotent). Returns at once."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tracker-reaper", daemon=True)
        self._thread.start()
        if self.enabled:
            log.info("reaper: every %s, retention %s", format_duration(self.interval_s),
                     format_duration(self.settings.retention_s))

    def _run(self) -> None:
        if not self.enabled:
            self.recover()
            return
        while not self._stop.is_set():
            self.tick()
            if self._stop.wait(self._next_wait()):
                break

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread and wait for it; a purge in progress stops after its current chunk."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None

    # -- asyncio --

    async def run_forever(self) -> None:
        """The same loop as a coroutine for an asyncio server; cancel the task to stop it. Database work runs in
        a worker thread so the event loop never blocks."""
        if not self.enabled:
            await off_loop(self.recover)
            return
        self._stop.clear()
        try:
            while True:
                await off_loop(self.tick)
                await asyncio.sleep(self._next_wait())
        except asyncio.CancelledError:
            self._stop.set()  # a purge still running in the worker thread stops after its chunk
            raise
