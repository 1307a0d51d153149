#!/usr/bin/env python3
"""tracker benchmarks. Each figure is printed as one line, with its baseline measured in the same run, because
these machines are shared and noisy: read the ratios, not the absolute numbers.

    ./dev bench            full mode
    ./dev bench --quick    about a minute (CI runs it so it keeps working; nothing is asserted about speed)
    ./dev bench --only 1   one figure
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tracker import Settings, Tracker  # noqa: E402
from tracker.db import sqlite_module  # noqa: E402


def _raw_connection(path: Path):
    conn = sqlite_module().connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def raw_executemany_rate(workdir: Path, rows: list[tuple]) -> float:
    """Baseline: the same rows into an identically indexed table with plain sqlite3, one executemany, one txn."""
    conn = _raw_connection(workdir / "raw.db")
    conn.execute(
        "CREATE TABLE operation_items (seq INTEGER PRIMARY KEY, operation_id TEXT NOT NULL, ok BOOLEAN NOT NULL,"
        " item_id TEXT, row_number INTEGER, error TEXT)"
    )
    conn.execute("CREATE INDEX ix_items ON operation_items (operation_id, ok, seq)")
    started = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO operation_items (operation_id, ok, item_id, row_number, error) VALUES (?, ?, ?, ?, ?)", rows
    )
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return len(rows) / elapsed


def figure_1_recording(workdir: Path, items: int) -> str:
    """Items recorded into one batch through the library API at its default durability, vs raw executemany."""
    op_id = "batch_import_" + "0" * 32
    rows = [
        (op_id, n % 10 != 9, f"item-{n:07d}", n + 1 if n % 10 == 9 else None, "rejected" if n % 10 == 9 else None)
        for n in range(items)
    ]
    baseline = raw_executemany_rate(workdir, rows)
    with Tracker(Settings.from_env({}, db=str(workdir / "api.db"))) as tracker:
        batch = tracker.start_batch("import", total=items)
        decile = max(1, items // 10)
        marks = [time.perf_counter()]
        for n in range(items):
            if n % 10 == 9:
                batch.record_failure("rejected", item_id=f"item-{n:07d}", row_number=n + 1)
            else:
                batch.record_success(f"item-{n:07d}")
            if (n + 1) % decile == 0:
                marks.append(time.perf_counter())
        record = batch.finish()
        marks[-1] = time.perf_counter()  # the last decile pays for the final flush
        assert record.completed == items, record
    elapsed = marks[-1] - marks[0]
    first, last = marks[1] - marks[0], marks[-1] - marks[-2]
    rate = items / elapsed
    return (
        f"1 recording {items:,} items: api {rate:,.0f} items/s | raw sqlite3 executemany {baseline:,.0f} rows/s"
        f" | ratio {rate / baseline:.2f} (target >= 0.30) | last 10% / first 10% per-item cost {last / first:.2f}"
        f" (target <= 1.3)"
    )


FIGURES = {
    1: lambda workdir, quick: figure_1_recording(workdir, 100_000),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute in all")
    parser.add_argument("--only", type=int, action="append", help="run only this figure (repeatable)")
    args = parser.parse_args()
    chosen = args.only or sorted(FIGURES)
    unknown = [n for n in chosen if n not in FIGURES]
    if unknown:
        parser.error(f"no figure {unknown[0]}; figures are {', '.join(map(str, sorted(FIGURES)))}")
    print(f"tracker bench ({'quick' if args.quick else 'full'} mode), SQLite {sqlite_module().sqlite_version}")
    for number in chosen:
        with tempfile.TemporaryDirectory(prefix=f"tracker-bench-{number}-") as workdir:
            print(FIGURES[number](Path(workdir), args.quick), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
