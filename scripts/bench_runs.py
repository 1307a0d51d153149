"""Figure 5: remote runs polled by several MCP clients at once against the fake grid API
(tracker.testing.fake_upstream, a real HTTP server on 127.0.0.1): the upstream requests per second, read from the
fake's own counters, against its rate limit; and the upstream requests spent on runs that had already ended (read
from the fake's request log)."""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from pathlib import Path
from typing import Any

import anyio

from bench_common import mcp_session, median_spread, percentile
from tracker import Settings
from tracker.db import open_engine
from tracker.remote import RunsService
from tracker.testing.fake_upstream import FakeUpstreamProcess, busiest_second

KEY = "bench-key-0123456789"
RATE_LIMIT = 5  # the upstream's documented limit (CONTRACTS.md), and tracker's default BITSCALE_RATE_LIMIT
STATUS_LINE = re.compile(r'"GET /api/v1/run/status/([^ ?"]+)')


class FakeUpstream(FakeUpstreamProcess):
    """The fake grid API logging every request to a file (the request log tells which runs were polled)."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self._log_file = log.open("w")
        super().__init__(KEY, stderr=self._log_file, seed=5, rate_limit=RATE_LIMIT, verbose=True)

    def stop(self) -> None:
        super().stop()
        self._log_file.close()


async def _submit(settings: Settings, count: int, grid_id: str) -> list[str]:
    """`count` async runs through the runs service; returns their request ids."""
    engine = open_engine(settings)
    service = RunsService(settings, engine)
    slots = asyncio.Semaphore(16)

    async def one(n: int) -> str:
        async with slots:
            answer = await service.run_grid(grid_id, {"email": f"person{n}@example.com"}, mode="async")
            return answer["request_id"]

    try:
        ids = await asyncio.gather(*(one(n) for n in range(count)))
        if grid_id == "ended":  # poll each until tracker records its end (a poll within the interval is skipped)
            for request_id in ids:
                deadline = time.monotonic() + 10
                answer = await service.get_run_status(request_id)
                while answer["status"] == "running" and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                    answer = await service.get_run_status(request_id)
                assert answer["status"] == "completed", answer
        return ids
    finally:
        await service.aclose()
        engine.dispose()


def setup_runs(db: Path, fake: FakeUpstream, running: int, ended: int) -> tuple[list[str], list[str]]:
    """Runs that ended (recorded as completed) and runs that stay running upstream all along. Made with the rate
    limit lifted on both sides; the figure is measured afterwards, at the real limit."""
    fast = Settings.from_env(fake.env(), db=str(db), upstream_rate_per_s=1000.0, poll_interval_s=0.01)
    fake.configure(rate_limit=0, run_seconds="0")
    ended_ids = asyncio.run(_submit(fast, ended, "ended"))
    fake.configure(run_seconds="100000")
    running_ids = asyncio.run(_submit(fast, running, "running"))
    fake.configure(rate_limit=RATE_LIMIT)
    return running_ids, ended_ids


RUNS = 3


def runs_run(workdir: Path, running: int, ended: int, clients: int, seconds: float) -> dict[str, Any]:
    """One run: a fresh database and upstream, the clients polling for `seconds`."""
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "runs.db"
    fake = FakeUpstream(workdir / "upstream.log")
    try:
        running_ids, ended_ids = setup_runs(db, fake, running, ended)
        ended_set = set(ended_ids)
        polls = {"running": 0, "ended": 0, "stale": 0, "from_table": 0, "errors": 0}
        latency: dict[str, list[float]] = {"running": [], "ended": []}
        window: dict[str, float] = {}
        ready = anyio.Event()
        started = [0]

        async def poll(session: Any, ids: list[str], kind: str, pause_s: float) -> None:
            """One agent's loop: ask for each run's status in turn until the window closes."""
            n = 0
            while time.time() < window["start"] + seconds:
                request_id = ids[n % len(ids)]
                n += 1
                called = time.perf_counter()
                result = await session.call("get_run_status", request_id=request_id)
                latency[kind].append((time.perf_counter() - called) * 1000)
                if result.is_error:
                    polls["errors"] += 1
                    continue
                polls[kind] += 1
                answer = result.value or {}
                polls["stale"] += bool(answer.get("stale"))
                # A running run's poll that would wait for a rate-limit slot booked far ahead: answered from the table.
                polls["from_table"] += "from tracker's table" in str(answer.get("message", ""))
                await anyio.sleep(pause_s)

        async def client(number: int) -> None:
            """One MCP server process per client, like agents each running their own server on one database.
            Each client polls the running runs back to back, and meanwhile the ended ones ten times a second."""
            mine = random.Random(number)
            running_order = mine.sample(running_ids, len(running_ids))
            ended_order = mine.sample(ended_ids, len(ended_ids))
            async with mcp_session(db, fake.env(), errlog=workdir / f"serve-{number}.log") as session:
                started[0] += 1
                if started[0] == clients:
                    window["start"] = time.time()
                    window["log_start"] = fake.log.stat().st_size
                    ready.set()
                await ready.wait()
                async with anyio.create_task_group() as group:
                    group.start_soon(poll, session, running_order, "running", 0.0)
                    group.start_soon(poll, session, ended_order, "ended", 0.1)
                if "end" not in window:
                    window["end"] = time.time()
                    window["log_end"] = fake.log.stat().st_size

        async def all_clients() -> None:
            async with anyio.create_task_group() as group:
                for number in range(clients):
                    group.start_soon(client, number)

        anyio.run(all_clients)
        stats = fake.call("/_fake/stats?times=1")
    finally:
        fake.stop()
    start, end = window["start"], window["end"]
    arrivals = [t for t in stats["arrival_times"] if start <= t <= end]
    accepted = [t for t in stats["accepted_times"] if start <= t <= end]
    span = end - start
    sent_rate = len(arrivals) / span
    busiest = busiest_second(accepted)
    with fake.log.open("rb") as log:
        log.seek(int(window["log_start"]))
        lines = log.read(int(window["log_end"] - window["log_start"])).decode(errors="replace")
    ended_requests = sum(1 for m in STATUS_LINE.finditer(lines) if m.group(1) in ended_set)
    return {
        "polls": polls, "latency": latency, "span": span, "sent": len(arrivals), "refused": len(arrivals) - len(accepted),
        "rate": sent_rate, "busiest": busiest, "ended_requests": ended_requests,
    }


def figure_5_runs(workdir: Path, running: int, ended: int, clients: int, seconds: float, runs: int = RUNS) -> str:
    load_before = os.getloadavg()[0]
    measured = [runs_run(workdir / f"run-{n}", running, ended, clients, seconds) for n in range(runs)]
    load_after = os.getloadavg()[0]

    def spread(values: list[float], fmt: str = ",.0f") -> str:
        return median_spread(values, fmt)

    def total(key: str) -> int:
        return sum(m["polls"][key] for m in measured)

    rates = [m["rate"] for m in measured]
    busiest = max(m["busiest"] for m in measured)
    ended_requests = sum(m["ended_requests"] for m in measured)
    met = max(rates) <= RATE_LIMIT and busiest <= RATE_LIMIT
    waits = " ".join(
        f"{kind} p50 {spread([percentile(m['latency'][kind], 0.5) for m in measured])} ms"
        f" p99 {spread([percentile(m['latency'][kind], 0.99) for m in measured])} ms;"
        for kind in ("running", "ended")
        if all(m["latency"][kind] for m in measured)
    )
    return (
        f"5 remote runs: {running:,} running + {ended:,} ended runs polled through MCP by {clients} clients for"
        f" {seconds:.0f} s, median (min-max) of {runs} runs ({total('running'):,} + {total('ended'):,} get_run_status"
        f" calls in all, {total('stale'):,} stale, {total('from_table'):,} answered from the table while the rate"
        f" limit was booked ahead, {total('errors')} errors; call latency {waits.rstrip(';')}):"
        f" upstream requests {spread(rates, '.2f')}/s ({sum(m['sent'] for m in measured)} sent,"
        f" {sum(m['refused'] for m in measured)} refused with 429, busiest second {busiest} accepted)"
        f" | rate limit {RATE_LIMIT}/s | ratio {spread([r / RATE_LIMIT for r in rates], '.2f')}"
        f" (target <= 1 in every run: {'met' if met else 'MISSED'})"
        f" | {total('ended'):,} polls of ended runs cost {ended_requests} upstream requests"
        f" (target 0: {'met' if ended_requests == 0 else 'MISSED'})"
        f" | load {load_before:.1f}-{load_after:.1f} on {os.cpu_count()} cores"
    )


