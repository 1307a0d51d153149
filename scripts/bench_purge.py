"""Figure 3: purge of expired operations with their items by the reaper's public purge function (tracker.reaper.purge),
while another process keeps recording items into the same database, against one raw DELETE statement on an equal
copy of the file (with the same recorder running, to show what a single long write transaction does to it)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench_common import REPO, raw_connection
from bench_data import copy_database, status_database
from tracker import Settings
from tracker.db import open_engine
from tracker.timeutil import iso

if TYPE_CHECKING:
    from bench_postgres import BenchPostgres

RETENTION_S = 3600.0  # the default: every operation in the generated file ended at least two hours before

RECORDING_RATE = 10_000  # items/s: a busy worker, leaving the second core to the purge

RECORDER = """
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import tracker
db, stop_file, rate = sys.argv[2], sys.argv[3], float(sys.argv[4])
calls, worst, slow, errors, first_error = 0, 0.0, 0, 0, None
with tracker.Tracker.open(db, env={"TRACKER_REAP_INTERVAL": "0"}) as t:
    batch = t.start_batch("import")
    print("ready", flush=True)
    began = time.perf_counter()
    while not os.path.exists(stop_file):
        for _ in range(100):
            started = time.perf_counter()
            try:
                batch.record_success(f"rec_{calls:08x}")
            except tracker.TrackerError as exc:
                errors += 1
                first_error = first_error or str(exc)[:200]
            took = time.perf_counter() - started
            worst = max(worst, took)
            slow += took > 0.1
            calls += 1
        time.sleep(max(0.0, began + calls / rate - time.perf_counter()))  # the work between items
    batch.finish()
    durable = t.get(batch.id).completed
print(json.dumps({"calls": calls, "worst_ms": worst * 1000, "slow": slow, "errors": errors,
                  "first_error": first_error, "durable": durable}))
"""


class Recorder:
    """A process recording items into its own batch on `db` until stopped; reports its slowest record call."""

    def __init__(self, db: Path | str, workdir: Path, name: str) -> None:
        self.stop_file = workdir / f"stop-{name}"
        self.stop_file.unlink(missing_ok=True)
        self.log = workdir / f"recorder-{name}.log"
        with self.log.open("w") as log:  # its warnings (a background flush that found the database locked)
            self.process = subprocess.Popen(
                [sys.executable, "-c", RECORDER, str(REPO), str(db), str(self.stop_file), str(RECORDING_RATE)],
                stdout=subprocess.PIPE, stderr=log, text=True,
            )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the recorder did not start")
        time.sleep(0.5)  # its first flushes are done: what follows is steady state

    def stop(self) -> dict:
        self.stop_file.touch()
        out, _ = self.process.communicate(timeout=120)
        report = json.loads(out.strip().splitlines()[-1])
        report["flush_retries"] = self.log.read_text().count("will retry")
        return report


def raw_delete(path: Path, cutoff: str) -> tuple[int, float]:
    """One DELETE of every expired operation (its items go with it through the ON DELETE CASCADE foreign key), then
    a WAL checkpoint, as the purge does."""
    conn = raw_connection(path)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA busy_timeout = 30000")
    expired = "status IN ('completed', 'failed', 'cancelled') AND completed_at < ?"
    items = conn.execute(
        f"SELECT count(*) FROM operation_items WHERE operation_id IN (SELECT id FROM operations WHERE {expired})",
        (cutoff,),
    ).fetchone()[0]
    started = time.perf_counter()
    operations = conn.execute(f"DELETE FROM operations WHERE {expired}", (cutoff,)).rowcount
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # as the purge ends with one (its time includes it)
    elapsed = time.perf_counter() - started
    left = conn.execute(
        f"SELECT count(*) FROM operation_items WHERE operation_id IN (SELECT id FROM operations WHERE {expired})",
        (cutoff,),
    ).fetchone()[0]
    conn.close()
    assert left == 0, left
    return operations + items, elapsed


def figure_3_purge(
    workdir: Path, operations: int, items: int, budget_s: float, log=print, pg: BenchPostgres | None = None
) -> str:
    """The purge is stopped (after a whole chunk) once it has run `budget_s`, so the figure fits the time budget
    of the full mode whatever the purge rate; the line then says how far it got."""
    from tracker.reaper import purge

    if pg is None:
        source, _reused = status_database(operations, items, log=log)
        reaped, raw = workdir / "reaped.db", workdir / "raw.db"
        copy_database(source, reaped)
        copy_database(source, raw)
    else:
        source_url = pg.status_database(operations, items, log=log)
        reaped, raw = pg.copy(source_url, "reaped"), pg.copy(source_url, "raw")

    engine = open_engine(Settings.from_env({}, db=str(reaped), reap_interval_s=0))
    recorder = Recorder(reaped, workdir, "reaper")
    stop = threading.Event()
    timer = threading.Timer(budget_s, stop.set)
    timer.start()
    try:
        summary = purge(engine, RETENTION_S, stop=stop)
    finally:
        timer.cancel()
        during_purge = recorder.stop()
        engine.dispose()
    purged = summary.operations + summary.items
    rate = purged / summary.seconds

    recorder = Recorder(raw, workdir, "raw")
    try:
        if pg is None:
            raw_rows, raw_seconds = raw_delete(raw, iso(summary.cutoff))
        else:
            import bench_postgres

            raw_rows, raw_seconds = bench_postgres.raw_delete(raw, summary.cutoff)
    finally:
        during_raw = recorder.stop()
    raw_rate = raw_rows / raw_seconds
    complete = summary.operations == operations and summary.items == items
    stall_ms = during_purge["worst_ms"]
    progress = (
        "all" if complete
        else f"STOPPED at the {budget_s:.0f} s budget after {purged / (operations + items):.1%} of the rows"
    )
    lock = "holding the write lock" if pg is None else "in its delete transactions"
    retried_after = " after 'database is locked'" if pg is None else ""
    return (
        f"3 purge{'' if pg is None else ' on PostgreSQL'} of {operations:,} expired operations + {items:,} items by"
        f" tracker.reaper.purge ({progress}):"
        f" {rate:,.0f} rows/s ({purged:,} rows in {summary.seconds:.1f} s, {summary.chunks:,} chunks,"
        f" {summary.locked_s:.1f} s of it {lock}, longest chunk"
        f" {summary.longest_chunk_s * 1000:.0f} ms);"
        f" concurrent recorder ({RECORDING_RATE:,} items/s) worst stall"
        f" {stall_ms:,.0f} ms over {during_purge['calls']:,} record calls ({during_purge['errors']} errors,"
        f" {during_purge['flush_retries']} flushes retried)"
        f" | one raw DELETE on an equal copy: {raw_rate:,.0f} rows/s ({raw_seconds:.1f} s), recorder worst stall"
        f" {during_raw['worst_ms']:,.0f} ms ({during_raw['errors']} errors, {during_raw['flush_retries']} background"
        f" flushes retried{retried_after})"
        f" | ratio {rate / raw_rate:.2f} (target >= 0.5: {'met' if rate >= 0.5 * raw_rate else 'MISSED'})"
        f" | worst stall target <= 100 ms: {'met' if stall_ms <= 100 else 'MISSED'}"
        + ("" if raw_rows == operations + items else f" | RAW DELETE INCOMPLETE: {raw_rows:,} rows")
    )
