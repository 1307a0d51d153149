"""The remote-runs parts without a network: the Upstream contract on both implementations, and batches, polls and
adoption driven through MemoryUpstream with tick(now) at fixed times, on a real SQLite file."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import timedelta
from typing import Any

import httpx
import pytest

from tracker import Settings
from tracker.db import open_engine
from tracker.errors import UpstreamError
from tracker.models import COMPLETED, FAILED, RUNNING
from tracker.remote import MemoryUpstream, RunRequest, RunsService
from tracker.remote.answers import NOT_SENT
from tracker.remote.http import HttpUpstream
from tracker.remote.memory import MemoryRun

from .reap_helpers import set_times


def grid_api() -> httpx.MockTransport:
    """The grid API's two endpoints as CONTRACTS.md section 2 describes them: a run is running until polled once."""
    runs: dict[str, dict[str, Any]] = {}

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            body = json.loads(request.content)
            request_id = f"http-{len(runs) + 1}"
            outputs = {k: {"value": v, "name": k} for k, v in body["inputs"].items()}
            runs[request_id] = {"mode": body["mode"], "status": "completed", "outputs": outputs}
            return httpx.Response(200, json={"mode": body["mode"], "status": "running", "request_id": request_id})
        request_id = request.url.path.rsplit("/", 1)[-1]
        if request_id not in runs:
            return httpx.Response(404, json={"error": "not found"})
        return httpx.Response(200, json=runs[request_id])

    return httpx.MockTransport(handle)


@pytest.fixture(params=["memory", "http"])
def upstream(request: pytest.FixtureRequest):
    if request.param == "memory":
        return MemoryUpstream(polls_to_finish=1)
    return HttpUpstream("http://127.0.0.1:9/api/v1", "k", transport=grid_api())


class TestUpstreamContract:
    """What every Upstream does (upstream.py's docstrings), for the HTTP client and the in-memory one alike."""

    def test_a_submitted_run_is_running_then_completed(self, upstream) -> None:  # noqa: ANN001
        async def scenario() -> tuple[dict, dict | None, dict | None]:
            slot = await upstream.reserve()
            assert upstream.on_time(slot) and await upstream.queue_s() == 0.0
            started = await upstream.submit_run(RunRequest("g1", {"email": "a@x.io"}, "async"), slot)
            done = await upstream.run_status(started["request_id"])
            missing = await upstream.run_status("never-submitted")
            await upstream.aclose()
            return started, done, missing

        started, done, missing = asyncio.run(scenario())
        assert started["status"] == "running" and started["request_id"]
        assert done is not None and done["status"] == "completed"
        assert done["outputs"]["email"]["value"] == "a@x.io"
        assert missing is None


def _service(settings: Settings, upstream: MemoryUpstream, **changes: Any) -> RunsService:
    settings = replace(settings, **{"upstream_key": "", "poll_interval_s": 1.0, **changes})
    return RunsService(settings, open_engine(settings), upstream)


def test_a_batch_through_the_memory_upstream_ends_with_exact_counts(settings: Settings) -> None:
    upstream = MemoryUpstream(polls_to_finish=2)

    async def scenario() -> tuple[Any, Any]:
        runs = _service(settings, upstream, poll_interval_s=0.05)
        await runs.start()
        try:
            started = await runs.run_grid_batch("g1", [{"n": str(n)} for n in range(1, 8)], concurrency=3)
            for _ in range(400):
                batch = runs.store.get(started["batch_operation_id"])
                if batch.is_terminal:
                    break
                await asyncio.sleep(0.02)
            return batch, runs.store.children(batch.id)
        finally:
            await runs.aclose()

    batch, children = asyncio.run(scenario())
    assert batch.status == COMPLETED and (batch.succeeded_count, batch.failed_count, batch.total) == (7, 0, 7)
    assert sorted(c.row_number for c in children) == list(range(1, 8))
    assert sorted(r.inputs["n"] for r in upstream.submitted) == [str(n) for n in range(1, 8)]  # each row once
    assert upstream.closed


def test_poll_tick_at_a_fixed_time_polls_only_what_is_due(settings: Settings) -> None:
    upstream = MemoryUpstream(polls_to_finish=5)

    async def scenario() -> tuple[int, int, int, list[str]]:
        runs = _service(settings, upstream)
        try:
            first = await runs.run_grid("g1", {"n": "1"}, mode="async")
            record = runs.store.get(first["operation_id"])
            polled = record.last_polled_at  # submission counts as the first poll
            early = await runs.poller.tick(now=polled + timedelta(seconds=0.5))  # within the interval: not due
            due = await runs.poller.tick(now=polled + timedelta(seconds=1.5))
            again = await runs.poller.tick()  # by the database's clock it was just polled
            return early, due, again, list(upstream.polled)
        finally:
            await runs.aclose()

    early, due, again, polled = asyncio.run(scenario())
    assert (early, due, again) == (0, 1, 0)
    assert polled == ["mem-1"]


def test_adopter_tick_takes_over_a_batch_only_once_its_owner_is_gone(settings: Settings) -> None:
    upstream = MemoryUpstream(polls_to_finish=1)

    async def scenario() -> tuple[list[str], list[str], Any]:
        runs = _service(settings, upstream, heartbeat_lease_s=30.0)
        try:
            batch = runs.store.create_batch(
                {
                    "id": "batch_grid_run_orphan", "kind": "batch", "operation_type": "grid_run", "total": 2,
                    "inputs": {"grid_id": "g1", "mode": "async", "row_count": 2, "concurrency": 1},
                    "grid_id": "g1", "mode": "async", "resumable": True,
                },
                [{"n": "1"}, {"n": "2"}],
            )
            now = runs.store.now()
            set_times(runs.engine, batch.id, owner_host="another-host", owner_pid=1, heartbeat_at=now)
            fresh = await runs.adopter.tick(now=now + timedelta(seconds=10))  # its lease still runs
            late = await runs.adopter.tick(now=now + timedelta(seconds=31))
            for _ in range(200):
                if runs.store.get(batch.id).status != RUNNING:
                    break
                await runs.poller.tick(now=runs.store.now() + timedelta(seconds=5))
                await asyncio.sleep(0.02)
            return fresh, late, runs.store.get(batch.id)
        finally:
            await runs.aclose()

    fresh, late, batch = asyncio.run(scenario())
    assert fresh == [] and late == ["batch_grid_run_orphan"]
    assert batch.status == COMPLETED and batch.succeeded_count == 2


def test_an_upstream_refusal_fails_only_that_row(settings: Settings) -> None:
    upstream = MemoryUpstream(polls_to_finish=1)
    upstream.fail_next = [UpstreamError("upstream answered POST with HTTP 400: bad input", status_code=400)]

    async def scenario() -> Any:
        runs = _service(settings, upstream, poll_interval_s=0.05)
        await runs.start()
        try:
            started = await runs.run_grid_batch("g1", [{"n": "1"}, {"n": "2"}], concurrency=1)
            for _ in range(400):
                batch = runs.store.get(started["batch_operation_id"])
                if batch.is_terminal:
                    return batch, runs.store.children(batch.id)
                await asyncio.sleep(0.02)
            raise AssertionError("the batch did not end")
        finally:
            await runs.aclose()

    batch, children = asyncio.run(scenario())
    assert (batch.succeeded_count, batch.failed_count) == (1, 1)
    failed = [c for c in children if c.status == FAILED]
    assert len(failed) == 1 and "HTTP 400" in (failed[0].error or "")


def test_the_memory_upstream_answers_unknown_ids_with_none() -> None:
    upstream = MemoryUpstream()
    upstream.runs["x"] = MemoryRun(RunRequest("g", {"a": "1"}), "x", polls_left=2)
    assert asyncio.run(upstream.run_status("x"))["status"] == "running"
    assert asyncio.run(upstream.run_status("y")) is None


def test_a_row_stopped_while_waiting_for_a_fresh_slot_says_it_was_never_sent(settings: Settings) -> None:
    """Its row was written, its slot went stale, and the server stopped while it waited for another: nothing was
    sent, so the run says so (not "unknown", which would tell the user the upstream may have billed it)."""

    class LateSlots(MemoryUpstream):
        reserved = 0

        async def reserve(self):  # noqa: ANN202
            LateSlots.reserved += 1
            if LateSlots.reserved > 1:
                await asyncio.Event().wait()  # the fresh slot never comes
            return object()

        def on_time(self, slot) -> bool:  # noqa: ANN001
            return False

    upstream = LateSlots()

    async def scenario() -> Any:
        runs = _service(settings, upstream)
        try:
            batch = runs.store.create_batch(
                {"id": "batch_grid_run_late", "kind": "batch", "operation_type": "grid_run", "total": 1,
                 "inputs": {"grid_id": "g1", "mode": "async", "row_count": 1, "concurrency": 1}},
                [{"n": "1"}],
            )
            submitting = asyncio.create_task(runs.submitter.submit_row(batch.id, RunRequest("g1", {"n": "1"}), 1))
            while LateSlots.reserved < 2:
                await asyncio.sleep(0.01)
            submitting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await submitting
            return runs.store.children(batch.id)
        finally:
            await runs.aclose()

    (child,) = asyncio.run(scenario())
    assert child.status == FAILED and child.error == NOT_SENT
    assert upstream.submitted == []
