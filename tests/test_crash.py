"""Crash: a recording process killed with SIGKILL at random points, many times over, on one database.

The recorder prints `pending N` before handing a group of N items to the library and `ack D` after flush()
returned (D = durable_count). The durability point (README, "Buffering and durability") promises: after a kill,
the operation holds exactly the acknowledged items, or those plus the one group whose flush had committed when
the kill came before its `ack` line was written; never a part of a group, never a gap, never a duplicate.
With the default flush interval the library also flushes on its own between acks, so there the promise is a
range: at least every acknowledged item, at most every item handed over, and always a prefix in order.
Afterwards orphan recovery (tracker/reaper.py) marks every killed recorder's operation failed, items kept."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path


from tracker import Settings, Tracker
from tracker.reaper import ORPHAN_ERROR, OWNER_GONE_GRACE_S, recover_orphans
from tracker.testing.env import child_env

from .conftest import PYTHON
from .db_checks import integrity_check

RECORDER = r"""
import random, sys, tracker
rng = random.Random(int(sys.argv[1]))
with tracker.Tracker.open() as t:
    batch = t.start_batch("import", total=0)
    print("ready", batch.id, flush=True)
    n = 0
    while True:
        size = rng.randint(1, 1500)
        sys.stdout.write(f"pending {size}\n")  # one write per line: a kill cannot split it
        sys.stdout.flush()
        for _ in range(size):
            n += 1
            if n % 7 == 0:
                batch.record_failure("bad row", item_id=f"i{n}", row_number=n)
            else:
                batch.record_success(f"i{n}")
        batch.flush()
        sys.stdout.write(f"ack {batch.durable_count}\n")
        sys.stdout.flush()
"""

# Explicit groups only: no time-based flush can happen between acks (groups stay under the 5,000-item bound).
SHORT_LEASE_S = 0.5
EXPLICIT = {"TRACKER_FLUSH_INTERVAL": "1h"}
DEFAULT = {"TRACKER_FLUSH_INTERVAL": "0.25"}


@dataclass
class Kill:
    operation_id: str
    acked: int = 0  # durable_count of the last ack line
    pending_after_ack: int = 0  # items handed over since that ack (the group in flight)
    groups_in_flight: int = 0  # pending lines since the last ack (1 unless the kill came between print and work)
    delay_ms: int = 0


def kill_one(db: str, seed: int, env: dict[str, str], rng: random.Random) -> Kill:
    """Start a recorder, let it run 50-400 ms after it is ready, SIGKILL it, and read what it acknowledged."""
    process = subprocess.Popen(
        [PYTHON, "-c", RECORDER, str(seed)], env=child_env(db, **env),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None
    first = process.stdout.readline().split()
    assert first and first[0] == "ready", (first, process.stderr.read() if process.poll() is not None else "")
    kill = Kill(operation_id=first[1], delay_ms=rng.randint(50, 400))
    time.sleep(kill.delay_ms / 1000)
    process.send_signal(signal.SIGKILL)
    # Read through the same buffered file as the first line (communicate() would skip what it buffered).
    out = process.stdout.read()
    err = process.stderr.read() if process.stderr is not None else ""
    assert process.wait(timeout=30) == -signal.SIGKILL, err
    lines = out.split("\n")
    for line in lines[:-1]:  # the text after the last newline is a line the kill cut short: never acknowledged
        word, _, number = line.partition(" ")
        if word == "pending":
            kill.pending_after_ack += int(number)
            kill.groups_in_flight += 1
        elif word == "ack":
            assert int(number) == kill.acked + kill.pending_after_ack, line
            kill.acked, kill.pending_after_ack, kill.groups_in_flight = int(number), 0, 0
    return kill


def kill_many(db: str, count: int, env: dict[str, str], lanes: int = 2) -> list[Kill]:
    """`count` kills, `lanes` recorders at a time (so a kill may also land while another process holds the lock)."""
    kills: list[Kill] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    master = random.Random(int.from_bytes(os.urandom(4), "big"))
    seeds = [master.randrange(2**31) for _ in range(count)]

    def lane(index: int) -> None:
        rng = random.Random(seeds[index])
        for seed in seeds[index::lanes]:
            try:
                kill = kill_one(db, seed, env, rng)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return
            with lock:
                kills.append(kill)

    threads = [threading.Thread(target=lane, args=(n,)) for n in range(lanes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    assert len(kills) == count
    return kills


def recorded(tracker: Tracker, kill: Kill) -> tuple[int, list[str]]:
    """(the operation's counters total, its item ids in completion order), after checking counters == rows."""
    record = tracker.get(kill.operation_id)
    assert record is not None and record.status == "running"
    assert tracker.store.count_items(kill.operation_id) == (record.succeeded_count, record.failed_count)
    items = tracker.items(kill.operation_id, ok=True, limit=1_000_000) + tracker.items(
        kill.operation_id, ok=False, limit=1_000_000
    )
    ids = [item.item_id for item in sorted(items, key=lambda item: item.seq)]
    return record.completed, ids


def assert_prefix(ids: list[str | None]) -> None:
    """Items i1..iK in completion order: no gap, no duplicate, nothing out of order."""
    assert ids == [f"i{n}" for n in range(1, len(ids) + 1)]


def check_exact(tracker: Tracker, kills: list[Kill]) -> dict[str, int]:
    outcomes = {"acked": 0, "acked_plus_group": 0}
    for kill in kills:
        count, ids = recorded(tracker, kill)
        assert_prefix(ids)
        assert kill.groups_in_flight <= 1, kill
        if count == kill.acked:
            outcomes["acked"] += 1
        else:
            assert count == kill.acked + kill.pending_after_ack, (count, kill)
            outcomes["acked_plus_group"] += 1
    return outcomes


def check_range(tracker: Tracker, kills: list[Kill]) -> None:
    for kill in kills:
        count, ids = recorded(tracker, kill)
        assert_prefix(ids)
        assert kill.acked <= count <= kill.acked + kill.pending_after_ack, (count, kill)


def recover_all(tracker: Tracker, kills: list[Kill], last_kill: float) -> None:
    """Orphan recovery fails every killed recorder's operation, keeps its items, and leaves nothing running."""
    counts = {kill.operation_id: tracker.store.count_items(kill.operation_id) for kill in kills}
    # A dead pid + a heartbeat quiet for the grace: the shorter of the lease and OWNER_GONE_GRACE_S. Every recorder
    # ran on this host (judged by its pid), so a short lease only shortens the wait.
    grace_s = min(SHORT_LEASE_S, OWNER_GONE_GRACE_S)
    time.sleep(max(0.0, last_kill + grace_s + 0.2 - time.monotonic()))
    assert recover_orphans(tracker.engine, SHORT_LEASE_S) == len(kills)
    assert tracker.list(status="running", limit=100) == []
    for kill in kills:
        record = tracker.get(kill.operation_id)
        assert (record.status, record.error) == ("failed", ORPHAN_ERROR)
        assert tracker.store.count_items(kill.operation_id) == counts[kill.operation_id]


def test_sigkill_while_recording_loses_nothing_acknowledged(tmp_path: Path) -> None:
    db = str(tmp_path / "tracker.db")
    with Tracker(Settings.from_env({}, db=db)):
        pass  # migrated once up front, so every kill lands in recording, not in the first migration
    kills = kill_many(db, 20, EXPLICIT) + kill_many(db, 4, DEFAULT)
    last_kill = time.monotonic()
    assert integrity_check(db) == "ok"
    with Tracker(Settings.from_env({}, db=db)) as tracker:
        outcomes = check_exact(tracker, kills[:20])
        check_range(tracker, kills[20:])
        assert sum(kill.acked for kill in kills) > 0, "no recorder got as far as an acknowledged flush"
        recover_all(tracker, kills, last_kill)
    assert integrity_check(db) == "ok"
    print(f"\n20 explicit kills: {outcomes}; delays {sorted(k.delay_ms for k in kills)}")


def test_sigkill_while_recording_on_postgresql(postgres_server, tmp_path: Path) -> None:  # noqa: ANN001
    db = postgres_server.create_database(f"crash_{os.getpid()}_{time.monotonic_ns()}")
    with Tracker(Settings.from_env({}, db=db)):
        pass
    kills = kill_many(db, 4, EXPLICIT) + kill_many(db, 2, DEFAULT)
    last_kill = time.monotonic()
    with Tracker(Settings.from_env({}, db=db)) as tracker:
        check_exact(tracker, kills[:4])
        check_range(tracker, kills[4:])
        recover_all(tracker, kills, last_kill)
