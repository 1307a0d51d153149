"""A fake BitScale Grid API on 127.0.0.1, for tests and the demo. Standard library only.

    python -m tracker.testing.fake_upstream [--port 0] [--key KEY] [--run-seconds 1.0[,3.0]] [--sync-window 120]
                                            [--failure-rate 0] [--run-failure-rate 0] [--rate-limit 5] [--latency 0]

Prints one JSON line on stdout when ready: {"base_url": ..., "port": ..., "pid": ...}. Serves, under /api/v1:
  POST /grids/{grid_id}/run       {"mode", "inputs", "output_columns"?, "source_id"?}  (any grid id runs)
  GET  /run/status/{request_id}
  GET  /workspace                 {"id", "name", "plan": {"name", "credits_included", "billing_interval"},
                                   "credits": {"total", "used", "remaining"}, "members": {"total", "owners",
                                   "admins", "editors"}}  (credits used: one per run)
  GET  /grids?search=&page=&limit=  {"grids": [GRID without columns/settings/sources, plus "column_count"],
                                   "page", "limit", "total"}: search is a case-insensitive substring of the name,
                                   page 1-based (default 1), limit 1-100 (default 20); else 422
  GET  /grids/{grid_id}           GRID, or 404 for a grid it does not know (GRIDS: g1, g2, g3, demo-grid)
where GRID is {"id", "name", "description", "row_count", "created_at", "updated_at", "settings": {"auto_run",
"auto_dedupe", "visibility", "dedupe_column_id"}, "columns": [{"id", "name", "type", "is_input", "label"
(inputs only: the key of run inputs), "dependencies" (outputs only)}], "sources": [{"id", "name", "type"}]}.
The output columns are those a run answers (enriched, score), so their ids work as output_columns.
Every endpoint above checks X-API-KEY and shares one rate limit.
and, for the test that drives it (no key needed, loopback only):
  GET  /_fake/stats   request counts, 429s, the busiest one-second window, submissions per distinct input
                      (?times=1 adds every arrival time)
  POST /_fake/config  change any option below at runtime (JSON object)
  POST /_fake/reset   forget runs and statistics

Each API request, in order: key checked (401), rate limit checked (429 with Retry-After when more than
`rate_limit` requests were accepted in the last second; refused requests do not count), a failure injected
with probability `failure_rate` (HTTP `failure_status`, nothing done), then `latency` seconds of delay.
A run lasts `run_seconds` (a range picks uniformly) and fails with probability `run_failure_rate`.
`post_hang_s` > 0 makes a POST create its run and then stall that long before answering (a lost answer);
`echo_key` makes failed runs repeat the caller's key in their error, the workspace carry it as "api_key" and
grid descriptions mention it (a careless upstream)."""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

PREFIX = "/api/v1"
RUN_PATH = re.compile(r"^/grids/([^/]+)/run$")
STATUS_PATH = re.compile(r"^/run/status/([^/]+)$")
GRID_PATH = re.compile(r"^/grids/([^/]+)$")
DEFAULT_OUTPUT_COLUMNS = ["enriched", "score"]
CREDITS_INCLUDED = 10_000
# The grids GET /grids and GET /grids/{id} know: (id, name, description, input labels). The tests' grids are here.
GRIDS = [
    ("g1", "Lead enrichment", "work email in, company and role out", ["email"]),
    ("g2", "Lead scoring", "scores a lead by its email", ["email"]),
    ("g3", "Company research", "a company's size and industry from its name and website", ["company_name", "website"]),
    ("demo-grid", "Demo: people and companies", "the grid `tracker demo` runs", ["email", "company"]),
]
CREATED_AT = "2026-01-05T09:00:00Z"


def parse_range(text: str) -> tuple[float, float]:
    low, _, high = str(text).partition(",")
    return float(low), float(high or low)


class FakeUpstream:
    """State shared by the handler threads; every mutation under one lock."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = dict(options)
        self.lock = threading.Lock()
        self.rng = random.Random(options.get("seed"))
        self.reset()

    def reset(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}
        self.accepted: deque[float] = deque()  # accepted request times within the last second
        self.accepted_all: list[float] = []
        self.arrivals: list[float] = []
        self.counts: Counter[str] = Counter()
        self.submissions: Counter[str] = Counter()
        self.runs_per_grid: Counter[str] = Counter()

    def admit(self, now: float) -> tuple[str, float]:
        """('ok'|'rate_limited'|'fail', retry_after) for one API request arriving now."""
        with self.lock:
            self.arrivals.append(now)
            self.counts["requests"] += 1
            limit = self.options["rate_limit"]
            while self.accepted and self.accepted[0] <= now - 1.0:
                self.accepted.popleft()
            if limit and len(self.accepted) >= limit:
                self.counts["rate_limited"] += 1
                return "rate_limited", max(0.0, self.accepted[0] + 1.0 - now)
            self.accepted.append(now)
            self.accepted_all.append(now)
            if self.rng.random() < self.options["failure_rate"]:
                self.counts["failures_injected"] += 1
                return "fail", 0.0
            return "ok", 0.0

    def create_run(self, grid_id: str, body: dict[str, Any], echo: str = "") -> dict[str, Any]:
        low, high = parse_range(self.options["run_seconds"])
        with self.lock:
            request_id = str(uuid.uuid4())
            run = {
                "request_id": request_id,
                "grid_id": grid_id,
                "mode": body.get("mode", "sync"),
                "inputs": body.get("inputs") or {},
                "output_columns": body.get("output_columns") or DEFAULT_OUTPUT_COLUMNS,
                "created": time.time(),
                "duration": self.rng.uniform(low, high),
                "fails": self.rng.random() < self.options["run_failure_rate"],
                "echo": echo,  # a careless upstream repeats the caller's key in its error text
            }
            self.runs[request_id] = run
            self.counts["runs"] += 1
            self.submissions[input_key(grid_id, run["inputs"])] += 1
            self.runs_per_grid[grid_id] += 1
            return run

    def workspace(self, echo: str = "") -> dict[str, Any]:
        with self.lock:
            used = self.counts["runs"]
        answer: dict[str, Any] = {
            "id": "ws-fake-0001",
            "name": "Fake workspace",
            "plan": {"name": "Growth", "credits_included": CREDITS_INCLUDED, "billing_interval": "month"},
            "credits": {"total": CREDITS_INCLUDED, "used": used, "remaining": max(0, CREDITS_INCLUDED - used)},
            "members": {"total": 3, "owners": 1, "admins": 1, "editors": 1},
        }
        if echo:
            answer["api_key"] = echo
        return answer

    def grid(self, grid_id: str, echo: str = "") -> dict[str, Any] | None:
        for known, name, description, inputs in GRIDS:
            if known == grid_id:
                break
        else:
            return None
        columns: list[dict[str, Any]] = [
            {"id": f"col-{label}", "name": label.replace("_", " ").title(), "type": "text", "is_input": True,
             "label": label}
            for label in inputs
        ]
        columns += [
            {"id": "enriched", "name": "Enriched", "type": "enrichment", "is_input": False,
             "dependencies": [f"col-{label}" for label in inputs]},
            {"id": "score", "name": "Score", "type": "formula", "is_input": False, "dependencies": ["enriched"]},
        ]
        with self.lock:
            rows = self.runs_per_grid[grid_id]
        return {
            "id": grid_id,
            "name": name,
            "description": description + (f" (key {echo})" if echo else ""),
            "row_count": rows,
            "created_at": CREATED_AT,
            "updated_at": CREATED_AT,
            "settings": {"auto_run": True, "auto_dedupe": False, "visibility": "workspace", "dedupe_column_id": None},
            "columns": columns,
            "sources": [{"id": f"src-{grid_id}-api", "name": "BitScale API", "type": "bitscale_api"}],
        }

    def grid_page(self, query: dict[str, list[str]], echo: str = "") -> dict[str, Any] | str:
        """A page of GET /grids, or the 422 error text."""
        try:
            page = int(query.get("page", ["1"])[-1])
            limit = int(query.get("limit", ["20"])[-1])
        except ValueError:
            return "page and limit must be integers"
        if page < 1 or not 1 <= limit <= 100:
            return "page must be at least 1 and limit from 1 to 100"
        search = query.get("search", [""])[-1].lower()
        found = [grid_id for grid_id, name, _, _ in GRIDS if search in name.lower()]
        grids = []
        for grid_id in found[(page - 1) * limit:page * limit]:
            details = self.grid(grid_id, echo) or {}
            summary = {k: v for k, v in details.items() if k not in ("columns", "settings", "sources")}
            grids.append({**summary, "column_count": len(details["columns"])})
        return {"grids": grids, "page": page, "limit": limit, "total": len(found)}

    def stats(self, with_times: bool = False) -> dict[str, Any]:
        with self.lock:
            per_input = self.submissions
            return {
                **{k: self.counts[k] for k in ("requests", "rate_limited", "failures_injected", "runs", "posts", "gets", "reads")},
                "distinct_inputs": len(per_input),
                "max_submissions_per_input": max(per_input.values(), default=0),
                "submissions_per_input": dict(per_input),
                "max_accepted_in_any_second": busiest_second(self.accepted_all),
                "max_arrivals_in_any_second": busiest_second(self.arrivals),
                "first_request_at": self.arrivals[0] if self.arrivals else None,
                "last_request_at": self.arrivals[-1] if self.arrivals else None,
                "options": self.options,
                **({"arrival_times": list(self.arrivals), "accepted_times": list(self.accepted_all)} if with_times else {}),
            }


def input_key(grid_id: str, inputs: Any) -> str:
    return json.dumps({"grid_id": grid_id, "inputs": inputs}, sort_keys=True, separators=(",", ":"))


def busiest_second(times: list[float]) -> int:
    """The most requests inside any half-open one-second window (t - 1, t]."""
    best, start = 0, 0
    ordered = sorted(times)
    for end, t in enumerate(ordered):
        while ordered[start] <= t - 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


def run_view(run: dict[str, Any], now: float, with_request_id: bool = True) -> dict[str, Any]:
    done = now - run["created"] >= run["duration"]
    answer: dict[str, Any] = {"mode": run["mode"], "grid_id": run["grid_id"]}
    if not done:
        answer["status"] = "running"
    elif run["fails"]:
        answer["status"] = "failed"
        answer["error"] = "enrichment provider returned no data" + (f" (key {run['echo']})" if run.get("echo") else "")
    else:
        answer["status"] = "completed"
        text = "|".join(f"{k}={v}" for k, v in sorted(run["inputs"].items()))
        values = {"enriched": f"{run['grid_id']}:{text}", "score": str(len(text))}
        answer["outputs"] = {
            col: {"value": values.get(col, f"{col}:{text}"), "name": col.replace("_", " ").title()}
            for col in run["output_columns"]
        }
    if with_request_id:
        answer["request_id"] = run["request_id"]
    return answer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms delayed-ACK stalls
    server: "Server"

    def log_message(self, fmt: str, *args: Any) -> None:
        if self.server.fake.options.get("verbose"):
            sys.stderr.write("fake_upstream: " + fmt % args + "\n")

    def _send(self, code: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw or b"null")
        except ValueError:
            return None

    def do_GET(self) -> None:  # noqa: N802
        fake = self.server.fake
        if self.path in ("/_fake/stats", "/_fake/stats?times=1"):
            return self._send(200, fake.stats(with_times=self.path.endswith("times=1")))
        url = urlsplit(self.path)
        path = url.path.removeprefix(PREFIX)
        if path in ("/workspace", "/grids") or GRID_PATH.match(path):
            return self._read(path, parse_qs(url.query))
        match = STATUS_PATH.match(path)
        if not match:
            return self._send(404, {"error": "no such endpoint"})
        if not self._admitted():
            return
        with fake.lock:
            fake.counts["gets"] += 1
            run = fake.runs.get(match.group(1))
        if run is None:
            return self._send(404, {"error": f"request {match.group(1)} not found"})
        self._send(200, run_view(run, time.time()))

    def _read(self, path: str, query: dict[str, list[str]]) -> None:
        """GET /workspace, /grids and /grids/{grid_id}."""
        fake = self.server.fake
        if not self._admitted():
            return
        with fake.lock:
            fake.counts["reads"] += 1
        echo = self.headers.get("X-API-KEY", "") if fake.options["echo_key"] else ""
        if path == "/workspace":
            return self._send(200, fake.workspace(echo))
        if path == "/grids":
            page = fake.grid_page(query, echo)
            return self._send(422, {"error": page}) if isinstance(page, str) else self._send(200, page)
        grid_id = unquote(path.removeprefix("/grids/"))
        grid = fake.grid(grid_id, echo)
        if grid is None:
            return self._send(404, {"error": "grid not found"})
        self._send(200, grid)

    def do_POST(self) -> None:  # noqa: N802
        fake = self.server.fake
        body = self._body()
        if self.path == "/_fake/reset":
            with fake.lock:
                fake.reset()
            return self._send(200, {"ok": True})
        if self.path == "/_fake/config":
            if not isinstance(body, dict) or not set(body) <= set(fake.options):
                return self._send(400, {"error": f"options are {sorted(fake.options)}"})
            with fake.lock:
                fake.options.update(body)
            return self._send(200, fake.options)
        match = RUN_PATH.match(self.path.removeprefix(PREFIX))
        if not match:
            return self._send(404, {"error": "no such endpoint"})
        if not self._admitted():
            return
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), dict) or not body["inputs"]:
            return self._send(422, {"error": "inputs must be a non-empty object"})
        if body.get("mode", "sync") not in ("sync", "async"):
            return self._send(422, {"error": "mode must be sync or async"})
        with fake.lock:
            fake.counts["posts"] += 1
        echo = self.headers.get("X-API-KEY", "") if fake.options["echo_key"] else ""
        run = fake.create_run(match.group(1), body, echo)
        if fake.options["post_hang_s"] > 0:
            time.sleep(fake.options["post_hang_s"])
        if run["mode"] == "sync":
            time.sleep(min(run["duration"], float(fake.options["sync_window"])))
            view = run_view(run, time.time())
            if view["status"] != "running":
                view.pop("request_id")  # a sync run answered in time carries its outputs, not an id
                return self._send(200, view)
        host = self.headers.get("Host") or "127.0.0.1"
        self._send(
            200,
            {
                "mode": run["mode"],
                "status": "running",
                "request_id": run["request_id"],
                "poll_url": f"http://{host}{PREFIX}/run/status/{run['request_id']}",
            },
        )

    def _admitted(self) -> bool:
        fake = self.server.fake
        if self.headers.get("X-API-KEY") != fake.options["key"]:
            self._send(401, {"error": "invalid or missing X-API-KEY"})
            return False
        verdict, retry_after = fake.admit(time.time())
        if verdict == "rate_limited":
            self._send(429, {"error": "rate limit exceeded"}, {"Retry-After": f"{max(retry_after, 0.05):.2f}"})
            return False
        if verdict == "fail":
            self._send(int(fake.options["failure_status"]), {"error": "injected failure"})
            return False
        if fake.options["latency"]:
            time.sleep(float(fake.options["latency"]))
        return True


class Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeUpstream


class FakeUpstreamProcess:
    """This module in a child process, for tests, benchmarks and the demo. `options` are its command-line flags
    (run_seconds="0.3" -> --run-seconds 0.3; True -> a bare flag). Its stderr (the request log, with verbose=True)
    goes to `stderr` when given."""

    def __init__(self, key: str, stderr: Any = None, **options: object) -> None:
        # Run as a file, not with -m: -m would first import the tracker package (SQLAlchemy, Alembic: about 0.4 s
        # per start, and the tests start one per test) for a module that needs only the standard library.
        # -P keeps this directory off the child's sys.path.
        args = [sys.executable, "-P", str(Path(__file__).resolve()), "--key", key]
        for name, value in options.items():
            flag = f"--{name.replace('_', '-')}"
            args += [flag] if value is True else [flag, str(value)]
        self.key = key
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        ready = json.loads(line) if line.strip() else {}
        if "port" not in ready:
            self.stop()
            raise RuntimeError("the fake upstream did not start")
        self.base_url: str = ready["base_url"]
        self.port: int = ready["port"]

    def call(self, path: str, body: object = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", data=data, timeout=30) as response:
            return json.loads(response.read())

    def stats(self) -> dict[str, Any]:
        return self.call("/_fake/stats")

    def configure(self, **options: object) -> dict[str, Any]:
        return self.call("/_fake/config", options)

    def reset(self) -> None:
        self.call("/_fake/reset", {})

    def env(self) -> dict[str, str]:
        """BITSCALE_* variables pointing a tracker process at this server."""
        return {"BITSCALE_API_BASE": self.base_url, "BITSCALE_API_KEY": self.key}

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--key", default="test-key")
    parser.add_argument("--run-seconds", default="1.0", help="how long a run takes: '1.5' or a range '1,3'")
    parser.add_argument("--sync-window", type=float, default=120.0, help="how long a sync POST waits")
    parser.add_argument("--failure-rate", type=float, default=0.0, help="fraction of requests answered with an error")
    parser.add_argument("--failure-status", type=int, default=503)
    parser.add_argument("--run-failure-rate", type=float, default=0.0, help="fraction of runs that end failed")
    parser.add_argument("--rate-limit", type=int, default=5, help="requests per second per key; 0 turns it off")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every API answer")
    parser.add_argument("--post-hang", type=float, default=0.0, dest="post_hang_s")
    parser.add_argument("--echo-key", action="store_true", help="failed runs repeat the caller's key in their error")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    options = vars(args).copy()
    port = options.pop("port")
    server = Server(("127.0.0.1", port), Handler)  # loopback only, whatever the arguments
    server.fake = FakeUpstream(options)
    actual = server.server_address[1]
    print(json.dumps({"base_url": f"http://127.0.0.1:{actual}{PREFIX}", "port": actual, "pid": os.getpid()}), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    try:
        server.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
