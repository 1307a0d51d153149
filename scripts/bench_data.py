"""Large benchmark databases, made fast and cached.

The schema comes from opening a Tracker (the migrations); the rows go in with raw sqlite3 executemany in large
transactions, with the secondary indexes dropped during the load and re-created from their own SQL afterwards, so
the file ends with exactly the schema the migrations made. Ids, timestamps and item shapes are what the library
writes. A generated file is cached under the system temp dir, keyed by schema revision, sizes and this
generator's version, and reused by later runs (reads leave it unchanged; figures that write use a copy)."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tracker import Settings, Tracker
from tracker.db import head_revision, sqlite_module
from tracker.ids import operation_id
from tracker.timeutil import iso

GENERATOR_VERSION = 2  # part of the cache key: bump it whenever the rows made below change
CACHE_DIR = Path(tempfile.gettempdir()) / "tracker-bench-cache"
LARGE_EVERY = 500  # one operation in this many is a large batch
LARGE_ITEMS = 500
OPERATION_TYPES = ("import", "update", "delete", "dartql")
HOST = "bench-host"


def item_counts(operations: int, items: int) -> list[int]:
    """Items per operation, summing exactly to `items`: one in LARGE_EVERY is a large batch, the rest 0-8 items."""
    large = [n % LARGE_EVERY == LARGE_EVERY - 1 for n in range(operations)]
    large_items = min(items, sum(large) * LARGE_ITEMS)
    small_ops = operations - sum(large)
    small_total = items - large_items
    base = small_total / max(1, small_ops)
    counts = [LARGE_ITEMS if big else max(0, round(base + (n * 7 % 9) - 4)) for n, big in enumerate(large)]
    diff = items - sum(counts)
    step = 1 if diff > 0 else -1
    n = 0
    while diff:
        if not large[n % operations] and counts[n % operations] + step >= 0:
            counts[n % operations] += step
            diff -= step
        n += 1
    return counts


def _operations(operations: int, counts: list[int], now: datetime, rng: random.Random) -> Iterator[tuple]:
    """Finished operations, oldest first, started over the two days before `now` minus 2 hours (all of them
    past the default one-hour retention). 1% cancelled; an operation whose items all failed is failed."""
    window = timedelta(days=2)
    first = now - timedelta(hours=2) - window
    for n in range(operations):
        op_type = OPERATION_TYPES[n % len(OPERATION_TYPES)]
        started = first + window * (n / operations)
        count = counts[n]
        failed = count // 10 + (1 if count % 10 > 7 else 0)
        succeeded = count - failed
        duration_ms = 5 + count * 3 + rng.randrange(50)
        completed = started + timedelta(milliseconds=duration_ms)
        status, error = "completed", None
        if n % 100 == 42:
            status, error = "cancelled", "cancelled by cancel_operation"
        elif succeeded == 0 and failed > 0:
            status = "failed"
        yield (
            operation_id("batch", op_type, int(started.timestamp() * 1000), rng.getrandbits(128)), "batch", op_type, status, count, succeeded, failed,
            iso(started), iso(completed), iso(completed), duration_ms, error, "null", None, HOST,
            10_000 + n % 20_000, iso(completed), 0,
        )


OPERATION_COLUMNS = (
    "id, kind, operation_type, status, total, succeeded_count, failed_count, started_at, updated_at, completed_at,"
    " execution_time_ms, error, inputs, outputs, owner_host, owner_pid, heartbeat_at, resumable"
)


def _items(op_id: str, count: int, start_row: int) -> list[tuple]:
    """Items in completion order: every tenth fails with its row number and an error."""
    rows = []
    for k in range(count):
        row_number = start_row + k
        if k % 10 == 9:
            error = f"row {row_number}: email is not a valid address"
            rows.append((op_id, 0, f"rec_{row_number:08x}", row_number, error))
        else:
            rows.append((op_id, 1, f"rec_{row_number:08x}", None, None))
    return rows


def _generate(path: Path, operations: int, items: int) -> None:
    with Tracker(Settings.from_env({}, db=str(path), reap_interval_s=0)):
        pass  # the migrations make the schema
    conn = sqlite_module().connect(str(path), isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")  # a scratch file being built; nothing to protect until it is renamed
    conn.execute("PRAGMA cache_size = -1000000")  # 1 GB: the primary-key b-trees take random inserts
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        " AND tbl_name IN ('operations', 'operation_items')"
    ).fetchall()
    conn.execute("BEGIN IMMEDIATE")
    for name, _sql in indexes:
        conn.execute(f'DROP INDEX "{name}"')
    rng = random.Random(20261123)
    counts = item_counts(operations, items)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    chunk: list[tuple] = []
    item_chunk: list[tuple] = []
    insert_op = f"INSERT INTO operations ({OPERATION_COLUMNS}) VALUES ({', '.join(['?'] * 18)})"
    insert_item = "INSERT INTO operation_items (operation_id, ok, item_id, row_number, error) VALUES (?, ?, ?, ?, ?)"
    for n, op in enumerate(_operations(operations, counts, now, rng)):
        chunk.append(op)
        item_chunk.extend(_items(op[0], counts[n], 1))
        if len(item_chunk) >= 500_000 or len(chunk) >= 100_000:
            conn.executemany(insert_op, chunk)
            conn.executemany(insert_item, item_chunk)
            chunk, item_chunk = [], []
    conn.executemany(insert_op, chunk)
    conn.executemany(insert_item, item_chunk)
    for _name, sql in indexes:
        conn.execute(sql)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def _valid(path: Path, operations: int, items: int) -> bool:
    conn = sqlite_module().connect(str(path))
    try:
        found = conn.execute("SELECT count(*) FROM operations").fetchone()[0]
        last_item = conn.execute("SELECT max(seq) FROM operation_items").fetchone()[0] or 0
        running = conn.execute("SELECT count(*) FROM operations WHERE status = 'running'").fetchone()[0]
    finally:
        conn.close()
    return found == operations and last_item == items and running == 0


def status_database(operations: int, items: int, log=print) -> tuple[Path, bool]:
    """A database of `operations` finished batches holding `items` items in all, from the cache when it is there.
    Returns (path, reused)."""
    key = f"status-r{head_revision()}-{operations}ops-{items}items-g{GENERATOR_VERSION}"
    CACHE_DIR.mkdir(mode=0o700, exist_ok=True)
    path = CACHE_DIR / f"{key}.db"
    if path.exists():
        if _valid(path, operations, items):
            return path, True
        log(f"  (cached {path.name} was changed; generating it again)")
    for stale in CACHE_DIR.glob(f"status-*-{operations}ops-{items}items-*"):
        stale.unlink()
    partial = CACHE_DIR / f"{key}.{os.getpid()}.partial"
    for leftover in CACHE_DIR.glob(f"{key}.*.partial*"):
        leftover.unlink()
    started = time.perf_counter()
    _generate(partial, operations, items)
    for suffix in ("-wal", "-shm"):
        Path(f"{partial}{suffix}").unlink(missing_ok=True)
    os.replace(partial, path)
    log(f"  (generated {path} in {time.perf_counter() - started:.0f} s: {path.stat().st_size / 1e6:,.0f} MB)")
    return path, False


def copy_database(source: Path, target: Path) -> Path:
    """A copy made durable before it is used: otherwise the first fsync of a measured run (a recorder's checkpoint,
    the purge's first one) writes out the whole copy, 1.4 GB at full size, and is counted as the run's stall."""
    shutil.copyfile(source, target)
    os.chmod(target, 0o600)  # tracker refuses a database file other users could read
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return target
