"""run_grid, run_grid_batch and get_run_status through an MCP session with `tracker serve` (in process; a real
stdio subprocess where concurrent calls over one pipe are the point), its upstream the fake grid API on 127.0.0.1.
(test_resume.py drives run_grid_batch through stdio subprocesses that are killed and restarted.)"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from .conftest import FakeUpstreamProcess
from .sessions import run_settings, served, tracker_session

FAST = {"BITSCALE_RATE_LIMIT": "20"}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_tools_are_listed_once_with_schemas_and_annotations(tmp_path: Path, fake_upstream: FakeUpstreamProcess) -> None:
    async with served(run_settings(tmp_path / "t.db", fake_upstream)) as session:
        listed = (await session.client.list_tools()).tools
    names = [tool.name for tool in listed]
    assert names.count("get_run_status") == 1
    tools = {tool.name: tool for tool in listed}
    assert {"run_grid", "run_grid_batch", "get_run_status", "get_batch_status", "cancel_operation"} <= set(tools)
    run_grid = tools["run_grid"]
    assert run_grid.input_schema["required"] == ["grid_id", "inputs"]
    assert run_grid.input_schema["properties"]["inputs"]["additionalProperties"] == {"type": "string", "maxLength": 10_000}
    assert run_grid.input_schema["properties"]["mode"]["enum"] == ["sync", "async"]
    assert (run_grid.annotations.read_only_hint, run_grid.annotations.open_world_hint) == (False, True)
    assert tools["run_grid_batch"].input_schema["properties"]["rows"]["maxItems"] == 10_000
    assert tools["get_run_status"].annotations.read_only_hint is True
    assert "every 2-5 seconds" in tools["get_run_status"].description


@pytest.mark.anyio
async def test_a_sync_run_does_not_hold_up_other_calls(tmp_path: Path, fake_upstream: FakeUpstreamProcess) -> None:
    fake_upstream.configure(run_seconds="1.2")
    order: list[str] = []
    results: dict[str, dict] = {}
    async with tracker_session(tmp_path / "t.db", fake_upstream, tmp_path / "err.log") as session:

        async def sync_run() -> None:
            results["run"] = await session.answer("run_grid", grid_id="g1", inputs={"email": "a@x.io"}, mode="sync")
            order.append("run_grid")

        async with anyio.create_task_group() as group:
            group.start_soon(sync_run)
            await anyio.sleep(0.3)
            started = time.monotonic()
            results["list"] = await session.answer("list_operations", kind="run")
            results["list_seconds"] = time.monotonic() - started  # type: ignore[assignment]
            order.append("list_operations")
    assert order == ["list_operations", "run_grid"]
    # the run's row was written before the upstream answered, and another tool could read it meanwhile
    [row] = results["list"]["operations"]
    assert (row["status"], row["grid_id"], row["mode"]) == ("running", "g1", "sync")
    assert results["run"]["status"] == "completed" and results["run"]["outputs"]["enriched"]["value"] == "g1:email=a@x.io"


@pytest.mark.anyio
async def test_async_run_polled_to_completion_and_idempotent(tmp_path: Path, fake_upstream: FakeUpstreamProcess) -> None:
    fake_upstream.configure(run_seconds="0.6")
    async with served(run_settings(tmp_path / "t.db", fake_upstream)) as session:
        first = await session.answer("run_grid", grid_id="g1", inputs={"n": "1"}, mode="async", idempotency_key="k-1")
        again = await session.answer("run_grid", grid_id="g1", inputs={"n": "1"}, mode="async", idempotency_key="k-1")
        assert first["status"] == "running" and first["request_id"]
        assert again["operation_id"] == first["operation_id"] and again["replayed"] is True
        deadline = time.monotonic() + 15
        while (status := await session.answer("get_run_status", request_id=first["request_id"]))["status"] == "running":
            assert time.monotonic() < deadline
            await anyio.sleep(0.2)
        requests_before = fake_upstream.stats()["requests"]
        final = await session.answer("get_run_status", request_id=first["request_id"])
    assert status["found"] is True and status["status"] == "completed"
    assert status["outputs"] == {
        "enriched": {"value": "g1:n=1", "name": "Enriched"}, "score": {"value": "3", "name": "Score"}
    }
    assert final == status and fake_upstream.stats()["requests"] == requests_before
    assert fake_upstream.stats()["runs"] == 1


BAD_CALLS = [
    ("run_grid", {"grid_id": "g1", "inputs": {}}, "inputs must be a non-empty object"),
    ("run_grid", {"grid_id": "", "inputs": {"a": "1"}}, "grid_id must not be empty"),
    ("run_grid", {"grid_id": "g1", "inputs": {"a": 1}}, "inputs['a'] must be a string"),
    ("run_grid", {"grid_id": "g1", "inputs": {"a": "1"}, "mode": "now"}, "mode must be 'sync' or 'async'"),
    ("run_grid_batch", {"grid_id": "g1", "rows": [{"a": "1"}] * 10_001}, "a batch takes at most 10000"),
    ("run_grid_batch", {"grid_id": "g1", "rows": [{"a": "1"}, "x"]}, "rows[1] must be a non-empty object"),
    ("run_grid_batch", {"grid_id": "g1", "rows": [{"a": "1"}], "concurrency": 99}, "concurrency must be a whole number"),
    ("get_run_status", {"request_id": ""}, "request_id must not be empty"),
]


@pytest.mark.anyio
async def test_bad_input_is_a_tool_error_and_nothing_is_written_or_sent(
    tmp_path: Path, fake_upstream: FakeUpstreamProcess
) -> None:
    async with served(run_settings(tmp_path / "t.db", fake_upstream)) as session:
        for tool, arguments, message in BAD_CALLS:
            got = await session.call(tool, arguments)
            is_error, text = got.is_error, got.text
            assert is_error and message in text, (tool, text)
            assert len(text) < 300 and "Traceback" not in text and "SELECT" not in text
        listed = await session.answer("list_operations")
        missing = await session.answer("get_run_status", request_id="not-a-request")
    assert listed["operations"] == []
    assert missing["found"] is False and '"not-a-request" not found' in missing["message"]
    assert fake_upstream.stats()["requests"] == 1  # only the lookup of the unknown request_id


@pytest.mark.anyio
async def test_batch_through_the_tools_and_cancel_stops_it(tmp_path: Path, fake_upstream: FakeUpstreamProcess) -> None:
    fake_upstream.configure(rate_limit=20, run_seconds="0.2,0.5", run_failure_rate=0.2)
    rows = [{"email": f"p{n}@x.io"} for n in range(1, 9)]
    async with served(run_settings(tmp_path / "t.db", fake_upstream, **FAST)) as session:
        started = await session.answer("run_grid_batch", grid_id="g1", rows=rows)
        batch_id = started["batch_operation_id"]
        deadline = time.monotonic() + 30
        while (status := await session.answer("get_batch_status", batch_operation_id=batch_id))["operation"][
            "status"
        ] == "running":
            assert time.monotonic() < deadline
            await anyio.sleep(0.2)
        operation = status["operation"]
        some_id = operation["successful_ids"][0]
        run = await session.answer("get_run_status", request_id=some_id)

        fake_upstream.configure(rate_limit=5, run_seconds="0.2", run_failure_rate=0)
        many = [{"email": f"q{n}@x.io"} for n in range(1, 41)]
        long = await session.answer("run_grid_batch", grid_id="g2", rows=many, concurrency=1)
        while fake_upstream.stats()["posts"] < len(rows) + 2:
            await anyio.sleep(0.05)
        cancelled = await session.answer("cancel_operation", operation_id=long["batch_operation_id"])
        posts_at_cancel = fake_upstream.stats()["posts"]
        await anyio.sleep(1.0)
        after = await session.answer("get_batch_status", batch_operation_id=long["batch_operation_id"])
    assert operation["status"] == "completed" and operation["progress"]["completed"] == operation["progress"]["total"] == 8
    assert len(operation["successful_ids"]) + len(operation["failed_items"]) == 8
    assert all(f["row_number"] in range(1, 9) and f["error"] for f in operation["failed_items"])
    assert run["status"] == "completed" and run["request_id"] == some_id and run["batch_operation_id"] == batch_id
    assert cancelled["operation"]["status"] == "cancelled" and after["operation"]["status"] == "cancelled"
    assert fake_upstream.stats()["posts"] <= posts_at_cancel + 1  # at most the one already past the check
    assert fake_upstream.stats()["max_submissions_per_input"] == 1
