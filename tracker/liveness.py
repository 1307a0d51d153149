"""Is the process that owns (or records into) an operation still alive? The one same-host liveness test, used by
the reaper's orphan recovery and by the batch adopter.

A process is named by its host, its pid and its identity: "<boot id>:<start time in clock ticks since boot>"
(/proc/sys/kernel/random/boot_id and field 22 of /proc/<pid>/stat). Neither moves when the wall clock is stepped,
unlike /proc/stat's btime (derived from the wall clock), so a clock step can never make a live process look like a
later one that reused its pid. A different boot id means the machine rebooted since: the process is gone.

On another host no pid can be checked: there the owner's heartbeat, judged by the database's clock, decides.
holder_alive() is that whole rule, for anything a process holds (an operation it records into, a batch it runs)."""

from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Process:
    """This process as the database records it: owner_host, owner_pid, owner_process."""

    host: str
    pid: int
    identity: str | None


@functools.cache
def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:  # pragma: no cover - not Linux
        return None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start ticks since boot) of a pid, from /proc; None without /proc or when it just exited."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
        # comm (field 2) may hold spaces and parentheses: the fields after the last ')' are plain.
        rest = text[text.rindex(")") + 2 :].split()
        return rest[0], int(rest[19])  # field 3 state, field 22 starttime
    except (OSError, ValueError, IndexError):
        return None


def identity_of(pid: int) -> str | None:
    """The identity of a running pid on this host, or None where /proc or the boot id cannot be read."""
    boot, stat = _boot_id(), _proc_stat(pid)
    if boot is None or stat is None:
        return None
    return f"{boot}:{stat[1]}"


def current() -> Process:
    """This process (computed per call: a fork has another pid and start time)."""
    pid = os.getpid()
    return Process(socket.gethostname(), pid, identity_of(pid))


def alive(pid: int | None, identity: str | None = None) -> bool:
    """Whether the process with this pid (and, when known, this identity) still runs on this host. A zombie counts
    as gone; so does a pid now used by a later process, or one recorded before the last reboot."""
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    stat = _proc_stat(pid)
    if stat is None:
        return True  # no /proc (not Linux), or it exited this instant: trust kill()
    state, start_ticks = stat
    if state in ("Z", "X"):
        return False
    if identity is not None:
        boot, _, ticks = identity.rpartition(":")
        if boot != _boot_id() or ticks != str(start_ticks):
            return False
    return True


def holder_alive(
    host: str | None,
    pid: int | None,
    identity: str | None,
    heartbeat_at: datetime | None,
    now: datetime,
    lease_s: float,
    *,
    here: str | None = None,
    grace_s: float | None = None,
    lease_binds_here: bool = False,
) -> bool:
    """Whether the process (host, pid, identity) that last signed heartbeat_at still holds what it holds, at `now`
    by the database's clock; `here` is this host (default: its name).

    On another host, or with no pid recorded, nothing but the heartbeat can tell: alive while it is at most lease_s
    old. On this host the pid decides (alive()): a live process is never judged by its heartbeat, since it may be
    inside one long call without signing. Two options bend that:
    grace_s: a heartbeat at most this old counts as alive even when the pid is gone (other processes recording into
    the same operation keep it fresh);
    lease_binds_here: a heartbeat older than lease_s means gone here too (a holder whose worker must heartbeat, such
    as a batch's: a live process with a silent worker holds nothing)."""
    if lease_binds_here and (heartbeat_at is None or heartbeat_at < now - timedelta(seconds=lease_s)):
        return False
    if host != (here if here is not None else socket.gethostname()) or pid is None:
        return heartbeat_at is not None and heartbeat_at >= now - timedelta(seconds=lease_s)
    if grace_s is not None and heartbeat_at is not None and heartbeat_at >= now - timedelta(seconds=grace_s):
        return True
    return alive(pid, identity)
