"""Figure 9: durable MCP tasks (the io.modelcontextprotocol/tasks extension, SEP-2663, on the 2026-07-28 stateless
wire) served by the tasks fixture server (tracker.testing.task_server over Streamable HTTP, started by
tracker.testing.http_server) on a fresh SQLite file. Every request is a raw JSON-RPC POST (httpx, one kept-alive
connection per client) with the 2026-07-28 `_meta` envelope declaring the extension, so the server answers a
`tools/call slow_compute` with a task (`resultType: "task"`, checked); an answer is JSON or an SSE stream, read to
its end.

(a) Round trips on one connection, interleaved call by call so a noisy moment hits all alike: a plain
    `tools/call greet` (never a task: the baseline), a `tasks/get` alone (of the task the previous sample created,
    still working), `tools/call slow_compute {seconds: 30}` (the create: the task is committed before the answer) and
    the immediate `tasks/get` of the returned taskId; create + first get is the sum of the two. p50 and p99 of each
    run, then the median (min-max) of 3 runs, after warm-up calls; ratios to greet's p50. After each run its tasks
    are cancelled (tasks/cancel) and each is checked to be "cancelled".
(b) `tasks` concurrent working tasks (slow_compute of 600 s, created by the 4 clients, each its share), the server's
    CPU with them working and no request for a moment (what the running bodies and the cancel watcher cost), then
    4 concurrent clients (asyncio, this one process) each polling its own quarter of the tasks round robin with
    tasks/get, back to back (not waiting pollIntervalMs: a stress, not a polite client), for a fixed window:
    polls/s, p50/p99 poll latency, and the errors (a transport error, an HTTP status, a JSON-RPC error, or a status
    other than "working"). Then every task is cancelled and checked to reach "cancelled", and the same 4 clients
    poll the same, now cancelled, tasks for the same window: the baseline (the same reads with no task working).
    Median (min-max) of 3 runs (each creating its own tasks, on the same server), with the CPU the client process
    and the server used in the working window: on 2 cores the clients may be what saturates.

    python scripts/bench_tasks.py [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx

from bench_common import cpu_seconds, median_spread, percentile
from tracker.testing.http_server import HttpServer, task_server_command

WIRE = "2026-07-28"
EXTENSION = "io.modelcontextprotocol/tasks"
META = {
    "io.modelcontextprotocol/protocolVersion": WIRE,
    "io.modelcontextprotocol/clientCapabilities": {"extensions": {EXTENSION: {}}},
    "io.modelcontextprotocol/clientInfo": {"name": "bench-tasks", "version": "1"},
}
RUNS = 3
WARM_CALLS = 30
CLIENTS = 4
CREATE_SECONDS = 30  # (a): outlives a run, which cancels its tasks at its end
WORKING_SECONDS = 600  # (b): outlives the whole figure
CANCEL_WAIT_S = 30.0  # (b): every cancelled task must read "cancelled" within this
CALL_TIMEOUT_S = 60.0


class RpcError(Exception):
    """A JSON-RPC error answer; the message is its code and message."""


class Stateless:
    """JSON-RPC requests of the 2026-07-28 wire on one kept-alive HTTP connection: no initialize, every request
    carries the `_meta` envelope declaring the tasks extension and the routing headers (Mcp-Method, Mcp-Name)."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.client = client
        self.url = url
        self._ids = itertools.count(1)

    async def request(self, method: str, name: str, params: dict[str, Any]) -> dict[str, Any]:
        headers = {
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
            "MCP-Protocol-Version": WIRE,
            "Mcp-Method": method,
            "Mcp-Name": name,
        }
        message = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": {**params, "_meta": META}}
        response = await self.client.post(self.url, content=json.dumps(message), headers=headers)
        response.raise_for_status()
        body = response.text
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            body = [line[5:] for line in body.splitlines() if line.startswith("data:")][-1]
        answer = json.loads(body)
        if "error" in answer:
            raise RpcError(f"{answer['error'].get('code')} {str(answer['error'].get('message'))[:80]}")
        return answer["result"]

    async def greet(self) -> dict[str, Any]:
        result = await self.request("tools/call", "greet", {"name": "greet", "arguments": {"name": "bench"}})
        assert not result.get("isError") and result.get("resultType") != "task", result
        return result

    async def create(self, seconds: float) -> str:
        result = await self.request(
            "tools/call", "slow_compute", {"name": "slow_compute", "arguments": {"seconds": seconds, "label": "bench"}}
        )
        if result.get("resultType") != "task" or result.get("status") != "working":
            raise AssertionError(f"slow_compute was not answered with a working task: {result}")
        return result["taskId"]

    async def get(self, task_id: str) -> dict[str, Any]:
        return await self.request("tasks/get", task_id, {"taskId": task_id})

    async def cancel(self, task_id: str) -> None:
        await self.request("tasks/cancel", task_id, {"taskId": task_id})


def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=CALL_TIMEOUT_S, limits=httpx.Limits(max_connections=1))


async def _cancel_and_check(clients: list[Stateless], task_ids: list[str]) -> dict[str, Any]:
    """Cancel every task (the clients each a share), then read each until it says "cancelled" (CANCEL_WAIT_S at
    most): how many did, how long after the first cancel, and what failed."""
    errors: dict[str, int] = {}
    statuses: dict[str, str] = {}
    latencies: list[float] = []
    started = time.perf_counter()

    def failed(exc: Exception) -> None:
        kind = f"{type(exc).__name__}: {str(exc)[:80]}"
        errors[kind] = errors.get(kind, 0) + 1

    async def cancel_share(client: Stateless, share: list[str]) -> None:
        for task_id in share:
            before = time.perf_counter()
            try:
                await client.cancel(task_id)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                failed(exc)
                continue
            latencies.append((time.perf_counter() - before) * 1000)

    async def check_share(client: Stateless, share: list[str]) -> None:
        deadline = started + CANCEL_WAIT_S
        pending = list(share)
        while pending and time.perf_counter() < deadline:
            still = []
            for task_id in pending:
                try:
                    statuses[task_id] = (await client.get(task_id))["status"]
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    failed(exc)
                    statuses[task_id] = "unread"
                if statuses[task_id] != "cancelled":
                    still.append(task_id)
            pending = still
            if pending:
                await anyio.sleep(0.2)

    for step in (cancel_share, check_share):
        async with anyio.create_task_group() as group:
            for number, client in enumerate(clients):
                group.start_soon(step, client, task_ids[number::len(clients)])
    return {
        "p50": percentile(latencies, 0.50) if latencies else float("nan"),
        "cancelled": sum(1 for s in statuses.values() if s == "cancelled"),
        "tasks": len(task_ids),
        "seconds": time.perf_counter() - started,
        "left": sorted({s for s in statuses.values() if s != "cancelled"}),
        "errors": sum(errors.values()),
        "error_kinds": sorted(errors),
    }


async def _round_trips(url: str, samples: int) -> tuple[list[dict[str, float]], list[dict[str, Any]]]:
    """(a): RUNS runs on one connection; each run `samples` of greet, get alone, create, first get."""
    async with _client() as http:
        client = Stateless(http, url)
        warm = []
        for _ in range(WARM_CALLS):
            await client.greet()
            warm.append(await client.create(CREATE_SECONDS))
            await client.get(warm[-1])
        await _cancel_and_check([client], warm)
        runs, cancels = [], []
        for _ in range(RUNS):
            times: dict[str, list[float]] = {"greet": [], "get": [], "create": [], "first": [], "both": []}
            created = [await client.create(CREATE_SECONDS)]  # the first get alone reads this one
            for _ in range(samples):
                started = time.perf_counter()
                await client.greet()
                times["greet"].append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                task = await client.get(created[-1])
                times["get"].append((time.perf_counter() - started) * 1000)
                assert task["status"] == "working", task
                started = time.perf_counter()
                created.append(await client.create(CREATE_SECONDS))
                between = time.perf_counter()
                task = await client.get(created[-1])
                ended = time.perf_counter()
                assert task["status"] == "working" and task["taskId"] == created[-1], task
                times["create"].append((between - started) * 1000)
                times["first"].append((ended - between) * 1000)
                times["both"].append((ended - started) * 1000)
            runs.append({
                **{f"{name}50": percentile(values, 0.50) for name, values in times.items()},
                **{f"{name}99": percentile(values, 0.99) for name, values in times.items()},
            })
            cancels.append(await _cancel_and_check([client], created))
    return runs, cancels


async def _poll_window(clients: list[Stateless], task_ids: list[str], status: str, seconds: float,
                       pid: int) -> dict[str, Any]:
    """The clients each poll their share of `task_ids` round robin with tasks/get, back to back, for `seconds`;
    an answer whose status is not `status` is an error."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    cpu = {"client": sum(os.times()[:2]), "server": cpu_seconds(pid)}
    started = time.perf_counter()
    end = started + seconds

    async def poll(client: Stateless, share: list[str]) -> None:
        for task_id in itertools.cycle(share):
            before = time.perf_counter()
            if before >= end:
                return
            try:
                answer = await client.get(task_id)
                if answer.get("status") != status:
                    raise AssertionError(f"status {answer.get('status')}, not {status}")
            except Exception as exc:  # noqa: BLE001 - counted and reported
                kind = f"{type(exc).__name__}: {str(exc)[:80]}"
                errors[kind] = errors.get(kind, 0) + 1
                continue
            latencies.append((time.perf_counter() - before) * 1000)

    async with anyio.create_task_group() as group:
        for number, client in enumerate(clients):
            group.start_soon(poll, client, task_ids[number::len(clients)])
    span = time.perf_counter() - started
    return {
        "rate": len(latencies) / span,
        "p50": percentile(latencies, 0.50) if latencies else float("nan"),
        "p99": percentile(latencies, 0.99) if latencies else float("nan"),
        "errors": sum(errors.values()),
        "error_kinds": sorted(errors),
        "client_cpu": (sum(os.times()[:2]) - cpu["client"]) / span,
        "server_cpu": (cpu_seconds(pid) - cpu["server"]) / span,
    }


async def _concurrent(url: str, pid: int, tasks: int, seconds: float, idle_s: float) -> dict[str, Any]:
    """One run of (b)."""
    https = [_client() for _ in range(CLIENTS)]
    try:
        clients = [Stateless(http, url) for http in https]
        for client in clients:  # open the connections
            await client.greet()
        shares: list[list[str]] = [[] for _ in clients]
        create_errors: dict[str, int] = {}

        async def create_share(number: int) -> None:
            for _ in range(number, tasks, CLIENTS):
                try:
                    shares[number].append(await clients[number].create(WORKING_SECONDS))
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    kind = f"{type(exc).__name__}: {str(exc)[:80]}"
                    create_errors[kind] = create_errors.get(kind, 0) + 1

        started = time.perf_counter()
        async with anyio.create_task_group() as group:
            for number in range(CLIENTS):
                group.start_soon(create_share, number)
        create_s = time.perf_counter() - started
        task_ids = [task_id for pair in itertools.zip_longest(*shares) for task_id in pair if task_id is not None]
        cpu_before = cpu_seconds(pid)
        await anyio.sleep(idle_s)
        idle_cpu = (cpu_seconds(pid) - cpu_before) / idle_s
        working = await _poll_window(clients, task_ids, "working", seconds, pid)
        cancel = await _cancel_and_check(clients, task_ids)
        ended = await _poll_window(clients, task_ids, "cancelled", seconds, pid)
    finally:
        for http in https:
            await http.aclose()
    return {
        "create": {
            "rate": len(task_ids) / create_s,
            "errors": sum(create_errors.values()),
            "error_kinds": sorted(create_errors),
        },
        "idle_cpu": idle_cpu,
        "working": working,
        "cancel": cancel,
        "ended": ended,
    }


def _complaints(stderr: str) -> list[str]:
    """The server's WARNING, ERROR and traceback lines, less the one its stop (SIGTERM) always logs."""
    return [
        line for line in stderr.splitlines()
        if line.startswith(("WARNING", "ERROR", "CRITICAL", "Traceback")) and "SIGTERM" not in line
    ]


def figure_9_tasks(workdir: Path, samples: int, tasks: int, seconds: float) -> str:
    load_before = os.getloadavg()[0]
    with HttpServer(workdir / "tasks.db", command=task_server_command(), log=workdir / "serve.log") as server:
        rounds, round_cancels = anyio.run(_round_trips, server.url, samples)
        idle_s = min(3.0, seconds / 2)
        runs = [anyio.run(_concurrent, server.url, server.pid, tasks, seconds, idle_s) for _ in range(RUNS)]
        alive = server.process.poll() is None
    load_after = os.getloadavg()[0]
    complaints = _complaints((workdir / "serve.log").read_text(errors="replace"))

    def spread(key: str) -> str:
        return median_spread([r[key] for r in rounds], ".2f")

    def ratio(key: str) -> str:
        return median_spread([r[key] / r["greet50"] for r in rounds], ".2f")

    def across(part: str, key: str, fmt: str = ".2f") -> str:
        return median_spread([r[part][key] for r in runs], fmt)

    def errors(part: str) -> str:
        count = sum(r[part]["errors"] for r in runs)
        kinds = sorted({kind for r in runs for kind in r[part]["error_kinds"]})
        return f"{count} errors" + (f" ({'; '.join(kinds)})" if kinds else "")

    not_cancelled = sorted({s for r in runs for s in r["cancel"]["left"]})
    left = f" (left: {', '.join(not_cancelled)})" if not_cancelled else ""
    idle_cpu = [r["idle_cpu"] for r in runs]

    def cpu(key: str) -> float:
        return statistics.median(r["working"][key] for r in runs)

    working_per_ended = [r["working"]["rate"] / r["ended"]["rate"] for r in runs]
    return (
        f"9 MCP tasks ({WIRE} wire, raw HTTP POSTs, one kept-alive connection per client), median (min-max) of"
        f" {RUNS} runs of {samples:,} each: create (tools/call slow_compute {CREATE_SECONDS} s, resultType task)"
        f" p50 {spread('create50')} ms p99 {spread('create99')} ms | first tasks/get p50 {spread('first50')} ms"
        f" p99 {spread('first99')} ms | create + first get p50 {spread('both50')} ms p99 {spread('both99')} ms"
        f" | tasks/get alone p50 {spread('get50')} ms p99 {spread('get99')} ms"
        f" | baseline tools/call greet p50 {spread('greet50')} ms p99 {spread('greet99')} ms"
        f" | ratio p50 to greet: create {ratio('create50')}x, create + first get {ratio('both50')}x,"
        f" get {ratio('get50')}x | cancelled {sum(c['cancelled'] for c in round_cancels):,}"
        f"/{sum(c['tasks'] for c in round_cancels):,} ({sum(c['errors'] for c in round_cancels)} errors)"
        f" || {tasks:,} working tasks, created by {CLIENTS} clients at {across('create', 'rate', ',.0f')} tasks/s"
        f" ({errors('create')}); server CPU with them and no request {median_spread(idle_cpu, '.2f')} cores"
        f" | {CLIENTS} clients each polling a quarter with tasks/get for {seconds:g} s:"
        f" {across('working', 'rate', ',.0f')} polls/s, p50 {across('working', 'p50')} ms"
        f" p99 {across('working', 'p99')} ms, {errors('working')}"
        f" | CPU in the window, cores: client process {cpu('client_cpu'):.2f}, server {cpu('server_cpu'):.2f}"
        f" | cancelled {sum(r['cancel']['cancelled'] for r in runs):,}/{sum(r['cancel']['tasks'] for r in runs):,}"
        f" within {across('cancel', 'seconds', '.1f')} s of the first tasks/cancel (tasks/cancel p50"
        f" {across('cancel', 'p50')} ms, {errors('cancel')}){left}"
        f" | baseline, the same polls of the cancelled tasks: {across('ended', 'rate', ',.0f')} polls/s,"
        f" p50 {across('ended', 'p50')} ms p99 {across('ended', 'p99')} ms ({errors('ended')})"
        f" | ratio polls/s working/cancelled {median_spread(working_per_ended, '.2f')}"
        f" | server stderr: {len(complaints)} warnings/errors{f' (first: {complaints[0][:160]})' if complaints else ''}"
        f"{'' if alive else ' | THE SERVER EXITED'}"
        f" | load {load_before:.1f}-{load_after:.1f} on {os.cpu_count()} cores"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tracker-bench-9-") as workdir:
        quick, full = (30, 100, 1.0), (300, 1_000, 5.0)
        print(figure_9_tasks(Path(workdir), *(quick if args.quick else full)))
