"""A sync run_grid of a 65 s run, seen from a default TypeScript SDK client (60 s request timeout, no progress
token): before, the client gave up at 60 s and the run was left without an id it could poll. Now the call answers
within TRACKER_SYNC_WAIT (50 s) with status running and the operation_id, and polling get_run_status with it
finds the outputs. Prints the figure the README quotes (run it with -s to see it)."""

from __future__ import annotations

from pathlib import Path

from tracker.testing.fake_upstream import FakeUpstreamProcess

from .ts_sdk import call, run_client

RUN_S = 65


def test_a_65_s_sync_run_from_a_default_typescript_client(tmp_path: Path, fake_upstream: FakeUpstreamProcess) -> None:
    fake_upstream.configure(run_seconds=str(RUN_S))
    output = run_client(
        tmp_path / "t.db",
        [
            call("run_grid", grid_id="g1", inputs={"email": "a@x.io"}, mode="sync"),  # SDK defaults: 60 s timeout
            {
                "tool": "get_run_status",
                "arguments_from": {"request_id": [0, "operation_id"]},
                "until_not": {"status": "running"},
                "every_ms": 3000,
                "max_ms": 120_000,
            },
        ],
        timeout=240,
        **fake_upstream.env(),
    )
    first, polled = output["calls"]
    assert "error" not in first, first  # before: McpError -32001 "Request timed out" at 60 s
    answer = first["result"]["structuredContent"]
    assert first["result"]["isError"] is False and answer["status"] == "running"
    assert answer["operation_id"].startswith("run_") and "request_id" not in answer  # the POST is still out
    assert "error" not in polled, polled
    done = polled["result"]["structuredContent"]
    assert done["status"] == "completed" and done["operation_id"] == answer["operation_id"]
    assert done["outputs"] and done["found"] is True
    assert fake_upstream.stats()["posts"] == 1  # one POST, whoever gave up waiting
    total_s = (first["elapsed_ms"] + polled["elapsed_ms"]) / 1000
    print(
        f"\n65 s sync run_grid, default TypeScript client {output['sdk_version']}: answered running after"
        f" {first['elapsed_ms'] / 1000:.1f} s (operation_id), outputs by get_run_status after {total_s:.1f} s"
        f" ({polled['attempts']} polls)"
    )


def test_progress_keeps_a_waiting_call_alive_and_a_cancelled_call_leaves_the_run_pollable(
    tmp_path: Path, fake_upstream: FakeUpstreamProcess
) -> None:
    fake_upstream.configure(run_seconds="14")
    # An 8 s timeout the progress notifications (every 5 s) reset: without them the call would fail at 8 s.
    kept_alive = {"progress": True, "resetTimeoutOnProgress": True, "timeout": 8000}
    poll = {"until_not": {"status": "running"}, "every_ms": 1000, "max_ms": 60_000}
    output = run_client(
        tmp_path / "t.db",
        [
            call("run_grid", kept_alive, grid_id="g1", inputs={"email": "a@x.io"}),
            {"tool": "get_run_status", "arguments_from": {"request_id": [0, "operation_id"]}, **poll},
            call("run_grid", {"abort_after_ms": 1000}, grid_id="g1", inputs={"email": "b@x.io"}),
            call("list_operations", kind="run", status="running"),
            {"tool": "get_run_status", "arguments_from": {"request_id": [3, "operations", 0, "operation_id"]}, **poll},
        ],
        timeout=180,
        TRACKER_SYNC_WAIT="10s",
        **fake_upstream.env(),
    )
    waited, done, cancelled, listed, found = output["calls"]
    assert "error" not in waited, waited
    assert waited["result"]["structuredContent"]["status"] == "running"
    assert waited["elapsed_ms"] > 8_000  # it outlived its 8 s timeout: the progress notifications reset it
    assert len(waited["progress"]) >= 1 and all("message" in note for note in waited["progress"])
    assert done["result"]["structuredContent"]["status"] == "completed"
    # The client cancelled the second call: it got no answer, and the run is still recorded, and completes.
    assert "error" in cancelled and "result" not in cancelled, cancelled
    [run] = listed["result"]["structuredContent"]["operations"]
    assert found["result"]["structuredContent"]["status"] == "completed"
    assert found["result"]["structuredContent"]["operation_id"] == run["operation_id"]
    assert fake_upstream.stats()["posts"] == 2
