"""Figures 1 and 4: recording items through the library API, from one process and from eight at once."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench_common import REPO, raw_connection
from tracker import Settings, Tracker

if TYPE_CHECKING:
    from bench_postgres import BenchPostgres


def raw_executemany_rate(workdir: Path, rows: list[tuple]) -> float:
    """Baseline: the same rows into an identically indexed table with plain sqlite3, one executemany, one txn."""
    conn = raw_connection(workdir / "raw.db")
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


def figure_1_recording(workdir: Path, items: int, pg: BenchPostgres | None = None) -> str:
    """Items recorded into one batch through the library API at its default durability, vs raw executemany (and, on
    PostgreSQL, raw COPY: the target's baseline there)."""
    workdir.mkdir(parents=True, exist_ok=True)
    op_id = "batch_import_" + "0" * 32
    rows = [
        (op_id, n % 10 != 9, f"item-{n:07d}", n + 1 if n % 10 == 9 else None, "rejected" if n % 10 == 9 else None)
        for n in range(items)
    ]
    if pg is None:
        baseline = raw_executemany_rate(workdir, rows)
        db = str(workdir / "api.db")
    else:
        from bench_postgres import copy_per_executemany, raw_insert_rate

        per_group = copy_per_executemany(pg, rows)
        baseline, executemany = raw_insert_rate(pg, rows, "copy"), raw_insert_rate(pg, rows, "executemany")
        db = pg.database("api")
    with Tracker(Settings.from_env({}, db=db)) as tracker:
        if pg is not None:
            pg.settle()
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
    _SINGLE_RATE["api"] = rate
    deciles = f"last 10% / first 10% per-item cost {last / first:.2f} (target <= 1.3)"
    if pg is not None:
        return (
            f"1 recording {items:,} items on PostgreSQL: api {rate:,.0f} items/s | raw psycopg COPY {baseline:,.0f}"
            f" rows/s, executemany {executemany:,.0f} rows/s (one transaction each) | ratio api/COPY"
            f" {rate / baseline:.2f} (target >= 0.70: {'met' if rate >= 0.7 * baseline else 'MISSED'}),"
            f" api/executemany {rate / executemany:.2f} | {deciles} | a flush group's transaction, COPY time /"
            f" executemany time: {', '.join(f'{size:,} items {ratio:.2f}' for size, ratio in per_group.items())}"
        )
    return (
        f"1 recording {items:,} items: api {rate:,.0f} items/s | raw sqlite3 executemany {baseline:,.0f} rows/s"
        f" | ratio {rate / baseline:.2f} (target >= 0.30) | {deciles}"
    )


_SINGLE_RATE: dict[str, float] = {}


def _api_record_rate(workdir: Path, items: int, pg: BenchPostgres | None) -> float:
    """Figure 1's measure, reused as the single-process baseline of figure 4."""
    figure_1_recording(workdir, items, pg)
    return _SINGLE_RATE["api"]


RECORDER = """
import sys, time
sys.path.insert(0, sys.argv[1])
import tracker
db, op_id, count = sys.argv[2], sys.argv[3], int(sys.argv[4])
with tracker.Tracker.open(db) as t:
    batch = t.attach(op_id)
    print("ready", flush=True)
    sys.stdin.readline()  # go: every worker has started
    for n in range(count):
        batch.record_success(f"item-{n:07d}")
    batch.finish()
    print(time.time(), flush=True)  # its last item is durable (interpreter exit is not counted)
"""

POLLER = """
import sys, time
sys.path.insert(0, sys.argv[1])
import tracker
db, ids = sys.argv[2], sys.argv[3].split(",")
polls = 0
with tracker.Tracker.open(db) as t:
    while True:
        records = [t.get(i) for i in ids]
        polls += len(records)
        if all(r.is_terminal for r in records):
            break
        time.sleep(0.05)
print(polls)
"""


def figure_4_contention(workdir: Path, processes: int, items: int, pg: BenchPostgres | None = None) -> str:
    """N processes each recording into its own batch at once, while 2 processes poll all of them."""
    import subprocess

    single = _SINGLE_RATE.get("api") or _api_record_rate(
        workdir / "single", 100_000 if items >= 25_000 else items, pg
    )
    db = str(workdir / "contention.db") if pg is None else pg.database("contention")
    with Tracker(Settings.from_env({}, db=db)) as tracker:
        ids = [tracker.start_batch("import", total=items).id for _ in range(processes)]
    repo = str(REPO)
    workers = [
        subprocess.Popen([sys.executable, "-c", RECORDER, repo, db, op_id, str(items)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for op_id in ids
    ]
    for worker in workers:  # the clock starts once every interpreter has imported tracker and attached
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
    pollers = [
        subprocess.Popen([sys.executable, "-c", POLLER, repo, db, ",".join(ids)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    time.sleep(0.5)  # the pollers are polling
    start_at = time.time()
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    outputs = [w.communicate() for w in workers]
    errors = [err for _out, err in outputs]
    finished = [float(out.split()[-1]) for out, _err in outputs if out.split()]
    elapsed = (max(finished) if len(finished) == len(workers) else time.time()) - start_at
    polls = [int(p.communicate()[0] or 0) for p in pollers]
    failed = [e for w, e in zip(workers, errors) if w.returncode != 0 or e.strip()]
    with Tracker(Settings.from_env({}, db=db)) as tracker:
        exact = all(
            tracker.get(op_id).succeeded_count == items and tracker.store.count_items(op_id) == (items, 0)
            for op_id in ids
        )
    rate = processes * items / elapsed
    return (
        f"4 contention{'' if pg is None else ' on PostgreSQL'} {processes} processes x {items:,} items + 2 pollers ({sum(polls):,} status reads):"
        f" aggregate {rate:,.0f} items/s | single process {single:,.0f} items/s | ratio {rate / single:.2f}"
        f" (target >= 0.5) | errors {len(failed)} | exact counts {'yes' if exact else 'NO'}"
        + (f" | first error: {failed[0].strip().splitlines()[-1][:200]}" if failed else "")
    )
