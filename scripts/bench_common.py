"""Helpers shared by the benchmark figures: raw sqlite3 connections, percentiles and the median (min-max) of runs,
an MCP stdio session against `python -m tracker serve`, and process memory, CPU time and TCP connections from
/proc."""

from __future__ import annotations

import os
import random
import statistics
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tracker.db import sqlite_module  # noqa: E402
from tracker.testing.env import child_env  # noqa: E402


def raw_connection(path: Path):
    """Plain sqlite3 (the same pysqlite3 build tracker uses) with tracker's pragmas."""
    conn = sqlite_module().connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def sample_keys(path: Path, table: str, key: str, count: int, seed: int) -> list[str]:
    """`count` values of `key` from rows of `table` picked uniformly at random by rowid (with repeats allowed, as
    polls are)."""
    conn = sqlite_module().connect(str(path))
    try:
        last = conn.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0]
        rng = random.Random(seed)
        rowids = [rng.randint(1, last) for _ in range(count)]
        wanted = ",".join(map(str, set(rowids)))
        by_rowid = dict(conn.execute(f"SELECT rowid, {key} FROM {table} WHERE rowid IN ({wanted})"))
    finally:
        conn.close()
    return [by_rowid[r] for r in rowids if r in by_rowid]


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile of unsorted samples."""
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median_spread(values: list[float], fmt: str) -> str:
    """'median (min-max)' of the runs' values, each formatted with `fmt`."""
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


@asynccontextmanager
async def mcp_session(
    db: Path | str, env: Mapping[str, str] | None = None, errlog: Path | None = None
) -> AsyncIterator[Any]:
    """A ToolClient (tracker.testing.client) on a fresh `python -m tracker serve` subprocess on `db`."""
    from tracker.testing.client import stdio

    with open(errlog or os.devnull, "a") as log:
        async with stdio(child_env(db, **(env or {})), errlog=log, cwd=REPO) as client:
            yield client


def server_pid(parent: int | None = None) -> int:
    """The pid of this process's `tracker serve` child (the MCP client does not expose it)."""
    parent = os.getpid() if parent is None else parent
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"tracker" in cmdline and b"serve" in cmdline:
            found.append(int(entry.name))
    if len(found) != 1:
        raise RuntimeError(f"expected one tracker serve child process, found {found}")
    return found[0]


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in kB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs); False where not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14 and 15


def tcp_client_ports(server_port: int) -> set[int]:
    """Local ports of this host's IPv4 TCP sockets connected to 127.0.0.1:server_port, in any state (TIME_WAIT
    included, so a connection closed in the last minute still counts): the set difference of two calls is the
    connections opened between them."""
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote = line.split()[1:3]
        if remote == f"0100007F:{server_port:04X}":
            ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports
