"""A sync run_grid answers within TRACKER_SYNC_WAIT, under a default client's 60 s request timeout: with the
outputs when the upstream finished in time, else "running" with the run's operation_id to poll. Progress
notifications go out while it waits, every answer names the operation_id, and a call given up (cancelled, or
answered at its bound) leaves the POST going and its outcome recorded. The same through the TypeScript client
is in tests/test_ts_client.py (the 65 s run)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from mcp.server.mcpserver import MCPServer

from tracker import Settings, Tracker
from tracker.db import open_engine
from tracker.models import COMPLETED, RUNNING
from tracker.remote import MemoryUpstream, RunsService
from tracker.remote import service as service_module
from tracker.server.run_tools import mount_run_tools, run_lifespan
from tracker.testing.client import in_process


def _service(settings: Settings, upstream: MemoryUpstream, **changes: Any) -> RunsService:
    settings = replace(settings, **{"upstream_key": "", "poll_interval_s": 1.0, **changes})
    return RunsService(settings, open_engine(settings), upstream)


def test_a_sync_run_past_the_bound_answers_running_with_its_operation_id(settings: Settings) -> None:
    upstream = MemoryUpstream(polls_to_finish=0, submit_delay_s=1.0)  # the sync POST answers after 1 s
    runs = _service(settings, upstream, sync_wait_s=0.3)

    async def scenario() -> tuple[dict, int, dict, dict]:
        first = await runs.run_grid("g1", {"email": "a@x.io"}, "sync")
        sent_back = len(upstream.submitted)  # MemoryUpstream counts a POST once it has answered
        meanwhile = await runs.get_run_status(first["operation_id"])
        await asyncio.sleep(1.2)  # the POST, still going after the answer, ends and is recorded
        later = await runs.get_run_status(first["operation_id"])
        await runs.aclose()
        return first, sent_back, meanwhile, later

    first, sent_back, meanwhile, later = asyncio.run(scenario())
    assert first["status"] == RUNNING and first["operation_id"].startswith("run_")
    assert "request_id" not in first and "poll_url" not in first  # the upstream has not answered yet
    assert "operation_id" in first["message"]
    assert sent_back == 0  # answered at its bound, before the POST had answered
    assert meanwhile["status"] == RUNNING and meanwhile["operation_id"] == first["operation_id"]
    assert later["status"] == COMPLETED and later["outputs"]["email"]["value"] == "a@x.io"
    assert len(upstream.submitted) == 1


def test_every_answer_of_run_grid_names_its_operation_id(settings: Settings) -> None:
    upstream = MemoryUpstream(polls_to_finish=0)
    runs = _service(settings, upstream)

    async def scenario() -> tuple[dict, dict]:
        done = await runs.run_grid("g1", {"email": "a@x.io"}, "sync")
        upstream.polls_to_finish = 2
        started = await runs.run_grid("g1", {"email": "b@x.io"}, "async")
        await runs.aclose()
        return done, started

    done, started = asyncio.run(scenario())
    assert done["status"] == COMPLETED and done["operation_id"].startswith("run_") and "request_id" not in done
    assert started["status"] == RUNNING and started["operation_id"].startswith("run_")
    assert started["request_id"].startswith("mem-") and done["operation_id"] != started["operation_id"]


def test_progress_is_reported_while_a_sync_run_waits(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "SYNC_PROGRESS_EVERY_S", 0.1)
    upstream = MemoryUpstream(polls_to_finish=0, submit_delay_s=1.0)
    runs = _service(settings, upstream, sync_wait_s=5.0)
    reports: list[tuple[float, str]] = []

    async def progress(waited: float, message: str) -> None:
        reports.append((waited, message))

    async def scenario() -> dict:
        answer = await runs.run_grid("g1", {"email": "a@x.io"}, "sync", progress=progress)
        await runs.aclose()
        return answer

    answer = asyncio.run(scenario())
    assert answer["status"] == COMPLETED
    assert len(reports) >= 2, reports
    waited = [seconds for seconds, _ in reports]
    assert waited == sorted(waited) and len(set(waited)) == len(waited)  # progress only increases
    assert all(answer["operation_id"] in message for _, message in reports)


def test_a_cancelled_call_leaves_the_run_recorded_and_pollable(settings: Settings) -> None:
    upstream = MemoryUpstream(polls_to_finish=0, submit_delay_s=1.0)
    runs = _service(settings, upstream)

    async def scenario() -> tuple[list, dict]:
        call = asyncio.ensure_future(runs.run_grid("g1", {"email": "a@x.io"}, "sync"))
        with Tracker(settings) as reader:
            recorded = await _until(lambda: reader.list(kind="run"))  # the row is written, the POST is out
            call.cancel()  # what the SDK does on notifications/cancelled
            with pytest.raises(asyncio.CancelledError):
                await call
            assert not upstream.submitted  # cancelled while the POST was still in flight
        later = await _until(lambda: _ended(runs.get_run_status(recorded[0].id)))
        await runs.aclose()
        return recorded, later

    recorded, later = asyncio.run(scenario())
    assert len(recorded) == 1 and recorded[0].status == RUNNING
    assert later["status"] == COMPLETED and len(upstream.submitted) == 1


async def _ended(answer: Any) -> dict | None:
    done = await answer
    return done if done["status"] != RUNNING else None


async def _until(probe: Any, timeout_s: float = 20.0) -> Any:
    """probe()'s first truthy value (awaited when it is a coroutine), tried every 50 ms; fails after timeout_s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        value = probe()
        value = await value if asyncio.iscoroutine(value) else value
        if value:
            return value
        await asyncio.sleep(0.05)
    pytest.fail(f"nothing after {timeout_s} s")


def test_the_bound_is_a_setting_under_a_default_clients_timeout() -> None:
    assert Settings.from_env({}, db="x").sync_wait_s < 60
    assert Settings.from_env({"TRACKER_SYNC_WAIT": "90s"}, db="x").sync_wait_s == 90


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_the_tool_sends_progress_notifications_to_a_client_that_asked(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "SYNC_PROGRESS_EVERY_S", 0.1)
    settings = Settings.from_env({}, db=str(tmp_path / "t.db"), sync_wait_s=1.0)
    upstream = MemoryUpstream(polls_to_finish=0, submit_delay_s=2.0)
    seen: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, message))

    tracker = Tracker(settings)
    runs = RunsService(settings, tracker.engine, upstream)
    server = MCPServer(name="host", lifespan=run_lifespan(runs))
    mount_run_tools(server, runs)
    try:
        async with in_process(server) as session:
            result = await session.client.call_tool(
                "run_grid", {"grid_id": "g1", "inputs": {"email": "a@x.io"}}, progress_callback=on_progress
            )
    finally:
        tracker.close()
    answer = result.structured_content
    assert answer is not None and answer["status"] == RUNNING and answer["operation_id"]
    assert len(seen) >= 2 and all(answer["operation_id"] in (message or "") for _, message in seen)
