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

from bench_common import sqlite_module  # noqa: E402  (puts this checkout on sys.path first)
from bench_purge import figure_3_purge  # noqa: E402
from bench_recording import figure_1_recording, figure_4_contention  # noqa: E402
from bench_memory import figure_6_memory  # noqa: E402
from bench_runs import figure_5_runs  # noqa: E402
from bench_status import figure_2_status  # noqa: E402


FIGURES = {
    1: lambda workdir, quick: figure_1_recording(workdir, 20_000 if quick else 100_000),
    2: lambda workdir, quick: (
        figure_2_status(workdir, 20_000, 100_000, 500)
        if quick
        else figure_2_status(workdir, 1_000_000, 5_000_000, 3_000)
    ),
    3: lambda workdir, quick: (
        figure_3_purge(workdir, 20_000, 100_000, 30.0)
        if quick
        else figure_3_purge(workdir, 1_000_000, 5_000_000, 180.0)
    ),
    4: lambda workdir, quick: figure_4_contention(workdir, 8, 5_000 if quick else 25_000),
    5: lambda workdir, quick: (
        figure_5_runs(workdir, 200, 20, 4, 10.0) if quick else figure_5_runs(workdir, 1_000, 100, 4, 60.0)
    ),
    6: lambda workdir, quick: figure_6_memory(workdir, 100_000 if quick else 1_000_000),
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
            started = time.perf_counter()
            line = FIGURES[number](Path(workdir), args.quick)
            print(f"{line} [{time.perf_counter() - started:.0f} s]", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
