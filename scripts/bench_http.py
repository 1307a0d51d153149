"""Figure 8: tracker over Streamable HTTP (`tracker serve --http`, started by tracker.testing.http_server) against
stdio and the library, on the cached database of figure 2's quick mode (20,000 finished operations, 100,000 items).

(a) Round trips of get_batch_status for the same random operations, in the same run: the library call
    (StatusService.batch_status, what the tool calls), one MCP session over stdio (`tracker serve`), one MCP session
    over Streamable HTTP (the SDK's client, tracker.testing.client.http: one HTTP client for the session), and
    JSON-RPC POSTs on one kept-alive connection (httpx, each answer read to its end: the transport without the SDK
    client). The four are interleaved call by call, so a noisy moment hits all alike. p50 and p99 of each run, then
    the median (min-max) of 3 runs (on the same four clients, after warm-up calls); and the TCP connections each
    HTTP client opened in a run (from /proc/net/tcp). The SDK's client (mcp 2.3.0) closes an SSE answer as soon as
    its response event arrives, usually before the stream's end, so the connection cannot be reused: its session
    opens about one connection per call. A server whose accepted sockets lack TCP_NODELAY shows as a kept-alive p50
    of 40 ms or more (Nagle's algorithm against delayed ACKs; tests/test_conformance.py checks for it).
(b) Aggregate get_batch_status calls/s of 8 concurrent MCP sessions over HTTP (asyncio, this one process) for a
    fixed window, against one server process and against two on the same SQLite file (4 sessions each): median
    (min-max) of 3 runs of each, alternating, and the ratio two/one of each run. With the CPU time the client
    process and the servers used in the window: on 2 cores the clients may be what saturates.

    python scripts/bench_http.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx

from bench_common import cpu_seconds, mcp_session, median_spread, percentile, tcp_client_ports
from bench_data import status_database
from bench_status import sample_ids, touch
from tracker import Settings, Tracker
from tracker.status import StatusService
from tracker.testing.client import http
from tracker.testing.http_server import HttpServer

READ_ONLY_ENV = {"TRACKER_REAP_INTERVAL": "0", "TRACKER_RETENTION": "3650d"}  # the cached file must stay as it is
OPERATIONS, ITEMS = 20_000, 100_000
RUNS = 3
WARM_CALLS = 30
CLIENTS = 8
ERROR_PAUSE_S = 0.05  # after a failed call (the SDK's client does not wait out a 429's Retry-After)
WIRE = "2025-11-25"  # the initialize handshake, as tracker.testing.client.stdio() and http() speak it


class KeptAlive:
    """JSON-RPC over one kept-alive HTTP connection: initialize once, then tools/call, each answer (JSON or an SSE
    stream) read to its end so that the connection carries the next request."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.client = client
        self.url = url
        self.headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        self.ports: set[int] = set()  # local ports it used: one per connection
        self._ids = iter(range(1, 1 << 62))

    async def _post(self, message: dict[str, Any]) -> Any:
        response = await self.client.post(self.url, content=json.dumps(message), headers=self.headers)
        response.raise_for_status()
        self.ports.add(response.extensions["network_stream"].get_extra_info("client_addr")[1])
        if "id" not in message:
            return None
        body = response.text
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            body = [line[5:] for line in body.splitlines() if line.startswith("data:")][-1]
        return json.loads(body)["result"]

    async def start(self) -> None:
        await self._post({"jsonrpc": "2.0", "id": next(self._ids), "method": "initialize", "params": {
            "protocolVersion": WIRE, "capabilities": {}, "clientInfo": {"name": "bench-http", "version": "1"}}})
        self.headers["MCP-Protocol-Version"] = WIRE
        await self._post({"jsonrpc": "2.0", "method": "notifications/initialized"})

    async def answer(self, tool: str, **arguments: Any) -> Any:
        result = await self._post({"jsonrpc": "2.0", "id": next(self._ids), "method": "tools/call",
                                   "params": {"name": tool, "arguments": arguments}})
        assert not result.get("isError"), result
        return result["structuredContent"]


async def _round_trips(db: Path, server: HttpServer, ids: list[str], workdir: Path) -> list[dict[str, Any]]:
    """(a): RUNS runs on the same four clients, each run every id through each of the four, call by call."""
    with Tracker(Settings.from_env(READ_ONLY_ENV, db=str(db))) as tracker:
        service = StatusService(tracker)
        async with (
            mcp_session(db, READ_ONLY_ENV, errlog=workdir / "stdio.log") as stdio,
            http(server.url) as session,
            httpx.AsyncClient(timeout=60) as client,
        ):
            kept = KeptAlive(client, server.url)
            await kept.start()

            async def library(op_id: str) -> Any:
                return service.batch_status(op_id)

            calls = {
                "library": library,
                "stdio": lambda op_id: stdio.answer("get_batch_status", batch_operation_id=op_id),
                "http": lambda op_id: session.answer("get_batch_status", batch_operation_id=op_id),
                "kept": lambda op_id: kept.answer("get_batch_status", batch_operation_id=op_id),
            }
            for op_id in ids[:WARM_CALLS]:  # imports, statement caches, connection pools
                for call in calls.values():
                    await call(op_id)
            runs = []
            for run in range(RUNS):
                times: dict[str, list[float]] = {name: [] for name in calls}
                before = tcp_client_ports(server.port)
                kept.ports.clear()
                order = random.Random(run).sample(ids[WARM_CALLS:], len(ids) - WARM_CALLS)
                for op_id in order:
                    for name, call in calls.items():
                        started = time.perf_counter()
                        answer = await call(op_id)
                        times[name].append((time.perf_counter() - started) * 1000)
                        assert answer["found"], (name, op_id)
                # New client ports of the run, less the kept-alive client's (opened before the run, or during it).
                opened = len(tcp_client_ports(server.port) - before - kept.ports)
                runs.append({
                    **{f"{name}50": percentile(values, 0.50) for name, values in times.items()},
                    **{f"{name}99": percentile(values, 0.99) for name, values in times.items()},
                    "kept_connections": len(kept.ports),
                    "session_connections": opened,
                    "calls": len(order),
                })
    return runs


async def _throughput(urls: list[str], pids: list[int], ids: list[str], seconds: float, seed: int) -> dict[str, float]:
    """One run of (b): CLIENTS sessions, split between `urls`, each calling back to back for `seconds`."""
    counts = [0] * CLIENTS
    errors: dict[str, int] = {}
    opened = 0
    all_open = anyio.Event()
    window: dict[str, float] = {}

    async def client(number: int) -> None:
        nonlocal opened
        order = random.Random(seed * 100 + number).sample(ids, len(ids))
        async with http(urls[number % len(urls)]) as session:
            with contextlib.suppress(Exception):  # warm-up; a refused call is counted in the window below
                await session.answer("get_batch_status", batch_operation_id=order[-1])
            opened += 1
            if opened == CLIENTS:
                window["cpu_client"] = sum(os.times()[:2])
                window["cpu_servers"] = sum(cpu_seconds(pid) for pid in pids)
                window["start"] = time.perf_counter()
                all_open.set()
            await all_open.wait()
            end = window["start"] + seconds
            n = 0
            while True:
                op_id = order[n % len(order)]
                n += 1
                try:
                    answer = await session.answer("get_batch_status", batch_operation_id=op_id)
                except Exception as exc:  # noqa: BLE001 - an HTTP error status (a 429) surfaces as an MCPError
                    kind = f"{type(exc).__name__}: {str(exc)[:80]}"
                    errors[kind] = errors.get(kind, 0) + 1
                    answer = None
                    await anyio.sleep(ERROR_PAUSE_S)
                if time.perf_counter() > end:
                    break
                if answer is not None:
                    assert answer["found"]
                    counts[number] += 1
            if "end" not in window:
                window["end"] = time.perf_counter()
                window["cpu_client_end"] = sum(os.times()[:2])
                window["cpu_servers_end"] = sum(cpu_seconds(pid) for pid in pids)

    async with anyio.create_task_group() as group:
        for number in range(CLIENTS):
            group.start_soon(client, number)
    span = window["end"] - window["start"]
    return {
        "rate": sum(counts) / seconds,
        "errors": sum(errors.values()),
        "error_kinds": sorted(errors),
        "client_cpu": (window["cpu_client_end"] - window["cpu_client"]) / span,
        "server_cpu": (window["cpu_servers_end"] - window["cpu_servers"]) / span,
    }


@contextmanager
def _servers(db: Path, workdir: Path, count: int) -> Iterator[list[HttpServer]]:
    """`count` HTTP server processes on `db`, started at once (each takes seconds to import and open the file)."""
    servers = [HttpServer(db, env=READ_ONLY_ENV, log=workdir / f"http-{n}.log") for n in range(count)]
    with ExitStack() as stack:
        for server in servers:
            stack.callback(server.stop)  # every one is stopped, whichever fails to start
        for server in servers:
            server.wait_listening()
        yield servers


def figure_8_http(workdir: Path, samples: int, seconds: float, log=print) -> str:
    load_before = os.getloadavg()[0]
    db, _reused = status_database(OPERATIONS, ITEMS, log=log)
    ids = sample_ids(db, WARM_CALLS + samples, seed=8)
    touch(db, ids)
    with _servers(db, workdir, 2) as (first, second):
        rounds = anyio.run(_round_trips, db, first, ids, workdir)
        one, two = [], []
        for run in range(RUNS):
            configs = [("one", [first]), ("two", [first, second])]
            for name, servers in configs if run % 2 == 0 else configs[::-1]:
                result = anyio.run(_throughput, [s.url for s in servers], [s.pid for s in servers], ids, seconds, run)
                (one if name == "one" else two).append(result)
    load_after = os.getloadavg()[0]

    def spread(key: str, fmt: str = ".2f") -> str:
        return median_spread([r[key] for r in rounds], fmt)

    http_per_stdio = [r["http50"] / r["stdio50"] for r in rounds]
    kept_per_stdio = [r["kept50"] / r["stdio50"] for r in rounds]
    two_per_one = [t["rate"] / o["rate"] for o, t in zip(one, two)]
    calls = rounds[0]["calls"]
    error_kinds = sorted({kind for r in one + two for kind in r["error_kinds"]})
    kinds = f" ({'; '.join(error_kinds)})" if error_kinds else ""
    return (
        f"8 Streamable HTTP: get_batch_status of {calls:,} random operations among {OPERATIONS:,} finished"
        f" operations, median (min-max) of {RUNS} runs: library p50 {spread('library50', '.3f')} ms"
        f" p99 {spread('library99', '.3f')} ms | MCP stdio p50 {spread('stdio50')} ms p99 {spread('stdio99')} ms"
        f" | MCP HTTP session p50 {spread('http50')} ms p99 {spread('http99')} ms"
        f" ({median_spread([r['session_connections'] for r in rounds], '.0f')} TCP connections for {calls:,} calls)"
        f" | HTTP kept-alive POST p50 {spread('kept50')} ms p99 {spread('kept99')} ms"
        f" ({median_spread([r['kept_connections'] for r in rounds], '.0f')} connection)"
        f" | ratio p50 HTTP session/stdio {median_spread(http_per_stdio, '.2f')}x,"
        f" kept-alive/stdio {median_spread(kept_per_stdio, '.2f')}x"
        f" || {CLIENTS} concurrent HTTP sessions for {seconds:g} s: one server"
        f" {median_spread([r['rate'] for r in one], ',.0f')} calls/s,"
        f" two servers on the same file {median_spread([r['rate'] for r in two], ',.0f')} calls/s"
        f" | ratio two/one {median_spread(two_per_one, '.2f')}"
        f" | failed calls {sum(r['errors'] for r in one)} (one) / {sum(r['errors'] for r in two)} (two){kinds}"
        f" | CPU in the window, cores: client process {statistics.median(r['client_cpu'] for r in one + two):.2f},"
        f" servers {statistics.median(r['server_cpu'] for r in one):.2f} (one) /"
        f" {statistics.median(r['server_cpu'] for r in two):.2f} (two)"
        f" | load {load_before:.1f}-{load_after:.1f} on {os.cpu_count()} cores"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tracker-bench-8-") as workdir:
        print(figure_8_http(Path(workdir), 60, 1.0) if args.quick else figure_8_http(Path(workdir), 1_000, 10.0))
