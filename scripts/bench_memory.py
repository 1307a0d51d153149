"""Figure 6: memory of a `tracker serve` process while another process records a large batch and a client polls
its status through MCP, against the same server process idle (after start-up and a first few calls). Median
(min-max) of 3 runs, each with a fresh server on a fresh database."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from bench_common import REPO, mcp_session, median_spread, memory_kb, reset_peak_rss, server_pid

if TYPE_CHECKING:
    from bench_postgres import BenchPostgres

RECORDER = """
import sys
sys.path.insert(0, sys.argv[1])
import tracker
db, count = sys.argv[2], int(sys.argv[3])
with tracker.Tracker.open(db) as t:
    batch = t.start_batch("import", total=count)
    print(batch.id, flush=True)
    sys.stdin.readline()  # go
    for n in range(count):
        if n % 10 == 9:
            batch.record_failure(f"row {n + 1}: email is not a valid address", item_id=f"rec_{n:08x}", row_number=n + 1)
        else:
            batch.record_success(f"rec_{n:08x}")
    batch.finish()
"""

POLL_EVERY_S = 0.1  # twenty times the rate an agent is told to poll at: the server sees many more reads


RUNS = 3


def memory_run(workdir: Path, items: int, run: int, pg: BenchPostgres | None) -> dict[str, float]:
    """One run on a fresh database: a fresh server, its idle RSS, then its peak while the batch is recorded."""
    db = str(workdir / f"memory-{run}.db") if pg is None else pg.database("memory")

    async def measure() -> dict[str, float]:
        async with mcp_session(db, errlog=workdir / "serve.log") as session:
            pid = server_pid()
            for _ in range(20):  # first calls import and start what every later call uses
                await session.answer("get_batch_status", batch_operation_id="batch_import_" + "0" * 32)
                await session.answer("list_operations")
            await anyio.sleep(1.0)
            idle = memory_kb(pid)["VmRSS"]
            hwm_reset = reset_peak_rss(pid)
            recorder = subprocess.Popen(
                [sys.executable, "-c", RECORDER, str(REPO), db, str(items)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )
            assert recorder.stdin is not None and recorder.stdout is not None
            op_id = recorder.stdout.readline().strip()
            recorder.stdin.write("go\n")
            recorder.stdin.flush()
            polls, peak, started = 0, idle, time.perf_counter()
            while True:
                done = recorder.poll() is not None
                answer = await session.answer("get_batch_status", batch_operation_id=op_id)
                polls += 1
                peak = max(peak, memory_kb(pid)["VmRSS"])
                if done:
                    break
                await anyio.sleep(POLL_EVERY_S)
            elapsed = time.perf_counter() - started
            operation = answer["operation"]
            memory = memory_kb(pid)
            if hwm_reset:
                peak = max(peak, memory["VmHWM"])
            return {
                "idle": idle, "peak": peak, "after": memory["VmRSS"], "polls": polls, "elapsed": elapsed,
                "completed": operation["progress"]["completed"], "status": operation["status"],
                "recorder_rc": recorder.returncode, "hwm": hwm_reset,
            }

    m = anyio.run(measure)
    m["growth"] = (m["peak"] - m["idle"]) / 1024
    m["exact"] = m["completed"] == items and m["status"] == "completed" and m["recorder_rc"] == 0
    return m


def figure_6_memory(workdir: Path, items: int, pg: BenchPostgres | None = None, runs: int = RUNS) -> str:
    load_before = os.getloadavg()[0]
    measured = [memory_run(workdir, items, run, pg) for run in range(runs)]
    load_after = os.getloadavg()[0]

    def mb(key: str) -> str:
        return median_spread([m[key] / 1024 for m in measured], ".1f")

    growth = statistics.median(m["growth"] for m in measured)
    exact = all(m["exact"] for m in measured)
    return (
        f"6 memory of tracker serve{'' if pg is None else ' on PostgreSQL'} while {items:,} items are recorded by"
        f" another process ({sum(m['polls'] for m in measured):,} get_batch_status polls over"
        f" {sum(m['elapsed'] for m in measured):.0f} s in {runs} runs), median (min-max) of {runs} runs:"
        f" peak RSS {mb('peak')} MB{' (VmHWM)' if all(m['hwm'] for m in measured) else ' (sampled VmRSS)'},"
        f" after {mb('after')} MB | same process idle {mb('idle')} MB"
        f" | growth {median_spread([m['growth'] for m in measured], '.1f')} MB"
        f" (target <= 50 MB: {'met' if growth <= 50 else 'MISSED'}) | final status"
        f" {'completed' if exact else 'NOT EXACT'} {items:,}/{items:,} in every run"
        f" | load {load_before:.1f}-{load_after:.1f} on {os.cpu_count()} cores"
    )
