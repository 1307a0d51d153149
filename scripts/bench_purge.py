"""Figure 3: purge of expired operations with their items by the reaper's public purge function (tracker.reaper.purge),
while another process keeps recording items into the same database, against one raw DELETE statement on an equal
copy of the file (with the same recorder running, to show what a single long write transaction does to it).

Three runs, each on fresh copies of the cached database; the figure is the median run with the spread, the load
average and each run's ratio and worst stall. Within a run the purge and the raw DELETE take turns going first, so a
load that rises or falls through the run does not always favour the same one. Before each purge the recorder runs
alone for a few seconds: its worst stall then is what this machine's load does to it without any purge. In full
mode the figure adds the per-row cost of purging at 100,000 and 1,000,000 operations (scaling)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from bench_common import REPO, median_spread, raw_connection
from bench_data import copy_database, status_database
from tracker import Settings
from tracker.db import open_engine
from tracker.timeutil import iso

if TYPE_CHECKING:
    from bench_postgres import BenchPostgres

RETENTION_S = 3600.0  # the default: every operation in the generated file ended at least two hours before
RUNS = 3
ALONE_S = 3.0  # the recorder alone before each purge: this machine's own stalls, for comparison
STALL_TARGET_MS = 50.0
RATIO_TARGET = 0.7

RECORDING_RATE = 10_000  # items/s: a busy worker, leaving the second core to the purge

RECORDER = """
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import tracker
db, stop_file, rate = sys.argv[2], sys.argv[3], float(sys.argv[4])
calls, worst, over, errors, first_error = 0, 0.0, 0, 0, None
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
            over += took > 0.05
            calls += 1
        time.sleep(max(0.0, began + calls / rate - time.perf_counter()))  # the work between items
    seconds = time.perf_counter() - began
    batch.finish()
    durable = t.get(batch.id).completed
print(json.dumps({"calls": calls, "worst_ms": worst * 1000, "over_50ms": over, "errors": errors,
                  "first_error": first_error, "durable": durable, "seconds": seconds}))
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


@dataclass(frozen=True)
class Run:
    load: tuple[float, float]  # 1-minute load average before and after
    purge: object  # tracker.reaper.PurgeSummary
    during_purge: dict
    alone: dict
    raw_rows: int
    raw_seconds: float
    during_raw: dict

    @property
    def rows(self) -> int:
        return self.purge.operations + self.purge.items

    @property
    def rate(self) -> float:
        return self.rows / self.purge.seconds

    @property
    def raw_rate(self) -> float:
        return self.raw_rows / self.raw_seconds

    @property
    def ratio(self) -> float:
        return self.rate / self.raw_rate

    @property
    def stall_ms(self) -> float:
        return self.during_purge["worst_ms"]


def one_run(source: Path | str, workdir: Path, n: int, budget_s: float, pg: BenchPostgres | None = None) -> Run:
    """One purge and one raw DELETE, each on its own fresh copy of `source` (a file, or on PostgreSQL a database
    URL), each with the recorder running."""
    from tracker.reaper import purge

    if pg is None:
        reaped, raw = workdir / f"reaped-{n}.db", workdir / f"raw-{n}.db"
        copy_database(source, reaped)
        copy_database(source, raw)
    else:
        reaped, raw = pg.copy(str(source), "reaped"), pg.copy(str(source), "raw")
        pg.settle()
    load_before = os.getloadavg()[0]

    def run_purge():
        engine = open_engine(Settings.from_env({}, db=str(reaped), reap_interval_s=0))
        recorder = Recorder(reaped, workdir, f"reaper-{n}")
        time.sleep(ALONE_S)
        alone = recorder.stop()
        recorder = Recorder(reaped, workdir, f"reaper-{n}")
        stop = threading.Event()
        timer = threading.Timer(budget_s, stop.set)
        timer.start()
        try:
            summary = purge(engine, RETENTION_S, stop=stop)
        finally:
            timer.cancel()
            during = recorder.stop()
            engine.dispose()
        return summary, during, alone

    def run_raw(cutoff: datetime):
        recorder = Recorder(raw, workdir, f"raw-{n}")
        try:
            if pg is None:
                rows, seconds = raw_delete(raw, iso(cutoff))
            else:
                import bench_postgres

                rows, seconds = bench_postgres.raw_delete(raw, cutoff)
        finally:
            during = recorder.stop()
        return rows, seconds, during

    # Turns: the purge first in runs 0 and 2, the raw DELETE first in run 1. Every operation in the file ended hours
    # before either cutoff, so both delete all of them.
    if n % 2 == 0:
        summary, during_purge, alone = run_purge()
        raw_rows, raw_seconds, during_raw = run_raw(summary.cutoff)
    else:
        raw_rows, raw_seconds, during_raw = run_raw(datetime.now(timezone.utc) - timedelta(seconds=RETENTION_S))
        summary, during_purge, alone = run_purge()
    if pg is None:
        for leftover in workdir.glob(f"*-{n}.db*"):
            leftover.unlink()
    else:
        pg.drop(reaped)
        pg.drop(raw)
    return Run(
        (load_before, os.getloadavg()[0]), summary, during_purge, alone, raw_rows, raw_seconds, during_raw
    )


def figure_3_purge(
    workdir: Path, operations: int, items: int, budget_s: float, scaling: bool = False, log=print,
    pg: BenchPostgres | None = None,
) -> str:
    """The purge is stopped (after a whole chunk) once it has run `budget_s`, so the figure fits the time budget
    of the full mode whatever the purge rate; the line then says how far it got."""
    if pg is None:
        source: Path | str = status_database(operations, items, log=log)[0]
    else:
        source = pg.status_database(operations, items, log=log)
    runs = [one_run(source, workdir, n, budget_s, pg) for n in range(RUNS)]
    median = sorted(runs, key=lambda r: r.ratio)[RUNS // 2]
    ratios = [r.ratio for r in runs]
    stalls = [r.stall_ms for r in runs]
    loads = [value for r in runs for value in r.load]
    p = median.purge
    complete = all(r.purge.operations == operations and r.purge.items == items for r in runs)
    progress = "all" if complete else (
        f"STOPPED at the {budget_s:.0f} s budget after"
        f" {min(r.rows for r in runs) / (operations + items):.1%} of the rows in one run at least"
    )
    line = (
        f"3 purge{'' if pg is None else ' on PostgreSQL'} of {operations:,} expired operations + {items:,} items by"
        f" tracker.reaper.purge ({progress}),"
        f" median (min-max) of {RUNS} runs, each on fresh copies, load {min(loads):.1f}-{max(loads):.1f}:"
        f" {median_spread([r.rate for r in runs], ',.0f')} rows/s"
        f" | median run: {median.rows:,} rows in {p.seconds:.1f} s, {p.chunks:,} chunks, {p.locked_s:.1f} s of it"
        f" {'holding the write lock' if pg is None else 'in its delete transactions'}"
        f" ({p.locked_cpu_s:.1f} s of CPU time: the rest waiting for a CPU, the disk or the server),"
        f" longest chunk {p.longest_chunk_s * 1000:.0f} ms;"
        + (f" {p.checkpoints:,} WAL checkpoints between chunks {p.checkpoint_s:.1f} s;" if pg is None else "")
        + f" pauses {p.paused_s:.1f} s"
        f" | concurrent recorder ({RECORDING_RATE:,} items/s) worst stall {median_spread(stalls, ',.0f')} ms"
        f" ({sum(r.during_purge['over_50ms'] for r in runs)} calls over 50 ms in"
        f" {sum(r.during_purge['calls'] for r in runs):,},"
        f" {sum(r.during_purge['errors'] for r in runs)} errors, {sum(r.during_purge['flush_retries'] for r in runs)}"
        " flushes retried); alone before each purge (no purge running, "
        f"{ALONE_S:.0f} s): worst {median_spread([r.alone['worst_ms'] for r in runs], ',.0f')} ms"
        f" | one raw DELETE on an equal copy: {median_spread([r.raw_rate for r in runs], ',.0f')} rows/s"
        f" ({median.raw_seconds:.1f} s in the median run), recorder worst stall"
        f" {median_spread([r.during_raw['worst_ms'] for r in runs], ',.0f')} ms"
        f" | ratio {median_spread(ratios, '.2f')}"
        f" | per run (load, ratio, worst stall): "
        + ", ".join(f"({r.load[0]:.1f}-{r.load[1]:.1f}, {r.ratio:.2f}, {r.stall_ms:,.0f} ms)" for r in runs)
        + f" | target ratio >= {RATIO_TARGET} (median):"
        f" {'met' if statistics.median(ratios) >= RATIO_TARGET else 'MISSED'}"
        f"; worst stall <= {STALL_TARGET_MS:.0f} ms (median of the runs):"
        f" {'met' if statistics.median(stalls) <= STALL_TARGET_MS else 'MISSED'}"
        + "".join(
            f" | RAW DELETE INCOMPLETE in a run: {r.raw_rows:,} rows" for r in runs if r.raw_rows != operations + items
        )
    )
    if scaling and pg is None:
        line += " | " + scaling_rows(workdir, [(100_000, 500_000), (operations, items)], {(operations, items): runs},
                                     budget_s, log)
    return line


def scaling_rows(workdir: Path, sizes: list[tuple[int, int]], measured: dict, budget_s: float, log=print) -> str:
    """Per-row cost (wall time per purged row, median of the runs) of the purge and of the raw DELETE at each size."""
    parts = []
    for operations, items in sizes:
        runs = measured.get((operations, items))
        if runs is None:
            source, _reused = status_database(operations, items, log=log)
            runs = [one_run(source, workdir, n, budget_s) for n in range(RUNS)]
        purge_us = statistics.median(r.purge.seconds / r.rows * 1e6 for r in runs)
        raw_us = statistics.median(r.raw_seconds / r.raw_rows * 1e6 for r in runs)
        parts.append(
            f"{operations:,} operations + {items:,} items: purge {purge_us:.2f} us/row, raw DELETE {raw_us:.2f} us/row,"
            f" ratio {median_spread([r.ratio for r in runs], '.2f')}"
        )
    return "scaling (median of 3 runs each): " + "; ".join(parts)
