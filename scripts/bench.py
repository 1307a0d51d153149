#!/usr/bin/env python3
"""tracker benchmarks. Each figure is printed as one line, with its baseline measured in the same run, because
these machines are shared and noisy: read the ratios, not the absolute numbers.

    ./dev bench            full mode (about 15 minutes on 2 cores, figure 3's three runs 5 of them)
    ./dev bench --quick    about 2.5 minutes (CI runs it so it keeps working; nothing is asserted about speed)
    ./dev bench --only 1   one figure (repeatable)
    ./dev bench --scaling  per-item and per-read costs at several sizes instead (about a minute with the databases cached)
    ./dev bench --peers    figures P1-P3 only: tracker against Celery and huey (`pip install -e '.[bench]'`);
                           with --quick, small sizes (about a minute)
    ./dev bench --backend postgresql [--quick]   figures 1-4 and 6 on a PostgreSQL server the script starts

Figures (one module each): 1 and 4 recording (bench_recording.py), 2 status reads at scale (bench_status.py),
3 purge (bench_purge.py: median of 3 runs, and in full mode the per-row cost at two sizes), 5 remote runs against
the fake upstream (bench_runs.py), 6 server memory (bench_memory.py), 7 status of a batch with 100 MB of input rows
(bench_large_batch.py), 8 Streamable HTTP against stdio and the library, and two HTTP servers against one (bench_http.py), 9 MCP tasks (SEP-2663) over HTTP: create
and tasks/get round trips against a plain tools/call, and 1,000 working tasks polled by 4 clients (bench_tasks.py).
Figures 2 and 3 use a database of 1,000,000 finished operations and 5,000,000 items made by bench_data.py (about a
minute) and cached in the system temp dir (tracker-bench-cache/, keyed by schema revision, sizes and generator
version): later runs reuse it, and figure 3 purges a copy; figure 8 reads the cached database of figure 2's quick
mode. Figures P1-P3 (bench_peers.py, library models in bench_peer_libs.py) run the recording, status and purge
workloads through tracker, Celery's database result backend and huey's SqliteStorage, and print tracker's ratio to
each. With --backend postgresql, figures 1-4 and 6 run on a server initdb'd into a temporary directory for the run
(PostgreSQL's default durability: fsync and synchronous_commit on; 127.0.0.1, a free port), with figure 2's
database loaded by COPY (bench_postgres.py); the other figures say "SQLite only".
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench_common import median_spread, sqlite_module  # (first: puts this checkout on sys.path)
from bench_http import figure_8_http
from bench_large_batch import figure_7_large_batch
from bench_memory import figure_6_memory
from bench_peer_libs import missing_peers
from bench_purge import figure_3_purge
from bench_recording import figure_1_recording, figure_4_contention, recording_runs
from bench_runs import figure_5_runs
from bench_status import figure_2_status, status_runs
from bench_tasks import figure_9_tasks

FIGURES = {
    # Full size in quick mode too: its 3 runs take a few seconds, and a smaller batch has deciles shorter than one
    # flush interval, which makes the last/first decile ratio meaningless.
    1: lambda workdir, quick, pg: figure_1_recording(workdir, 100_000, pg=pg),
    2: lambda workdir, quick, pg: (
        figure_2_status(workdir, 20_000, 100_000, 500, pg=pg)
        if quick
        else figure_2_status(workdir, 1_000_000, 5_000_000, 3_000, pg=pg)
    ),
    3: lambda workdir, quick, pg: (
        figure_3_purge(workdir, 20_000, 100_000, 30.0, pg=pg)
        if quick
        else figure_3_purge(workdir, 1_000_000, 5_000_000, 180.0, scaling=True, pg=pg)
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


SCALING_ITEMS = (10_000, 100_000, 1_000_000)
SCALING_OPERATIONS = ((10_000, 50_000), (1_000_000, 5_000_000))  # (operations, items): 5 items per operation


def scaling(workdir: Path) -> None:
    """How the costs grow with size: the library's per-item recording cost against the raw executemany's (figure
    1's measures) at each batch size, and its per-read status cost against the raw same statements (figure 2's)
    at each database size; median (min-max) of 3 runs each. At 10,000 items a decile is shorter than one flush,
    so no decile ratio is shown there."""
    load_before = os.getloadavg()[0]
    print("recording: items | api us/item | raw executemany us/item | ratio api/raw rate | last/first decile", flush=True)
    for items in SCALING_ITEMS:
        runs = recording_runs(workdir / f"record-{items}", items)
        api_us = [1e6 / rate for rate in runs["api"]]
        raw_us = [1e6 / rate for rate in runs["raw"]]
        print(
            f"  {items:>9,} | {median_spread(api_us, '.2f')} | {median_spread(raw_us, '.2f')}"
            f" | {median_spread(runs['ratio'], '.2f')}"
            f" | {median_spread(runs['flat'], '.2f') if items >= 100_000 else '- (deciles shorter than a flush)'}",
            flush=True,
        )
    print("status: operations | library p50 us/read | raw same statements p50 us/read | ratio library/raw", flush=True)
    for operations, items in SCALING_OPERATIONS:
        rounds, _count = status_runs(workdir / f"status-{operations}", operations, items, 2_000, mcp=False)
        library = [r["library50"] * 1000 for r in rounds]
        same = [r["same50"] * 1000 for r in rounds]
        print(
            f"  {operations:>9,} | {median_spread(library, '.1f')} | {median_spread(same, '.1f')}"
            f" | {median_spread([r['library50'] / r['same50'] for r in rounds], '.2f')}", flush=True,
        )
    print(f"(median (min-max) of 3 runs each; load {load_before:.1f}-{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, about 2.5 minutes in all")
    parser.add_argument("--only", type=int, action="append", help="run only this figure (repeatable)")
    parser.add_argument("--scaling", action="store_true", help="the costs at several sizes instead of the figures")
    parser.add_argument("--peers", action="store_true", help="run figures P1-P3 (tracker against Celery and huey)")
    parser.add_argument(
        "--backend", choices=("sqlite", "postgresql"), default="sqlite",
        help="postgresql: figures 1-4 and 6 on a PostgreSQL server started for the run (default durability)",
    )
    args = parser.parse_args()
    if args.peers:
        return peers(args.quick)
    if args.scaling:
        print(f"tracker bench scaling, SQLite {sqlite_module().sqlite_version}")
        with tempfile.TemporaryDirectory(prefix="tracker-bench-scaling-") as workdir:
            scaling(Path(workdir))
        return 0
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


def peers(quick: bool) -> int:
    missing = missing_peers()
    if missing:
        print(f"bench --peers needs {' and '.join(missing)}: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    from bench_peers import PEER_FIGURES, peers_header

    print(f"tracker bench --peers ({'quick' if quick else 'full'} mode), SQLite {sqlite_module().sqlite_version},"
          f" {peers_header()}")
    for name, figure in PEER_FIGURES.items():
        with tempfile.TemporaryDirectory(prefix=f"tracker-bench-{name}-") as workdir:
            started = time.perf_counter()
            line = figure(Path(workdir), quick)
            print(f"{line} [{time.perf_counter() - started:.0f} s]", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
