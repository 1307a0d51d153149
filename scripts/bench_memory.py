"""Figure 6: memory of a `tracker serve` process while another process records a large batch and a client polls
its status through MCP, against the same server process idle (after start-up and a first few calls)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from bench_common import REPO, mcp_session, memory_kb, reset_peak_rss, server_pid

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


def figure_6_memory(workdir: Path, items: int, pg: BenchPostgres | None = None) -> str:
    db = str(workdir / "memory.db") if pg is None else pg.database("memory")

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
    growth_mb = (m["peak"] - m["idle"]) / 1024
    exact = m["completed"] == items and m["status"] == "completed" and m["recorder_rc"] == 0
    return (
        f"6 memory of tracker serve{'' if pg is None else ' on PostgreSQL'} while {items:,} items are recorded by"
        f" another process"
        f" ({m['polls']:,} get_batch_status polls over {m['elapsed']:.0f} s): peak RSS {m['peak'] / 1024:.1f} MB"
        f"{' (VmHWM)' if m['hwm'] else ' (sampled VmRSS)'}, after {m['after'] / 1024:.1f} MB"
        f" | same process idle {m['idle'] / 1024:.1f} MB | growth {growth_mb:.1f} MB"
        f" (target <= 50 MB: {'met' if growth_mb <= 50 else 'MISSED'}) | final status"
        f" {m['status']} {m['completed']:,}/{items:,}{'' if exact else ' NOT EXACT'}"
    )
