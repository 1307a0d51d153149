"""Figure 2: get_batch_status of random operations in a large database of finished operations, through the library
(tracker.status.StatusService.batch_status, the function the MCP tool calls) and through a real stdio MCP session,
against two baselines with raw sqlite3 on the same file: the same statements tracker's status read runs, and a
primary-key lookup of the operation row (on PostgreSQL with raw psycopg on the same database: the one statement
tracker runs there, and the same lookup). The four are interleaved call by call; median (min-max) of 3 runs."""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from bench_common import mcp_session, median_spread, percentile, raw_connection, sample_keys
from bench_data import status_database
from tracker import Settings, Tracker
from tracker.status import STATUS_PAGE_FAILURES, STATUS_PAGE_IDS, StatusService
from tracker.store.operations import SQLITE_FIRST_FAILURES, SQLITE_FIRST_SUCCESSES, SQLITE_STATUS_BY_ID, STATUS_COLUMNS

if TYPE_CHECKING:
    from bench_postgres import BenchPostgres

RUNS = 3

# The figure measures reads: no reaper may purge the (cached) file, whatever its timestamps.
READ_ONLY_ENV = {"TRACKER_REAP_INTERVAL": "0", "TRACKER_RETENTION": "3650d"}


def sample_ids(path: Path, count: int, seed: int = 2) -> list[str]:
    """`count` operation ids picked uniformly at random (with repeats allowed, as polls are)."""
    return sample_keys(path, "operations", "id", count, seed)


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


def raw_lookup(conn) -> Callable[[str], Any]:  # noqa: ANN001 (a sqlite3 connection)
    """Baseline: a primary-key lookup of the whole operation row with plain sqlite3."""

    def lookup(op_id: str) -> Any:
        row = conn.execute("SELECT * FROM operations WHERE id = ?", (op_id,)).fetchone()
        assert row is not None
        return row

    return lookup


def raw_same_statements(conn) -> Callable[[str], Any]:  # noqa: ANN001 (a sqlite3 connection)
    """Baseline: the statements tracker's status read runs (tracker.store.operations.SQLITE_*, a viewer who sees
    every operation), with the same parameters, in one transaction as tracker runs them, with plain sqlite3: the
    operation row, then its first successes and first failures when its counts say it has any."""
    status = SQLITE_STATUS_BY_ID["all"].sql
    successes, failures = SQLITE_FIRST_SUCCESSES.sql, SQLITE_FIRST_FAILURES.sql
    ok_limit, failed_limit = STATUS_PAGE_IDS + 1, STATUS_PAGE_FAILURES + 1
    succeeded_at, failed_at = (
        [column.name for column in STATUS_COLUMNS].index(name) for name in ("succeeded_count", "failed_count")
    )

    def read(op_id: str) -> Any:
        conn.execute("BEGIN")
        row = conn.execute(status, (op_id,)).fetchone()
        assert row is not None
        ok = conn.execute(successes, (op_id, ok_limit, 0)).fetchall() if row[succeeded_at] else []
        failed = conn.execute(failures, (op_id, failed_limit, 0)).fetchall() if row[failed_at] else []
        conn.execute("ROLLBACK")
        return row, ok, failed

    return read


async def _status_runs(
    path: Path | str, warm: list[str], ids: list[str], workdir: Path, runs: int, mcp: bool, postgres: bool
) -> list[dict]:
    """`runs` runs over `ids`, each id through the four measures in turn (call by call, so that a noisy moment hits
    all alike), in a new random order each run; one MCP session and one Tracker for all of them, warmed on `warm`
    first (imports, statement caches, connection pools)."""
    if postgres:
        import bench_postgres

        pk_conn, same_conn = bench_postgres.raw_connection(str(path)), bench_postgres.raw_connection(str(path))
        calls: dict[str, Callable[[str], Any]] = {
            "pk": bench_postgres.raw_lookup(pk_conn), "same": bench_postgres.raw_same_statement(same_conn)
        }
    else:
        pk_conn, same_conn = raw_connection(path), raw_connection(path)
        calls = {"pk": raw_lookup(pk_conn), "same": raw_same_statements(same_conn)}
    try:
        with Tracker(Settings.from_env(READ_ONLY_ENV, db=str(path))) as tracker:
            service = StatusService(tracker)
            calls["library"] = service.batch_status
            async with AsyncExitStack() as stack:
                session = None
                if mcp:
                    session = await stack.enter_async_context(mcp_session(path, READ_ONLY_ENV, workdir / "serve.log"))
                for op_id in warm:
                    for call in calls.values():
                        call(op_id)
                    if session is not None:
                        await session.answer("get_batch_status", batch_operation_id=op_id)
                results = []
                for run in range(runs):
                    times: dict[str, list[float]] = {name: [] for name in [*calls, "mcp"]}
                    for op_id in random.Random(run).sample(ids, len(ids)):
                        for name, call in calls.items():
                            started = time.perf_counter()
                            answer = call(op_id)
                            times[name].append((time.perf_counter() - started) * 1000)
                            assert name != "library" or answer["found"], op_id
                        if session is not None:
                            started = time.perf_counter()
                            answer = await session.answer("get_batch_status", batch_operation_id=op_id)
                            times["mcp"].append((time.perf_counter() - started) * 1000)
                            assert answer["found"], op_id
                    results.append({
                        **{f"{name}50": percentile(values, 0.50) for name, values in times.items() if values},
                        **{f"{name}99": percentile(values, 0.99) for name, values in times.items() if values},
                    })
                return results
    finally:
        pk_conn.close()
        same_conn.close()


def status_runs(workdir: Path, operations: int, items: int, samples: int, runs: int = RUNS, mcp: bool = True,
                log=print, pg: BenchPostgres | None = None) -> tuple[list[dict], int]:
    if pg is None:
        db: Path | str = status_database(operations, items, log=log)[0]
        sample, warm_up = sample_ids, touch
    else:
        import bench_postgres

        db = pg.status_database(operations, items, log=log)
        sample, warm_up = bench_postgres.sample_ids, bench_postgres.touch
    warm = sample(db, 200, seed=1)
    ids = sample(db, samples)
    warm_up(db, warm + ids)
    return anyio.run(_status_runs, db, warm, ids, workdir, runs, mcp, pg is not None), len(ids)


def figure_2_status(
    workdir: Path, operations: int, items: int, samples: int, log=print, pg: BenchPostgres | None = None
) -> str:
    load_before = os.getloadavg()[0]
    rounds, count = status_runs(workdir, operations, items, samples, log=log, pg=pg)
    load_after = os.getloadavg()[0]

    def spread(key: str, fmt: str = ".3f") -> str:
        return median_spread([r[key] for r in rounds], fmt)

    def ratio(over: str, under: str, fmt: str = ".1f") -> str:
        return median_spread([r[f"{over}50"] / r[f"{under}50"] for r in rounds], fmt) + "x"

    library_same = statistics.median(r["library50"] / r["same50"] for r in rounds)
    library_pk = statistics.median(r["library50"] / r["pk50"] for r in rounds)
    raw = "sqlite3" if pg is None else "psycopg"
    lib99 = statistics.median(r["library99"] for r in rounds)
    mcp50 = statistics.median(r["mcp50"] for r in rounds)
    return (
        f"2 get_batch_status{'' if pg is None else ' on PostgreSQL'} of {count:,} random operations among"
        f" {operations:,} finished operations / {items:,} items, median (min-max) of {len(rounds)} runs:"
        f" library p50 {spread('library50')} ms"
        f" p99 {spread('library99')} ms | MCP stdio round trip p50 {spread('mcp50', '.2f')} ms"
        f" p99 {spread('mcp99', '.2f')} ms | raw {raw} of the same "
        + (
            "statements (one transaction: the operation's shown columns, its first successes, its first failures)"
            if pg is None else "statement (the operation's shown columns and its first items of each outcome)"
        )
        + f" p50 {spread('same50')} ms p99 {spread('same99')} ms"
        f" | raw {raw} primary-key lookup of the row p50 {spread('pk50')} ms p99 {spread('pk99')} ms"
        f" | ratio p50 library/same {ratio('library', 'same', '.2f')}"
        + (f" (target <= 3: {'met' if library_same <= 3 else 'MISSED'})" if pg is None else "")
        + f", MCP/same {ratio('mcp', 'same', '.0f')}, library/primary-key {ratio('library', 'pk')}"
        + (f" (target <= 3: {'met' if library_pk <= 3 else 'MISSED'})" if pg is not None else "")
        + f" | target library p99 <= 2 ms ({'met' if lib99 <= 2 else 'MISSED'}),"
        f" MCP p50 <= 5 ms ({'met' if mcp50 <= 5 else 'MISSED'})"
        f" | load {load_before:.1f}-{load_after:.1f} on {os.cpu_count()} cores"
    )
