"""A library recorder for the multi-host test (tests/test_multihost.py), run as its own process on a simulated
host: `python tests/multihost_recorder.py owner|attacher PLAN.json`.

owner: records its batches one after another (Tracker.start_batch, record_success/record_failure, an explicit
flush() per group, retried on DatabaseUnavailable, finish). A "shared" batch is offered to an attacher on another
host, which records its share into it; the owner finishes once the attacher says it is done. A "handoff" batch
is offered the same way, but the owner never finishes it: it exits, and the attacher records its share slowly
and finishes the batch, so the batch lives on after its owner process is gone.

attacher: takes the offers addressed to its host (Tracker.attach), records its share, finishes handoffs.

Every process appends what it did to its own JSON-lines file: the batches it started or attached to, and for each
the items it recorded whose flush() returned (the acknowledgement), so the test can check that the database
holds exactly the acknowledged items, no more (a retried group applied twice) and no fewer."""

from __future__ import annotations

import json
import os
import random
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from tracker import DatabaseUnavailable, OperationClosed, Tracker

OPERATION_TYPE = "mh_import"
RETRY_FOR_S = 90.0  # a write is retried this long (the lossy host's connections are cut now and then)


class Log:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.retries = 0

    def emit(self, **event: Any) -> None:
        event.update(pid=os.getpid(), host=socket.gethostname(), clock=time.time())
        with self.path.open("a") as out:
            out.write(json.dumps(event) + "\n")


def retrying(log: Log, what: str, fn):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + RETRY_FOR_S
    while True:
        try:
            return fn()
        except DatabaseUnavailable as exc:
            log.retries += 1
            if time.monotonic() > deadline:
                log.emit(event="gave_up", what=what, error=str(exc)[:300])
                raise
            time.sleep(0.2)


def open_tracker(log: Log) -> Tracker:
    return retrying(log, "open", Tracker.open)


def start_batch(tracker: Tracker, log: Log, total: int, inputs: dict[str, Any]):  # noqa: ANN201
    """start_batch, retried; a retry first looks for the batch by its token, since a start whose reply was lost may
    have been applied."""
    deadline = time.monotonic() + RETRY_FOR_S
    while True:
        try:
            return tracker.start_batch(OPERATION_TYPE, total=total, inputs=inputs)
        except DatabaseUnavailable as exc:
            log.retries += 1
            if time.monotonic() > deadline:
                log.emit(event="gave_up", what="start_batch", error=str(exc)[:300])
                raise
            time.sleep(0.2)
        try:
            for record in tracker.list(kind="batch", operation_type=OPERATION_TYPE, limit=100):
                detail = tracker.get(record.id)  # list rows leave the inputs out
                if detail is not None and isinstance(detail.inputs, dict) and detail.inputs.get("token") == inputs["token"]:
                    log.emit(event="start_reply_lost", batch=record.id)
                    return tracker.attach(record.id)
        except DatabaseUnavailable:
            log.retries += 1


def record_items(handle, log: Log, count: int, prefix: str, rng: random.Random, pause: tuple[float, float],
                 group: tuple[int, int]) -> tuple[int, str | None]:  # noqa: ANN001
    """Record `count` items in groups, each flushed explicitly (retried until it returns). Returns (acknowledged
    items, why recording stopped early or None)."""
    acked = 0
    done = 0
    while done < count:
        size = min(rng.randint(*group), count - done)
        try:
            for n in range(done, done + size):
                if n % 7 == 3:
                    handle.record_failure("synthetic failure", item_id=f"{prefix}-{n}", row_number=n + 1)
                else:
                    handle.record_success(f"{prefix}-{n}")
            retrying(log, "flush", handle.flush)
        except OperationClosed as exc:
            return acked, f"closed: {exc}"
        except DatabaseUnavailable as exc:
            return acked, f"gave up: {exc}"
        acked += size
        done += size
        time.sleep(rng.uniform(*pause))
    return acked, None


def finish(tracker: Tracker, handle, log: Log) -> str:  # noqa: ANN001
    """finish(), retried; a finish whose reply was lost was applied: the retry then finds the batch completed."""
    try:
        return retrying(log, "finish", handle.finish).status
    except OperationClosed:
        record = retrying(log, "get", lambda: tracker.get(handle.id))
        return f"closed: {record.status if record else 'gone'} ({record.error if record else ''})"


def owner(plan: dict[str, Any], log: Log) -> None:
    rng = random.Random(plan["seed"])
    tracker = open_tracker(log)
    handoff = Path(plan["handoff_dir"])
    for spec in plan["batches"]:
        key, own, share, kind = spec["key"], spec["own"], spec.get("share", 0), spec["kind"]
        inputs = {"token": f"{key}-{uuid.uuid4().hex}", "key": key, "kind": kind}
        handle = start_batch(tracker, log, own + share, inputs)
        log.emit(event="started", batch=handle.id, key=key, kind=kind, total=own + share, role="owner")
        if kind in ("shared", "handoff"):
            offer = {"batch": handle.id, "key": key, "share": share, "finish": kind == "handoff", "seed": rng.random()}
            path = handoff / f"offer-{key}-to-{spec['attacher']}.json"
            path.with_suffix(".tmp").write_text(json.dumps(offer))
            path.with_suffix(".tmp").rename(path)
        acked, stopped = record_items(handle, log, own, f"{key}-own", rng, (0.05, 0.5), (1, 4))
        log.emit(event="recorded", batch=handle.id, key=key, role="owner", acked=acked, stopped=stopped)
        if stopped is not None or kind == "handoff":
            continue  # a handoff batch is the attacher's to finish; this process goes on, then exits
        if kind == "shared":
            done = handoff / f"done-{key}.json"
            deadline = time.monotonic() + 120
            while not done.exists() and time.monotonic() < deadline:
                time.sleep(0.1)  # idle: only the library's own heartbeat speaks for this process meanwhile
            if not done.exists():
                log.emit(event="attacher_missing", batch=handle.id, key=key)
        log.emit(event="finished", batch=handle.id, key=key, role="owner", status=finish(tracker, handle, log))
    log.emit(event="exit", retries=log.retries)
    tracker.close()


def attacher(plan: dict[str, Any], log: Log) -> None:
    tracker = open_tracker(log)
    handoff = Path(plan["handoff_dir"])
    expected = plan["offers"]
    handled = 0
    deadline = time.monotonic() + plan.get("wait_s", 150)
    while handled < expected and time.monotonic() < deadline:
        offers = sorted(handoff.glob(f"offer-*-to-{plan['host']}.json"))
        if not offers:
            time.sleep(0.1)
            continue
        taken = offers[0].with_suffix(".taken")
        offers[0].rename(taken)
        offer = json.loads(taken.read_text())
        handled += 1
        handle = retrying(log, "attach", lambda: tracker.attach(offer["batch"]))
        log.emit(event="attached", batch=offer["batch"], key=offer["key"], role="attacher")
        rng = random.Random(offer["seed"])
        # A handoff is recorded slowly: pauses longer than the 2 s an owner's host waits for a dead owner's
        # heartbeat to go quiet, so this live process must be what keeps the batch alive. A shared batch's owner
        # sits idle (alive, recording nothing) while this records its share.
        pause = (0.5, 3.0) if offer["finish"] else (0.3, 1.5)
        acked, stopped = record_items(handle, log, offer["share"], f"{offer['key']}-att", rng, pause, (2, 5))
        log.emit(event="recorded", batch=offer["batch"], key=offer["key"], role="attacher", acked=acked, stopped=stopped)
        if offer["finish"] and stopped is None:
            log.emit(event="finished", batch=offer["batch"], key=offer["key"], role="attacher",
                     status=finish(tracker, handle, log))
        (handoff / f"done-{offer['key']}.json").write_text(json.dumps({"acked": acked}))
    if handled < expected:
        log.emit(event="offers_missing", handled=handled, expected=expected)
    log.emit(event="exit", retries=log.retries)
    tracker.close()


def main() -> int:
    role, plan_path = sys.argv[1], Path(sys.argv[2])
    plan = json.loads(plan_path.read_text())
    log = Log(Path(plan["out"]))
    log.emit(event="begin", role=role)
    {"owner": owner, "attacher": attacher}[role](plan, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
