#!/usr/bin/env python3
"""tracker benchmarks. Each figure is printed as one line, with its baseline measured in the same run, because
these machines are shared and noisy: read the ratios, not the absolute numbers.

    ./dev bench            full mode (within 10 minutes on 2 cores)
    ./dev bench --quick    about a minute (CI runs it so it keeps working; nothing is asserted about speed)
    ./dev bench --only 1   one figure (repeatable)
    ./dev bench --backend postgresql [--quick]   figures 1-4 and 6 on a PostgreSQL server the script starts

Figures (one module each): 1 and 4 recording (bench_recording.py), 2 status reads at scale (bench_status.py),
3 purge (bench_purge.py), 5 remote runs against the fake upstream (bench_runs.py), 6 server memory
(bench_memory.py), 7 status of a batch with 100 MB of input rows (bench_large_batch.py), 8 Streamable HTTP against
stdio and the library, and two HTTP servers against one (bench_http.py), 9 MCP tasks (SEP-2663) over HTTP: create
and tasks/get round trips against a plain tools/call, and 1,000 working tasks polled by 4 clients (bench_tasks.py).
Figures 2 and 3 use a database of 1,000,000 finished operations and 5,000,000 items made by bench_data.py (about a
minute) and cached in the system temp dir (tracker-bench-cache/, keyed by schema revision, sizes and generator
version): later runs reuse it, and figure 3 purges a copy; figure 8 reads the cached database of figure 2's quick
mode. With --backend postgresql, figures 1-4 and 6 run on a server initdb'd into a temporary directory for the run
(PostgreSQL's default durability: fsync and synchronous_commit on; 127.0.0.1, a free port), with figure 2's
database loaded by COPY (bench_postgres.py); the other figures say "SQLite only".
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench_common import sqlite_module  # (first: puts this checkout on sys.path)
from bench_http import figure_8_http
from bench_large_batch import figure_7_large_batch
from bench_memory import figure_6_memory
from bench_purge import figure_3_purge
from bench_recording import figure_1_recording, figure_4_contention
from bench_runs import figure_5_runs
from bench_status import figure_2_status
from bench_tasks import figure_9_tasks

FIGURES = {
    # Full size in quick mode too: it takes about a second, and a smaller batch has deciles shorter than one
    # flush interval, which makes the last/first decile ratio meaningless.
    1: lambda workdir, quick, pg: figure_1_recording(workdir, 100_000, pg),
    2: lambda workdir, quick, pg: (
        figure_2_status(workdir, 20_000, 100_000, 500, pg=pg)
        if quick
        else figure_2_status(workdir, 1_000_000, 5_000_000, 3_000, pg=pg)
    ),
    3: lambda workdir, quick, pg: (
        figure_3_purge(workdir, 20_000, 100_000, 30.0, pg=pg)
        if quick
        else figure_3_purge(workdir, 1_000_000, 5_000_000, 180.0, pg=pg)
    ),
    # Full size in quick mode too (about 5 s): with 5,000 items a worker's whole run is one or two flushes, and
    # the figure measures SQLite's busy-wait backoff more than recording.
    4: lambda workdir, quick, pg: figure_4_contention(workdir, 8, 25_000, pg),
    5: lambda workdir, quick, pg: (
        figure_5_runs(workdir, 200, 20, 4, 10.0) if quick else figure_5_runs(workdir, 1_000, 100, 4, 60.0)
    ),
    6: lambda workdir, quick, pg: figure_6_memory(workdir, 100_000 if quick else 1_000_000, pg),
    7: lambda workdir, quick, pg: (
        figure_7_large_batch(workdir, 1_000, 10_000, 30) if quick else figure_7_large_batch(workdir, 10_000, 10_000, 100)
    ),
    # Quick mode is about 25 s, most of it starting the three servers; full mode about 2.5 minutes.
    8: lambda workdir, quick, pg: figure_8_http(workdir, 60, 1.0) if quick else figure_8_http(workdir, 1_000, 10.0),
    # Quick mode is about 20 s (100 tasks, 1 s windows); full mode about 2 minutes (1,000 tasks, 5 s windows).
    9: lambda workdir, quick, pg: (
        figure_9_tasks(workdir, 30, 100, 1.0) if quick else figure_9_tasks(workdir, 300, 1_000, 5.0)
    ),
}
POSTGRESQL_FIGURES = (1, 2, 3, 4, 6)  # the others measure what only SQLite has, or the upstream and the protocol


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute in all")
    parser.add_argument("--only", type=int, action="append", help="run only this figure (repeatable)")
    parser.add_argument(
        "--backend", choices=("sqlite", "postgresql"), default="sqlite",
        help="postgresql: figures 1-4 and 6 on a PostgreSQL server started for the run (default durability)",
    )
    args = parser.parse_args()
    chosen = args.only or sorted(FIGURES)
    unknown = [n for n in chosen if n not in FIGURES]
    if unknown:
        parser.error(f"no figure {unknown[0]}; figures are {', '.join(map(str, sorted(FIGURES)))}")
    with ExitStack() as stack:
        pg = None
        if args.backend == "postgresql":
            from bench_postgres import BenchPostgres

            pg = stack.enter_context(BenchPostgres())
        backend = f"SQLite {sqlite_module().sqlite_version}" if pg is None else pg.describe()
        print(f"tracker bench ({'quick' if args.quick else 'full'} mode), {backend}", flush=True)
        for number in chosen:
            if pg is not None and number not in POSTGRESQL_FIGURES:
                print(f"{number} SQLite only (skipped)", flush=True)
                continue
            with tempfile.TemporaryDirectory(prefix=f"tracker-bench-{number}-") as workdir:
                started = time.perf_counter()
                line = FIGURES[number](Path(workdir), args.quick, pg)
                print(f"{line} [{time.perf_counter() - started:.0f} s]", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
