"""Simulated hosts for the multi-host test: each host is a host name of its own (a UTS namespace, `unshare --uts`)
and a clock of its own (libfaketime preloaded with a constant offset), so processes on one machine look like
processes on three machines to tracker: their own `socket.gethostname()`, their own `time.time()`, one shared
PID space (which is what a pid check on "another host" must never rely on).

`StdioServer` runs `python -m tracker serve` on a host and speaks MCP to it over its stdin/stdout with a small
synchronous JSON-RPC client, so the test holds the real process: its pid to SIGKILL, its stdin to close."""

from __future__ import annotations

import glob
import itertools
import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import pytest

from tracker.testing import env as testing_env

from .conftest import PYTHON, REPO

PROTOCOL_VERSION = "2025-06-18"
# time.sleep for skewed hosts' Python processes (libfaketime 0.9.10 breaks CPython's; see its docstring)
FAKETIME_SITE = Path(__file__).resolve().parent / "faketime_site"


def find_libfaketime() -> str | None:
    candidates = [
        *sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1")),
        "/usr/lib/faketime/libfaketime.so.1",
        "/usr/local/lib/faketime/libfaketime.so.1",
    ]
    return next((path for path in candidates if os.path.exists(path)), None)


def skewed(env: dict[str, str], offset_s: float) -> dict[str, str]:
    """`env` for a Python process whose wall clock reads offset_s off (libfaketime preloaded; monotonic stays real).
    Preloaded directly rather than through the `faketime` wrapper: the wrapper names a semaphore after its pid and
    fails when a SIGKILLed predecessor with that pid left one behind."""
    lib = find_libfaketime()
    if lib is None:
        pytest.fail("libfaketime is missing: install Debian's faketime package (.ci/run does)")
    return {
        **env,
        "LD_PRELOAD": lib,
        "FAKETIME": f"{offset_s:+g}s",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # the offset is on the wall clock; monotonic stays real
        "FAKETIME_NO_CACHE": "1",
        "PYTHONPATH": os.pathsep.join([str(FAKETIME_SITE), env.get("PYTHONPATH", "")]),
    }


def host_tool_problems() -> list[str]:
    """What this machine lacks to simulate hosts, one line each (empty when everything is there)."""
    problems = []
    if find_libfaketime() is None:
        problems.append("libfaketime not found: install Debian's faketime package (apt-get install faketime)")
    if shutil.which("unshare") is None:
        problems.append("unshare not found: install util-linux")
    if shutil.which("hostname") is None:
        problems.append("hostname not found: install Debian's hostname package")
    if not problems and unshare_prefix() is None:
        problems.append(
            "unshare --uts is not permitted here (needs root, or user namespaces for unshare --user --map-root-user)"
        )
    return problems


_prefix_cache: list[list[str] | None] = []


def unshare_prefix() -> list[str] | None:
    """The unshare command line that gives a child its own host name here: plain --uts as root, else inside a user
    namespace. None when neither is allowed."""
    if not _prefix_cache:
        found = None
        for prefix in (["unshare", "--uts"], ["unshare", "--user", "--map-root-user", "--uts"]):
            probe = subprocess.run(
                [*prefix, "sh", "-c", "hostname tracker-probe && hostname"], capture_output=True, text=True, timeout=30
            )
            if probe.returncode == 0 and probe.stdout.strip() == "tracker-probe":
                found = prefix
                break
        _prefix_cache.append(found)
    return _prefix_cache[0]


@dataclass(frozen=True)
class Host:
    """A simulated machine: its host name, how far its clock is from the real one, the database URL its processes
    use (through a proxy for a host with a bad network)."""

    name: str
    skew_s: float
    db_url: str
    env: dict[str, str] = field(default_factory=dict)

    def argv(self, command: Sequence[str]) -> list[str]:
        """`command` run on this host: own UTS namespace with this host name, then exec (the pid stays the same:
        the pid the test holds is the process tracker sees)."""
        prefix = unshare_prefix()
        assert prefix is not None, "unshare --uts is not available (see host_tool_problems)"
        return [*prefix, "sh", "-c", 'hostname "$0" && exec "$@"', self.name, *command]

    def child_env(self, **extra: str) -> dict[str, str]:
        env = testing_env.child_env(self.db_url, **self.env, **extra)
        env.pop("FAKETIME", None)
        return skewed(env, self.skew_s) if self.skew_s else env

    def popen(self, command: Sequence[str], log: Path | None = None, **kwargs: Any) -> subprocess.Popen:
        stderr = open(log, "a") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
        try:
            return subprocess.Popen(
                self.argv(command), env=self.child_env(), cwd=str(REPO), stderr=stderr, **kwargs
            )
        finally:
            if log is not None:
                stderr.close()

    def probe(self) -> dict[str, Any]:
        """What a Python process on this host sees: its clock, its host name, its pid against the one we hold, and
        whether its sleeps and timed waits last what they should."""
        code = (
            "import json, os, socket, threading, time; now = time.time(); t = time.monotonic(); time.sleep(0.2);"
            " threading.Event().wait(0.2); waited = time.monotonic() - t;"
            " print(json.dumps([now, socket.gethostname(), os.getpid(), waited]))"
        )
        before = time.time()
        child = self.popen([PYTHON, "-c", code], stdout=subprocess.PIPE, text=True)
        out, _ = child.communicate(timeout=60)
        after = time.time()
        if child.returncode != 0 or not out.strip():
            raise RuntimeError(f"a Python process on simulated host {self.name} failed (exit {child.returncode})")
        seen, hostname, pid, waited = json.loads(out)
        return {
            "offset_s": seen - (before + after) / 2, "hostname": hostname, "pid_matches": pid == child.pid,
            "waits_ok": 0.35 < waited < 2.0,
        }


class ServerGone(Exception):
    """The server process exited or closed its stdout."""


class StdioServer:
    """`python -m tracker serve` on a host, driven over stdio by a minimal synchronous MCP client."""

    _numbers = itertools.count(1)

    def __init__(self, host: Host, log_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.host = host
        self.number = next(self._numbers)
        self.log = log_dir / f"server-{host.name}-{self.number}.log"
        env = host.child_env(**(extra_env or {}))
        with open(self.log, "a") as stderr:
            self.process = subprocess.Popen(
                host.argv([PYTHON, "-m", "tracker", "serve"]), env=env, cwd=str(REPO),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1,
            )
        self.pid = self.process.pid
        self.started_at = time.monotonic()
        self.ended_at: float | None = None
        self.killed = False
        self._ids = itertools.count(1)
        self._waiting: dict[int, queue.Queue] = {}
        self._lock = threading.Lock()
        self._gone = threading.Event()
        self._writer_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True)
        self._reader.start()

    # -- protocol --

    def _read(self, stream: TextIO) -> None:
        try:
            for line in stream:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if "id" in message and ("result" in message or "error" in message):
                    with self._lock:
                        waiter = self._waiting.pop(message["id"], None)
                    if waiter is not None:
                        waiter.put(message)
        except (OSError, ValueError):
            pass
        finally:
            self._gone.set()
            with self._lock:
                waiters, self._waiting = list(self._waiting.values()), {}
            for waiter in waiters:
                waiter.put(None)

    def _send(self, message: dict[str, Any]) -> None:
        if self._gone.is_set():
            raise ServerGone(f"server {self.host.name}#{self.number} is gone")
        try:
            with self._writer_lock:
                assert self.process.stdin is not None
                self.process.stdin.write(json.dumps(message) + "\n")
                self.process.stdin.flush()
        except (OSError, ValueError) as exc:
            raise ServerGone(f"server {self.host.name}#{self.number}: {exc}") from None

    def request(self, method: str, params: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
        number = next(self._ids)
        waiter: queue.Queue = queue.Queue()
        with self._lock:
            self._waiting[number] = waiter
        if self._gone.is_set():
            raise ServerGone(f"server {self.host.name}#{self.number} is gone")
        self._send({"jsonrpc": "2.0", "id": number, "method": method, "params": params})
        try:
            answer = waiter.get(timeout=timeout_s)
        except queue.Empty:
            with self._lock:
                self._waiting.pop(number, None)
            raise TimeoutError(f"{method} to server {self.host.name}#{self.number}: no answer in {timeout_s}s") from None
        if answer is None:
            raise ServerGone(f"server {self.host.name}#{self.number} exited during {method}")
        if "error" in answer:
            raise RuntimeError(f"{method}: JSON-RPC error {answer['error']}")
        return answer["result"]

    def initialize(self, timeout_s: float = 60.0) -> None:
        self.request(
            "initialize",
            {"protocolVersion": PROTOCOL_VERSION, "capabilities": {}, "clientInfo": {"name": "multihost-test", "version": "1"}},
            timeout_s,
        )
        self._send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def call_tool(self, name: str, arguments: dict[str, Any], timeout_s: float = 30.0) -> tuple[bool, Any]:
        """(is_error, the error text or the structured answer)."""
        result = self.request("tools/call", {"name": name, "arguments": arguments}, timeout_s)
        if result.get("isError"):
            return True, (result.get("content") or [{}])[0].get("text", "")
        return False, result.get("structuredContent")

    # -- the process --

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, the way a machine loses a process: no cleanup of any kind."""
        self.killed = True
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)
        self.ended_at = time.monotonic()

    def stop(self, timeout_s: float = 15.0) -> None:
        """A clean shutdown: the client closes stdin and the server exits on its own."""
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.close()
            except OSError:
                pass
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.ended_at is None:
            self.ended_at = time.monotonic()
        for stream in (self.process.stdin, self.process.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
