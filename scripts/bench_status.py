"""Figure 2: get_batch_status of random operations in a large database of finished operations, through the library
(tracker.status.StatusService.batch_status, the function the MCP tool calls) and through a real stdio MCP session,
against a primary-key lookup with raw sqlite3 on the same file (or raw psycopg on the same PostgreSQL database)."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from bench_common import mcp_session, percentile, raw_connection
from bench_data import status_database
from tracker import Settings, Tracker
from tracker.status import StatusService

if TYPE_CHECKING:
    from bench_postgres import BenchPostgres

# The figure measures reads: no reaper may purge the (cached) file, whatever its timestamps.
READ_ONLY_ENV = {"TRACKER_REAP_INTERVAL": "0", "TRACKER_RETENTION": "3650d"}


def sample_ids(path: Path, count: int, seed: int = 2) -> list[str]:
    """`count` operation ids picked uniformly at random (with repeats allowed, as polls are)."""
    conn = raw_connection(path)
    try:
        last = conn.execute("SELECT max(rowid) FROM operations").fetchone()[0]
        rng = random.Random(seed)
        rowids = [rng.randint(1, last) for _ in range(count)]
        wanted = ",".join(map(str, set(rowids)))
        by_rowid = dict(conn.execute(f"SELECT rowid, id FROM operations WHERE rowid IN ({wanted})"))
    finally:
        conn.close()
    return [by_rowid[r] for r in rowids if r in by_rowid]


def touch(path: Path, ids: list[str]) -> None:
    """Read every sampled operation and its first items once, untimed, so that all three measures find the same
    pages in the OS cache (each then starts with its own cold SQLite page cache)."""
    conn = raw_connection(path)
    try:
        for op_id in ids:
            conn.execute("SELECT * FROM operations WHERE id = ?", (op_id,)).fetchall()
            conn.execute(
                "SELECT * FROM operation_items WHERE operation_id = ? ORDER BY ok, seq LIMIT 100", (op_id,)
            ).fetchall()
    finally:
        conn.close()


def raw_lookup_ms(path: Path, ids: list[str]) -> list[float]:
    conn = raw_connection(path)
    try:
        times = []
        for op_id in ids:
            started = time.perf_counter()
            row = conn.execute("SELECT * FROM operations WHERE id = ?", (op_id,)).fetchone()
            times.append((time.perf_counter() - started) * 1000)
            assert row is not None
    finally:
        conn.close()
    return times


def library_ms(path: Path | str, ids: list[str]) -> list[float]:
    settings = Settings.from_env(READ_ONLY_ENV, db=str(path))
    with Tracker(settings) as tracker:
        service = StatusService(tracker)
        times = []
        for op_id in ids:
            started = time.perf_counter()
            answer = service.batch_status(op_id)
            times.append((time.perf_counter() - started) * 1000)
            assert answer["found"], op_id
    return times


def mcp_ms(path: Path | str, ids: list[str], workdir: Path) -> list[float]:
    async def measure() -> list[float]:
        async with mcp_session(path, READ_ONLY_ENV, errlog=workdir / "serve.log") as session:
            times = []
            for op_id in ids:
                started = time.perf_counter()
                answer = await session.answer("get_batch_status", batch_operation_id=op_id)
                times.append((time.perf_counter() - started) * 1000)
                assert answer["found"], op_id
            return times

    return anyio.run(measure)


def figure_2_status(
    workdir: Path, operations: int, items: int, samples: int, log=print, pg: BenchPostgres | None = None
) -> str:
    if pg is None:
        path, _reused = status_database(operations, items, log=log)
        db: Path | str = path
        sample, warm_up, lookup = sample_ids, touch, raw_lookup_ms
    else:
        import bench_postgres

        db = pg.status_database(operations, items, log=log)
        sample, warm_up, lookup = bench_postgres.sample_ids, bench_postgres.touch, bench_postgres.raw_lookup_ms
    warm = sample(db, 200, seed=1)
    ids = sample(db, samples)
    warm_up(db, warm + ids)
    # Each measure first runs on other random ids, so connection setup and imports are not in the figure.
    lookup(db, warm)
    raw = lookup(db, ids)
    library_ms(db, warm)
    library = library_ms(db, ids)
    mcp = mcp_ms(db, warm + ids, workdir)[len(warm):]
    lib50, lib99 = percentile(library, 0.50), percentile(library, 0.99)
    mcp50, mcp99 = percentile(mcp, 0.50), percentile(mcp, 0.99)
    raw50, raw99 = percentile(raw, 0.50), percentile(raw, 0.99)
    targets = (
        f"target library p99 <= 2 ms ({'met' if lib99 <= 2 else 'MISSED'}),"
        f" MCP p50 <= 5 ms ({'met' if mcp50 <= 5 else 'MISSED'})"
    )
    if pg is not None:
        targets += f", library p50 <= 3x raw ({'met' if lib50 <= 3 * raw50 else 'MISSED'})"
    return (
        f"2 get_batch_status{'' if pg is None else ' on PostgreSQL'} of {len(ids):,} random operations among"
        f" {operations:,} finished operations / {items:,} items: library p50 {lib50:.2f} ms p99 {lib99:.2f} ms"
        f" | MCP stdio round trip p50 {mcp50:.2f} ms p99 {mcp99:.2f} ms"
        f" | raw {'sqlite3' if pg is None else 'psycopg'} primary-key lookup p50 {raw50:.3f} ms p99 {raw99:.3f} ms"
        f" | ratio library/raw p50 {lib50 / raw50:.{0 if pg is None else 1}f}x, MCP/raw p50 {mcp50 / raw50:.0f}x"
        f" | {targets}"
    )
