"""All SQL for retention and orphan recovery: what is expired, deleting it in short chunks, the running operations
whose owner may be gone, and marking those failed. Each public method is one short transaction.

Chunked purge and crash safety. A chunk is one write transaction (BEGIN IMMEDIATE on SQLite) that picks expired
operations (terminal, completed_at < cutoff) through the (status, completed_at) index and deletes their items (and a
run batch's input rows) and then their rows. Operations whose items fit in the chunk's budget go whole, items and
row in the same transaction, so a crash never leaves them half-deleted. An operation with more items than one chunk
is the one exception: its items go over several chunks and its row goes with the last one. A crash (or a busy database) in between leaves
that operation with fewer items than its counters say; that is acceptable only because it is expired anyway,
past the retention it was promised for, and the next purge picks it up again (it still matches the expiry test)
and finishes it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, Select, delete, func, select, update

from ..db import engine_location
from ..models import FAILED, RUNNING, TERMINAL_STATUSES, Operation, OperationItem, OperationWriter, RunBatchRow, Task
from ..timeutil import elapsed_ms, iso
from .clock import db_now, engine_now

PURGE_CACHE_KIB = 32 * 1024  # a chunk deleting random-id rows dirties pages all over the indexes
# A chunk deletes its operations in groups of about this many rows (items, batch rows and operation rows) and may
# commit after any of them: 3-4 ms of CPU time each here.
GROUP_ROWS = 1000
# The purge reads the file through a memory map: every other process's commit empties the page cache of the purge's
# connection, and each chunk then reads its pages again, through read() calls without a map (10-15% of the CPU time
# a chunk takes inside the write lock, measured here). Only the purge's connection, only while it purges.
PURGE_MMAP_BYTES = 1 << 32
_OPS = Operation.__table__
_ITEMS = OperationItem.__table__
_WRITERS = OperationWriter.__table__
_ROWS = RunBatchRow.__table__
_TASKS = Task.__table__


@dataclass(frozen=True)
class ChunkResult:
    operations: int  # operation rows deleted
    items: int  # item rows deleted
    batch_rows: int = 0  # input rows of run batches deleted (run_batch_rows)
    timed_out: bool = False  # it stopped at its time limit (hold_s), leaving some of what it picked

    def __add__(self, other: ChunkResult) -> ChunkResult:
        return ChunkResult(
            self.operations + other.operations, self.items + other.items, self.batch_rows + other.batch_rows
        )

    @property
    def nothing(self) -> bool:
        return self.operations == 0 and self.items == 0 and self.batch_rows == 0


@dataclass(frozen=True)
class WriterSign:
    """A process that registered to record into a running operation, and its last heartbeat."""

    host: str
    pid: int
    process: str | None
    heartbeat_at: datetime


@dataclass(frozen=True)
class RunningOperation:
    """What orphan detection needs to know about one running operation."""

    id: str
    kind: str
    owner_host: str | None
    owner_pid: int | None
    started_at: datetime
    heartbeat_at: datetime | None
    resumable: bool
    owner_process: str | None = None
    writers: tuple[WriterSign, ...] = ()


def _expired(cutoff: datetime) -> ColumnElement[bool]:
    # Matches the (status, completed_at) index: one short range per terminal status.
    return _OPS.c.status.in_(TERMINAL_STATUSES) & (_OPS.c.completed_at < cutoff)


# SQLite's chunk statements: constant texts, so the driver keeps each one prepared, with the picked ids as one JSON
# array parameter (json_each). Through SQLAlchemy, each `IN (...)` of up to 1,000 ids was compiled, bound and
# prepared anew for every chunk, and that cost as much CPU time as SQLite's deleting (measured: 9.1 -> 3.9 us of CPU
# time per purged row inside the write lock).
_TERMINAL = ", ".join(f"'{status}'" for status in TERMINAL_STATUSES)
_SQLITE_PICK = (
    "SELECT id, succeeded_count + failed_count, (SELECT count(*) FROM run_batch_rows WHERE batch_id = operations.id)"
    f" FROM operations WHERE status IN ({_TERMINAL}) AND completed_at < ? LIMIT ?"
)
_SQLITE_DELETE_ITEMS = "DELETE FROM operation_items WHERE operation_id IN (SELECT value FROM json_each(?))"
_SQLITE_DELETE_OPERATIONS = "DELETE FROM operations WHERE id IN (SELECT value FROM json_each(?))"
_POSTGRES_COUNT_ITEMS = "SELECT count(*) FROM operation_items WHERE operation_id = ANY(%s)"
_POSTGRES_DELETE_OPERATIONS = "DELETE FROM operations WHERE id = ANY(%s)"


class PurgeSession:
    """The chunks of one purge, on one connection (ReapingStore.purge_session)."""

    def __init__(self, conn: Connection, is_sqlite: bool) -> None:
        self._conn = conn
        self._is_sqlite = is_sqlite

    def delete_chunk(
        self, cutoff: datetime, max_items: int, max_operations: int, hold_s: float | None = None
    ) -> ChunkResult:
        """Delete one bounded chunk of expired operations in one write transaction; a result with `nothing` means
        nothing is left.

        Picks up to max_operations expired operations whose items (by their counters, plus a run batch's input
        rows) fit in max_items and deletes them whole, in groups of about GROUP_ROWS rows; with hold_s, it commits
        after the first group that ends hold_s or more after the transaction began (the rest stay for the next
        chunk), so a chunk slowed down, by the data or by a machine too busy to give it a CPU, still lets go of
        the write lock about on time. If the first operation alone has more items than max_items, deletes
        max_items of its items instead, and its row together with the last of them. On SQLite the chunk's commit
        does not checkpoint (the caller runs checkpoint_between_chunks() after releasing the lock), so the time it
        holds the write lock is the time it takes."""
        conn = self._conn
        with conn.begin():
            began = time.monotonic()
            if self._is_sqlite:
                rows = conn.exec_driver_sql(_SQLITE_PICK, (iso(cutoff), max_operations)).all()
            else:
                rows = conn.execute(_pick_query(cutoff, max_operations)).all()
            picked, large = _fit(rows, max_items)
            if large is not None:
                return _delete_part(conn, large, max_items)
            done = ChunkResult(0, 0)
            groups = _groups(picked)
            for group in groups:
                done = done + self._delete_whole([operation_id for operation_id, _rows, _batch in group],
                                                 sum(batch for _id, _rows, batch in group))
                if hold_s is not None and time.monotonic() - began >= hold_s:
                    if next(groups, None) is not None:
                        return replace(done, timed_out=True)
                    break
            return done

    def _delete_whole(self, picked: list[str], batch_rows: int) -> ChunkResult:
        conn = self._conn
        if self._is_sqlite:
            # Items by their own statement, for their exact count (an operation whose purge was interrupted has
            # fewer than its counters say). Its writer, task and batch rows go by the foreign keys' ON DELETE
            # CASCADE (every tracker connection has foreign_keys on), as they would with one DELETE; the batch rows
            # were counted in this same transaction.
            ids = json.dumps(picked)
            items = conn.exec_driver_sql(_SQLITE_DELETE_ITEMS, (ids,)).rowcount
            operations = conn.exec_driver_sql(_SQLITE_DELETE_OPERATIONS, (ids,)).rowcount
            return ChunkResult(operations, items, batch_rows)
        # PostgreSQL: the ids as one array parameter (constant texts, which psycopg prepares; an IN list of 1,000
        # values was a new statement planned for every chunk), and the items too go by the cascade, as in one
        # DELETE (81,538 -> 104,128 rows/s at 1,000,000 operations against deleting them first by their own
        # statement, whose dead index entries the cascade's check of each operation then visits again). Their
        # exact count is read first: the picked rows are locked, and a terminal operation takes no new items.
        items = conn.exec_driver_sql(_POSTGRES_COUNT_ITEMS, (picked,)).scalar_one()
        operations = conn.exec_driver_sql(_POSTGRES_DELETE_OPERATIONS, (picked,)).rowcount
        return ChunkResult(operations, items, batch_rows)


def _pick_query(cutoff: datetime, max_operations: int) -> Select[Any]:
    """PostgreSQL's pick: SQLite's, locking what it picks (two purgers split the work and never wait)."""
    batch_rows = select(func.count()).where(_ROWS.c.batch_id == _OPS.c.id).scalar_subquery()
    return (
        select(_OPS.c.id, _OPS.c.succeeded_count + _OPS.c.failed_count, batch_rows)
        .where(_expired(cutoff))
        .limit(max_operations)
        .with_for_update(of=_OPS, skip_locked=True)
    )


def _fit(rows: Sequence[Any], budget: int) -> tuple[list[tuple[str, int, int]], str | None]:
    """([(id, rows, batch rows)], None) for the leading operations whose items and batch rows fit in budget; or
    ([], id) when the first one alone does not. A run batch's input rows count like items (its worker is gone with
    it); rows = items + batch rows + the operation's own row."""
    picked: list[tuple[str, int, int]] = []
    for operation_id, items, batch_rows in rows:
        if items + batch_rows > budget:
            return picked, None if picked else operation_id
        picked.append((operation_id, items + batch_rows + 1, batch_rows))
        budget -= items + batch_rows
    return picked, None


def _groups(picked: list[tuple[str, int, int]]) -> Iterator[list[tuple[str, int, int]]]:
    """The picked operations in runs of about GROUP_ROWS rows, in the order they were picked."""
    group: list[tuple[str, int, int]] = []
    weight = 0
    for entry in picked:
        group.append(entry)
        weight += entry[1]
        if weight >= GROUP_ROWS:
            yield group
            group, weight = [], 0
    if group:
        yield group


def _delete_part(conn: Connection, large: str, max_items: int) -> ChunkResult:
    """Part of one operation too large for a chunk: its batch rows first, then its items, max_items in all; its row
    with the last of them. Stock SQLite has no DELETE ... LIMIT: bound the chunk through the primary key instead."""
    some_rows = select(_ROWS.c.row_number).where(_ROWS.c.batch_id == large).limit(max_items)
    rows = conn.execute(delete(_ROWS).where(_ROWS.c.batch_id == large, _ROWS.c.row_number.in_(some_rows))).rowcount
    items = 0
    if rows < max_items:
        some = select(_ITEMS.c.seq).where(_ITEMS.c.operation_id == large).limit(max_items - rows)
        items = conn.execute(delete(_ITEMS).where(_ITEMS.c.seq.in_(some))).rowcount
    operations = 0
    if rows + items < max_items:  # that was the last of its rows and items: the row goes with them
        conn.execute(delete(_WRITERS).where(_WRITERS.c.operation_id == large))
        conn.execute(delete(_TASKS).where(_TASKS.c.operation_id == large))
        operations = conn.execute(delete(_OPS).where(_OPS.c.id == large)).rowcount
    return ChunkResult(operations, items, rows)


class ReapingStore:
    """Purge and orphan SQL over one engine (SQLite or PostgreSQL).

    busy_timeout_s, when given, replaces the engine's busy timeout (30 s) for this store's SQLite write
    transactions only: how long one chunk waits for the write lock before the caller's retry logic sees
    'database is locked'."""

    def __init__(self, engine: Engine, busy_timeout_s: float | None = None) -> None:
        self.engine = engine
        self.location = engine_location(engine)
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._busy_timeout_ms = None if busy_timeout_s is None else max(0, int(busy_timeout_s * 1000))

    # -- purge --------------------------------------------------------------------------------------------------

    def has_expired(self, cutoff: datetime) -> bool:
        """The cheap check a periodic reaper makes before doing any work: a few index probes."""
        with self.engine.connect() as conn:
            return conn.execute(select(_OPS.c.id).where(_expired(cutoff)).limit(1)).first() is not None

    def count_expired(self, cutoff: datetime) -> tuple[int, int]:
        """(operations, items) a purge with this cutoff would delete; items counted from the item rows."""
        expired_ids = select(_OPS.c.id).where(_expired(cutoff))
        with self.engine.connect() as conn:
            operations = conn.execute(select(func.count()).select_from(expired_ids.subquery())).scalar_one()
            items = conn.execute(
                select(func.count()).select_from(_ITEMS).where(_ITEMS.c.operation_id.in_(expired_ids))
            ).scalar_one()
        return int(operations), int(items)

    @contextmanager
    def purge_session(self) -> Iterator[PurgeSession]:
        """One connection for all the chunks of a purge: the purge's connection settings are made once, and its page
        cache is kept from one chunk to the next (SQLite drops it only when another process wrote meanwhile)."""
        with self.engine.connect() as conn, self._settings(conn, purging=True):
            yield PurgeSession(conn.execution_options(write=True), self.is_sqlite)

    def delete_expired_chunk(self, cutoff: datetime, max_items: int, max_operations: int) -> ChunkResult:
        """One chunk (PurgeSession.delete_chunk) on a connection of its own."""
        with self.purge_session() as session:
            return session.delete_chunk(cutoff, max_items, max_operations)

    def checkpoint_between_chunks(self, restart_after: int) -> tuple[int, bool] | None:
        """Between purge chunks: copy the WAL into the database file without blocking anyone (PASSIVE), and look
        again: when the second look finds nothing new, all of it is in the file and the next transaction to write
        starts the WAL again from its beginning (unless a reader still uses an older snapshot). When a writer
        committed meanwhile (often one that waited for the chunk just committed), the second PASSIVE copies that
        too; if the WAL is still not all copied and is longer
        than restart_after pages, try RESTART, without waiting for the lock or for readers: it holds writers back
        while it copies what was added meanwhile and syncs. Without restarts a busy database's WAL only grows, and
        then every recorder commit past 1,000 pages runs a checkpoint itself. Returns (WAL length in pages,
        whether it starts over); None off SQLite."""
        if not self.is_sqlite:
            return None
        with self.engine.connect() as conn:
            raw: Any = conn.connection.driver_connection
            first = raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            busy, frames, copied = raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            frames = max(0, int(frames))
            if not busy and copied == frames:
                return max(frames, int(first[1])), True
            if frames <= restart_after:
                return frames, False
            usual = raw.execute("PRAGMA busy_timeout").fetchone()[0]
            raw.execute("PRAGMA busy_timeout = 0")
            try:
                busy = raw.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[0]
            finally:
                raw.execute(f"PRAGMA busy_timeout = {int(usual)}")
            return frames, not busy

    def checkpoint(self, wait_s: float = 0.02) -> str | None:
        """Fold the WAL back into the database file after a large purge and truncate it, so the -wal file does not
        stay at its peak size. TRUNCATE keeps writers out while it works, so the copying (and the fsync of a WAL
        that may hold many unsynced pages) is done first by a PASSIVE checkpoint, which blocks no one; TRUNCATE
        then waits at most wait_s for readers, else it is left at PASSIVE. Returns the mode that ran; None off
        SQLite."""
        if not self.is_sqlite:
            return None
        with self.engine.connect() as conn:
            raw: Any = conn.connection.driver_connection
            raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            usual = raw.execute("PRAGMA busy_timeout").fetchone()[0]
            raw.execute(f"PRAGMA busy_timeout = {int(wait_s * 1000)}")
            try:
                busy = raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                return "passive" if busy else "truncate"
            finally:
                raw.execute(f"PRAGMA busy_timeout = {int(usual)}")

    # -- orphans ------------------------------------------------------------------------------------------------

    def running_operations(self) -> tuple[list[RunningOperation], datetime]:
        """Every running operation with its registered writers, and the database's time of the read (one
        snapshot: what is judged stale is judged against the clock of the same moment)."""
        operations = select(
            _OPS.c.id, _OPS.c.kind, _OPS.c.owner_host, _OPS.c.owner_pid, _OPS.c.started_at, _OPS.c.heartbeat_at,
            _OPS.c.resumable, _OPS.c.owner_process,
        ).where(_OPS.c.status == RUNNING)
        writers = (
            select(_WRITERS.c.operation_id, _WRITERS.c.host, _WRITERS.c.pid, _WRITERS.c.process, _WRITERS.c.heartbeat_at)
            .join(_OPS, _OPS.c.id == _WRITERS.c.operation_id)
            .where(_OPS.c.status == RUNNING)
        )
        with self.engine.connect() as conn, conn.begin():
            now = db_now(conn)
            signs: dict[str, list[WriterSign]] = {}
            for operation_id, *sign in conn.execute(writers):
                signs.setdefault(operation_id, []).append(WriterSign(*sign))
            running = [
                RunningOperation(*row[:6], bool(row[6]), row[7], tuple(signs.get(row[0], ())))
                for row in conn.execute(operations)
            ]
        return running, now

    def mark_failed(self, orphans: Sequence[RunningOperation], error: str, now: datetime | None = None) -> int:
        """Mark these running operations failed, each only if it is still running, not resumable, and its
        heartbeat is the one the caller judged by (a fresh heartbeat means someone is still recording). One
        transaction: callers pass a bounded chunk. Returns how many changed."""
        changed = 0
        with self._write() as conn:
            now = now or db_now(conn)
            for orphan in orphans:
                result = conn.execute(
                    update(_OPS)
                    .where(
                        _OPS.c.id == orphan.id,
                        _OPS.c.status == RUNNING,  # a terminal state never changes
                        _OPS.c.resumable.is_(False),
                        _OPS.c.heartbeat_at.is_not_distinct_from(orphan.heartbeat_at),
                    )
                    .values(
                        status=FAILED,
                        error=error,
                        completed_at=now,
                        updated_at=now,
                        execution_time_ms=max(0, elapsed_ms(orphan.started_at, now)),
                    )
                )
                changed += result.rowcount
        return changed

    def now(self) -> datetime:
        """The database's clock (tracker.store.clock)."""
        return engine_now(self.engine)

    # -- helpers ------------------------------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction, on SQLite with this store's busy timeout."""
        with self.engine.connect() as conn, self._settings(conn), conn.execution_options(write=True).begin():
            yield conn

    @contextmanager
    def _settings(self, conn: Connection, purging: bool = False) -> Iterator[None]:
        """On SQLite: this store's busy timeout; for a purge also a page cache large enough to hold a chunk's dirty
        pages (instead of spilling them mid-way), no automatic checkpoint at commit (the purge checkpoints between
        chunks, outside the write lock) and reads through a memory map. Every setting is put back before the
        connection returns to the pool."""
        raw: Any = conn.connection.driver_connection if self.is_sqlite else None
        ours: dict[str, int] = {}
        if raw is not None and self._busy_timeout_ms is not None:
            ours["busy_timeout"] = self._busy_timeout_ms
        if raw is not None and purging:
            ours["cache_size"] = -PURGE_CACHE_KIB
            ours["wal_autocheckpoint"] = 0
            ours["mmap_size"] = PURGE_MMAP_BYTES
        usual = {name: raw.execute(f"PRAGMA {name}").fetchone()[0] for name in ours}
        for name, value in ours.items():
            raw.execute(f"PRAGMA {name} = {int(value)}")
        try:
            yield
        finally:
            for name, value in usual.items():
                raw.execute(f"PRAGMA {name} = {int(value)}")
