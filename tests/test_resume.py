"""Restart: a batch whose server died resumes when a server starts on the database. Rows already submitted are
never submitted again, rows not yet submitted are, a row caught mid-submit is failed as unknown (never resent),
and the batch ends with exact counts. The last test SIGKILLs a real `tracker serve` mid-batch."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from tracker import Settings
from tracker.db import open_engine
from tracker.ids import new_operation_id
from tracker.remote import OPERATION_TYPE, RunsService
from tracker.remote.answers import INTERRUPTED
from tracker.store import Store
from tracker.store.runs import RunStore
from tracker.timeutil import utcnow
from tracker.remote import RunRequest
from tracker.remote.http import HttpUpstream

from .conftest import PYTHON, FakeUpstreamProcess
from .sessions import tracker_session


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def _dead_pid() -> int:
    child = subprocess.Popen([PYTHON, "-c", "pass"])
    child.wait()
    return child.pid


def _key(grid_id: str, inputs: dict) -> str:
    return json.dumps({"grid_id": grid_id, "inputs": inputs}, sort_keys=True, separators=(",", ":"))


def test_a_crashed_batch_resumes_without_resubmitting(upstream_settings: Settings, fake_upstream: FakeUpstreamProcess) -> None:
    """The state a killed server leaves, built row by row, then a new service adopts it."""
    rows = [{"email": f"r{n}@x.io"} for n in range(1, 9)]
    engine = open_engine(upstream_settings)
    store, runs_store = Store(engine), RunStore(engine)
    now = utcnow()
    params = {"grid_id": "g1", "mode": "async", "output_columns": None, "source_id": None, "concurrency": 2, "row_count": 8}
    batch = runs_store.create_batch(
        {
            "id": new_operation_id("batch", OPERATION_TYPE), "kind": "batch", "operation_type": OPERATION_TYPE,
            "total": 8, "started_at": now, "inputs": params, "grid_id": "g1", "mode": "async",
            "owner_host": socket.gethostname(), "owner_pid": _dead_pid(), "resumable": True,
        },
        rows,
    )

    def child(number: int, request_id: str | None = None):
        return runs_store.create_child(
            batch.id,
            {
                "id": new_operation_id("run", OPERATION_TYPE), "kind": "run", "operation_type": OPERATION_TYPE,
                "started_at": now, "inputs": {"inputs": rows[number - 1], "output_columns": None, "source_id": None},
                "grid_id": "g1", "mode": "async", "row_number": number, "request_id": request_id, "resumable": True,
            },
        )

    async def submit_elsewhere(numbers: list[int]) -> list[str]:
        client = HttpUpstream(fake_upstream.base_url, fake_upstream.key)
        try:
            return [(await client.submit_run(RunRequest("g1", rows[n - 1], mode="async")))["request_id"] for n in numbers]
        finally:
            await client.aclose()

    request_ids = asyncio.run(submit_elsewhere([1, 2, 3, 4]))
    for number, request_id in zip([1, 2, 3], request_ids):
        child(number, request_id)  # submitted, request_id stored: to be polled, never resent
    child(4)  # POSTed, killed before the request_id was stored
    child(5)  # row written, killed before the POST left
    done = child(6)
    runs_store.finish(done.id, "completed", utcnow(), {"enriched": {"value": "x", "name": "E"}})  # finished before
    with engine.begin() as conn:  # ...and purged by retention since: only the batch's item remembers row 6
        conn.exec_driver_sql("DELETE FROM operations WHERE id = ?", (done.id,))
    # rows 7 and 8 were never reached

    async def resume():
        runs = RunsService(upstream_settings, engine)
        await runs.start()
        try:
            deadline = time.monotonic() + 30
            while not (record := await asyncio.to_thread(store.get, batch.id)).is_terminal:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            return record
        finally:
            await runs.aclose()

    record = asyncio.run(resume())
    failed = store.items(batch.id, ok=False)
    succeeded = store.items(batch.id, ok=True)
    engine.dispose()
    assert record.status == "completed" and record.owner_pid == os.getpid()
    assert (record.succeeded_count, record.failed_count, record.total) == (6, 2, 8)
    assert sorted((f.row_number, f.error) for f in failed) == [(4, INTERRUPTED), (5, INTERRUPTED)]
    assert len(succeeded) == 6 and set(request_ids[:3]) <= {s.item_id for s in succeeded}
    per_input = fake_upstream.stats()["submissions_per_input"]
    assert [per_input.get(_key("g1", row), 0) for row in rows] == [1, 1, 1, 1, 0, 0, 1, 1]


def test_a_live_owner_keeps_its_batch(upstream_settings: Settings, fake_upstream: FakeUpstreamProcess) -> None:
    """Two services on one database (here: one process): the second does not take the first's running batch."""
    fake_upstream.configure(run_seconds="5")
    settings = replace(upstream_settings, heartbeat_lease_s=2.0)  # heartbeat every 0.5 s

    async def scenario():
        engine = open_engine(settings)
        first, second = RunsService(settings, engine), RunsService(settings, engine)
        await first.start()
        try:
            started = await first.run_grid_batch("g1", [{"n": "1"}, {"n": "2"}])
            await asyncio.sleep(2.0)  # past several heartbeats
            return await second.adopt_orphans(), started["batch_operation_id"] in first.batches.workers
        finally:
            await second.aclose()
            await first.aclose()
            engine.dispose()

    adopted, still_first = asyncio.run(scenario())
    assert adopted == [] and still_first


@pytest.mark.anyio
async def test_sigkill_mid_batch_then_a_new_server_finishes_it(tmp_path: Path, fake_upstream: FakeUpstreamProcess) -> None:
    fake_upstream.configure(run_seconds="0.3,1.0")
    db = tmp_path / "t.db"
    rows = [{"email": f"k{n}@x.io", "company": "acme"} for n in range(1, 13)]
    async with tracker_session(db, fake_upstream, tmp_path / "first.log") as session:
        started = await session.answer("run_grid_batch", grid_id="g1", rows=rows)
        batch_id = started["batch_operation_id"]
        engine = open_engine(Settings.from_env({}, db=str(db)))
        store = Store(engine)
        deadline = time.monotonic() + 30
        while (record := store.get(batch_id)).completed < 1 or fake_upstream.stats()["posts"] < 5:
            assert time.monotonic() < deadline
            await anyio.sleep(0.02)
        os.kill(record.owner_pid, signal.SIGKILL)  # the server process itself, mid-batch
        killed_pid = record.owner_pid
        posts_at_kill = fake_upstream.stats()["posts"]
        with pytest.raises(Exception):  # noqa: B017,PT011 - the session is dead; any transport error will do
            with anyio.fail_after(5):
                await session.call("get_batch_status", batch_operation_id=batch_id)
    at_kill = store.get(batch_id)
    assert at_kill.status == "running" and 0 < at_kill.completed < 12 and posts_at_kill <= 9

    async with tracker_session(db, fake_upstream, tmp_path / "second.log") as session:
        deadline = time.monotonic() + 40
        while (status := await session.answer("get_batch_status", batch_operation_id=batch_id))["operation"][
            "status"
        ] == "running":
            assert time.monotonic() < deadline, status
            await anyio.sleep(0.25)
        operation = status["operation"]
        run = await session.answer("get_run_status", request_id=operation["successful_ids"][0])
    final = store.get(batch_id)
    engine.dispose()

    assert operation["status"] == "completed"
    assert operation["progress"] == {"completed": 12, "total": 12, "percent": 100.0}
    assert len(operation["successful_ids"]) + len(operation["failed_items"]) == 12
    assert final.owner_pid != killed_pid
    # a row caught between its run row and the upstream's answer is failed as unknown, never resent
    assert all(f["error"] == INTERRUPTED for f in operation["failed_items"])
    assert len(operation["failed_items"]) <= 4  # at most one per submitter in flight at the kill
    stats = fake_upstream.stats()
    per_input = [stats["submissions_per_input"].get(_key("g1", row), 0) for row in rows]
    assert max(per_input) == 1  # never submitted twice
    assert stats["posts"] > posts_at_kill  # the new server submitted the rows the old one never reached
    assert per_input.count(1) >= 12 - len(operation["failed_items"])
    assert stats["rate_limited"] == 0 and stats["max_accepted_in_any_second"] <= 5
    assert run["found"] is True and run["status"] == "completed" and run["outputs"]
    print("resume figures:", json.dumps({
        "posts_at_kill": posts_at_kill, "completed_at_kill": at_kill.completed,
        "interrupted": len(operation["failed_items"]), "submissions_per_input_max": max(per_input),
        "max_accepted_in_any_second": stats["max_accepted_in_any_second"],
    }))



def test_a_server_without_an_api_key_leaves_runs_and_batches_alone(
    upstream_settings: Settings, fake_upstream: FakeUpstreamProcess
) -> None:
    """A server started without BITSCALE_API_KEY could only fail a resumed batch's rows: it neither adopts nor
    polls, and reports a running run as stale."""
    fake_upstream.configure(run_seconds="30")
    engine = open_engine(upstream_settings)

    async def first_life():
        runs = RunsService(upstream_settings, engine)
        run = await runs.run_grid("g1", {"n": "1"}, mode="async")
        batch = await runs.run_grid_batch("g1", [{"n": "2"}, {"n": "3"}])
        for task in list(runs.context.tasks):  # a crash before the batch worker ran: nothing marked, nothing sent
            task.cancel()
        return run, batch

    run, batch = asyncio.run(first_life())
    store = Store(engine)
    store.update_running(batch["batch_operation_id"], {"owner_pid": _dead_pid()})
    keyless = replace(upstream_settings, upstream_key="")

    async def keyless_life():
        runs = RunsService(keyless, engine)
        await runs.start()
        try:
            await asyncio.sleep(0.5)
            return await runs.get_run_status(run["request_id"]), await runs.adopt_orphans()
        finally:
            await runs.aclose()

    requests_before = fake_upstream.stats()["requests"]
    status, adopted = asyncio.run(keyless_life())
    after = store.get(batch["batch_operation_id"])
    engine.dispose()
    assert status["status"] == "running" and status["stale"] is True and "BITSCALE_API_KEY" in status["error"]
    assert adopted == [] and after.status == "running" and after.completed == 0
    assert fake_upstream.stats()["requests"] == requests_before
