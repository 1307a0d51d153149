"""Figure 7: get_batch_status of a run batch with large input rows (full mode: 10,000 rows of 10,000 characters,
100 MB) against a run batch of 10 such rows, both running, on the same SQLite file, through the library
(tracker.status.StatusService.batch_status, the function the MCP tool calls); also the adopt loop's read of the
running batches (RunStore.running_batches). Three runs, each on a fresh file; the figure is the median run with
the spread (min-max) of the three.

    python scripts/bench_large_batch.py [ROWS [CHARS [SAMPLES]]]

Batches are made with direct store calls. On a checkout before migration 0004 (no RunStore.create_batch) the rows
go into the batch's inputs, as run_grid_batch stored them then: the same script measures before and after."""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_common import median_spread, percentile  # (first: puts this checkout on sys.path)
from tracker import Settings, Tracker
from tracker.ids import new_operation_id
from tracker.status import StatusService
from tracker.store import Store
from tracker.store.runs import RunStore

READ_ONLY_ENV = {"TRACKER_REAP_INTERVAL": "0", "TRACKER_RETENTION": "3650d"}
SMALL_ROWS = 10
RUNS = 3


def create_batch(engine: Any, rows: list[dict[str, str]]) -> str:
    batch_id = new_operation_id("batch", "grid_run")
    params = {"grid_id": "g1", "mode": "async", "output_columns": None, "source_id": None, "concurrency": 4}
    values = {
        "id": batch_id, "kind": "batch", "operation_type": "grid_run", "total": len(rows), "grid_id": "g1",
        "mode": "async", "resumable": True, "owner_host": "bench", "owner_pid": 1,
    }
    runs = RunStore(engine)
    if hasattr(runs, "create_batch"):
        runs.create_batch({**values, "inputs": {**params, "row_count": len(rows)}}, rows)
    else:  # before migration 0004: the rows were part of the batch's inputs
        Store(engine).create_operation({**values, "inputs": {**params, "rows": rows}})
    return batch_id


def rows_of(count: int, chars: int) -> list[dict[str, str]]:
    filler = "x" * (chars - 12)
    return [{"text": f"{n:012d}{filler}"} for n in range(count)]


def one_run(path: Path, rows: int, chars: int, samples: int) -> tuple[float, float, float]:
    """p50 ms of (small status, large status, running_batches) on a fresh file."""
    settings = Settings.from_env(READ_ONLY_ENV, db=str(path))
    with Tracker(settings) as tracker:
        small = create_batch(tracker.engine, rows_of(SMALL_ROWS, chars))
        large = create_batch(tracker.engine, rows_of(rows, chars))
        service = StatusService(tracker)
        runs = RunStore(tracker.engine)
        times: dict[str, list[float]] = {"small": [], "large": [], "adopt": []}
        reads = {
            "small": lambda: service.batch_status(small),
            "large": lambda: service.batch_status(large),
            "adopt": lambda: runs.running_batches("grid_run"),
        }
        for name, read in reads.items():  # warm: imports, statement caches, the file's pages in the OS cache
            for _ in range(3):
                read()
        for _ in range(samples):  # interleaved, so a noisy moment hits every measure alike
            for name, read in reads.items():
                started = time.perf_counter()
                read()
                times[name].append((time.perf_counter() - started) * 1000)
        assert service.batch_status(large)["operation"]["progress"]["total"] == rows
    return percentile(times["small"], 0.5), percentile(times["large"], 0.5), percentile(times["adopt"], 0.5)


def figure_7_large_batch(workdir: Path, rows: int, chars: int, samples: int, log=print) -> str:
    results = []
    for n in range(RUNS):
        path = workdir / f"large-{n}.db"
        results.append(one_run(path, rows, chars, samples))
        for leftover in workdir.glob(f"large-{n}.db*"):
            leftover.unlink()
    small = [r[0] for r in results]
    large = [r[1] for r in results]
    adopt = [r[2] for r in results]
    ratios = [r[1] / r[0] for r in results]
    ratio = statistics.median(ratios)
    megabytes = rows * chars / 1e6
    return (
        f"7 get_batch_status of a running run batch of {rows:,} input rows x {chars:,} chars ({megabytes:.0f} MB)"
        f" vs one of {SMALL_ROWS} rows, same SQLite file, {samples} reads each, median (min-max) of {RUNS} runs:"
        f" small p50 {median_spread(small, '.3f')} ms | large p50 {median_spread(large, '.3f')} ms"
        f" | ratio large/small {median_spread(ratios, '.2f')}x"
        f" | adopt read of both (running_batches) p50 {median_spread(adopt, '.3f')} ms"
        f" | target large <= 1.5x small ({'met' if ratio <= 1.5 else 'MISSED'})"
    )


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    rows, chars, samples = (args + [10_000, 10_000, 100][len(args):])[:3]
    with tempfile.TemporaryDirectory(prefix="tracker-bench-7-") as workdir:
        print(figure_7_large_batch(Path(workdir), rows, chars, samples))
