"""Figures 1 and 4: recording items through the library API, from one process and from eight at once."""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench_common import REPO, median_spread, raw_connection
from tracker import Settings, Tracker

if TYPE_CHECKING:
    from bench_postgres import BenchPostgres

RUNS = 3
OP_ID = "batch_import_" + "0" * 32


def work_items(items: int) -> list[tuple[str, int | None]]:
    """The items both measures record, made before either clock starts: (item id, row number of a failure or
    None). Every tenth item fails."""
    return [(f"item-{n:07d}", n + 1 if n % 10 == 9 else None) for n in range(items)]


def raw_rows(work: list[tuple[str, int | None]], flag: type = int) -> list[tuple]:
    """The rows a raw baseline inserts, built before its clock as the library's caller has its ids before it
    records them. The flag binds as the fastest raw code binds it: an int on SQLite (a bool goes through the
    driver's adapter lookup), a bool for PostgreSQL's boolean column."""
    return [
        (OP_ID, flag(1), item_id, None, None) if row_number is None
        else (OP_ID, flag(0), item_id, row_number, "rejected")
        for item_id, row_number in work
    ]


def raw_executemany_rate(path: Path, work: list[tuple[str, int | None]]) -> float:
    """Baseline: the same rows into an identically indexed table with plain sqlite3, one executemany, one txn."""
    rows = raw_rows(work)
    conn = raw_connection(path)
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


def api_record(
    db: Path | str, work: list[tuple[str, int | None]], pg: BenchPostgres | None = None
) -> tuple[float, float, float, float]:
    """Items recorded into one batch through the library API at its default durability, through bound methods as
    a tight caller would: (items/s from the first record call to the end of finish(), last decile's / first
    decile's per-item cost of the record calls, the same with finish() in the last decile, finish()'s ms). With
    a multiple of the buffer's size (100,000 items), the last flush runs inside the last record call; finish()
    writes the end of the batch (one UPDATE and its COMMIT), a per-batch cost shown on its own."""
    items = len(work)
    decile = max(1, items // 10)
    with Tracker(Settings.from_env({}, db=str(db))) as tracker:
        if pg is not None:
            pg.settle()  # the migrations' and the previous measure's work is not done during this one
        batch = tracker.start_batch("import", total=items)
        success, failure = batch.record_success, batch.record_failure
        marks = [time.perf_counter()]
        for start in range(0, decile * 10, decile):
            for item_id, row_number in work[start:start + decile]:
                if row_number is None:
                    success(item_id)
                else:
                    failure("rejected", item_id=item_id, row_number=row_number)
            marks.append(time.perf_counter())
        record = batch.finish()
        ended = time.perf_counter()
        assert record.completed == decile * 10, record
    first, last = marks[1] - marks[0], marks[-1] - marks[-2]
    return decile * 10 / (ended - marks[0]), last / first, (ended - marks[-2]) / first, (ended - marks[-1]) * 1000


def recording_runs(
    workdir: Path, items: int, runs: int = RUNS, pg: BenchPostgres | None = None
) -> dict[str, list[float]]:
    """`runs` runs of the baseline and the library, alternating, each on a fresh file (on PostgreSQL a fresh
    database; the baseline is a raw COPY, and a raw executemany is measured beside it)."""
    workdir.mkdir(parents=True, exist_ok=True)
    work = work_items(items)
    measured: dict[str, list[float]] = {
        "raw": [], "api": [], "flat": [], "flat_finish": [], "finish_ms": [], "ratio": [], "executemany": []
    }
    for run in range(runs):
        if pg is None:
            raw = raw_executemany_rate(workdir / f"raw-{run}.db", work)
            db: Path | str = workdir / f"api-{run}.db"
        else:
            from bench_postgres import raw_insert_rate

            rows = raw_rows(work, bool)
            raw = raw_insert_rate(pg, rows, "copy")
            measured["executemany"].append(raw_insert_rate(pg, rows, "executemany"))
            db = pg.database("api")
        api, flat, flat_finish, finish_ms = api_record(db, work, pg)
        measured["flat_finish"].append(flat_finish)
        measured["finish_ms"].append(finish_ms)
        measured["raw"].append(raw)
        measured["api"].append(api)
        measured["flat"].append(flat)
        measured["ratio"].append(api / raw)
    return measured


def figure_1_recording(workdir: Path, items: int, runs: int = RUNS, pg: BenchPostgres | None = None) -> str:
    """Items recorded into one batch through the library API at its default durability, vs raw executemany (on
    PostgreSQL vs a raw COPY, the target's baseline there)."""
    load_before = os.getloadavg()[0]
    measured = recording_runs(workdir, items, runs, pg)
    load_after = os.getloadavg()[0]
    if pg is not None:
        from bench_postgres import copy_per_executemany

        per_group = copy_per_executemany(pg, raw_rows(work_items(items), bool))
        ratio = statistics.median(measured["ratio"])
        over_executemany = [api / raw for api, raw in zip(measured["api"], measured["executemany"])]
        return (
            f"1 recording {items:,} items on PostgreSQL: api {median_spread(measured['api'], ',.0f')} items/s"
            f" | raw psycopg COPY {median_spread(measured['raw'], ',.0f')} rows/s, executemany"
            f" {median_spread(measured['executemany'], ',.0f')} rows/s (one transaction each)"
            f" | ratio api/COPY {median_spread(measured['ratio'], '.2f')} (target >= 0.70:"
            f" {'met' if ratio >= 0.7 else 'MISSED'}), api/executemany {median_spread(over_executemany, '.2f')}"
            f" | last 10% / first 10% per-item cost of the record calls {median_spread(measured['flat'], '.2f')}"
            f" (target <= 1.2: {'met' if statistics.median(measured['flat']) <= 1.2 else 'MISSED'}),"
            f" with finish() in the last 10% {median_spread(measured['flat_finish'], '.2f')};"
            f" finish() {median_spread(measured['finish_ms'], '.1f')} ms"
            f" | a flush group's transaction, COPY time / executemany time:"
            f" {', '.join(f'{size:,} items {r:.2f}' for size, r in per_group.items())}"
            f" | median (min-max) of {runs} runs, load {load_before:.1f}-{load_after:.1f} on {os.cpu_count()} cores"
        )
    return (
        f"1 recording {items:,} items: api {median_spread(measured['api'], ',.0f')} items/s"
        f" | raw sqlite3 executemany (int flags) {median_spread(measured['raw'], ',.0f')} rows/s"
        f" | ratio {median_spread(measured['ratio'], '.2f')}"
        f" (target >= 0.8: {'met' if statistics.median(measured['ratio']) >= 0.8 else 'MISSED'})"
        f" | last 10% / first 10% per-item cost of the record calls {median_spread(measured['flat'], '.2f')}"
        f" (target <= 1.2: {'met' if statistics.median(measured['flat']) <= 1.2 else 'MISSED'}),"
        f" with finish() in the last 10% {median_spread(measured['flat_finish'], '.2f')};"
        f" finish() {median_spread(measured['finish_ms'], '.1f')} ms"
        f" | median (min-max) of {runs} runs, load {load_before:.1f}-{load_after:.1f} on {os.cpu_count()} cores"
    )


def _api_record_rate(workdir: Path, items: int, pg: BenchPostgres | None) -> float:
    """Figure 1's measure (one run), reused as the single-process baseline of figure 4."""
    workdir.mkdir(parents=True, exist_ok=True)
    return api_record(workdir / "api.db" if pg is None else pg.database("single"), work_items(items), pg)[0]


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


def contention_run(workdir: Path, processes: int, items: int, run: int, pg: BenchPostgres | None) -> dict:
    """One run on a fresh database: N processes each recording into its own batch at once, while 2 processes poll
    all of them."""
    import subprocess

    db = str(workdir / f"contention-{run}.db") if pg is None else pg.database("contention")
    with Tracker(Settings.from_env({}, db=db)) as tracker:
        ids = [tracker.start_batch("import", total=items).id for _ in range(processes)]
    if pg is not None:
        pg.settle()
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
    return {"rate": processes * items / elapsed, "polls": sum(polls), "failed": failed, "exact": exact}


def figure_4_contention(
    workdir: Path, processes: int, items: int, pg: BenchPostgres | None = None, runs: int = RUNS
) -> str:
    """Contention runs, each after a single-process run of figure 1's measure (its baseline, in the same run)."""
    load_before = os.getloadavg()[0]
    singles, measured = [], []
    for run in range(runs):
        singles.append(_api_record_rate(workdir / f"single-{run}", 100_000 if items >= 25_000 else items, pg))
        measured.append(contention_run(workdir, processes, items, run, pg))
    load_after = os.getloadavg()[0]
    ratios = [m["rate"] / single for m, single in zip(measured, singles)]
    failed = [e for m in measured for e in m["failed"]]
    exact = all(m["exact"] for m in measured)
    return (
        f"4 contention{'' if pg is None else ' on PostgreSQL'} {processes} processes x {items:,} items + 2 pollers"
        f" ({sum(m['polls'] for m in measured):,} status reads in {runs} runs), median (min-max) of {runs} runs:"
        f" aggregate {median_spread([m['rate'] for m in measured], ',.0f')} items/s"
        f" | single process (figure 1's measure, before each run) {median_spread(singles, ',.0f')} items/s"
        f" | ratio {median_spread(ratios, '.2f')}"
        f" (target >= 0.5: {'met' if statistics.median(ratios) >= 0.5 else 'MISSED'})"
        f" | errors {len(failed)} | exact counts {'yes' if exact else 'NO'}"
        f" | load {load_before:.1f}-{load_after:.1f} on {os.cpu_count()} cores"
        + (f" | first error: {failed[0].strip().splitlines()[-1][:200]}" if failed else "")
    )
