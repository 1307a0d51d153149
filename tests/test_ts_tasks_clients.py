"""Tasks through two clients nobody here wrote (tests/tasks_clients/, see each script's header for its plan): the
TypeScript SDK 1.x `client.experimental.tasks` on 2025-11-25 over stdio, and @modelcontextprotocol/ext-tasks (the
official client of the SEP-2663 extension, on the TypeScript SDK v2 client) on 2026-07-28 over stdio and over
Streamable HTTP. Each creates tasks of the fixture server (tracker.testing.task_server), polls them, answers their
input, cancels them and reads their errors, against a fresh SQLite file."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tracker.testing.env import child_env
from tracker.testing.http_server import HttpServer, task_server_command

from .npm_install import npm_ci, require_tool

CLIENTS = Path(__file__).with_name("tasks_clients")
NEEDED_BY = "the TypeScript tasks client tests need Node >= 20 and npm"


@functools.cache
def _node() -> str:
    node = require_tool("node", NEEDED_BY)
    npm_ci(CLIENTS, NEEDED_BY)
    return node


def run(script: str, plan: dict[str, Any], db: Path, timeout_s: float = 240.0) -> list[dict[str, Any]]:
    """The script's output lines, one per step; the script must exit 0."""
    env = child_env(db)
    done = subprocess.run(
        [_node(), str(CLIENTS / script), json.dumps(plan)], cwd=CLIENTS, env=env, capture_output=True, text=True,
        timeout=timeout_s,
    )
    assert done.returncode == 0, f"{script} exited {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == len(plan["steps"]), done.stdout
    return lines


def stdio_plan(db: Path, steps: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    command = [sys.executable, "-m", "tracker.testing.task_server", "--db", str(db)]
    return {"command": command, "env": child_env(db), "cwd": str(db.parent), "steps": steps, **extra}


def ok(line: dict[str, Any]) -> dict[str, Any]:
    assert "error" not in line, line
    return line


CONFIRM = {"action": "accept", "content": {"confirm": True}}


def test_the_typescript_sdk_experimental_tasks_client_on_2025_11_25(tmp_path: Path) -> None:
    db = tmp_path / "tracker.db"
    steps = [
        {"kind": "info"},
        {"kind": "list_tools"},
        {"kind": "call", "tool": "slow_compute", "arguments": {"seconds": 0.5, "label": "ts"}, "as": "slow"},
        {"kind": "wait", "task": "slow", "until": ["completed"]},
        {"kind": "result", "task": "slow"},
        {"kind": "call", "tool": "confirm_delete", "arguments": {"filename": "a.txt"}, "as": "confirm"},
        {"kind": "wait", "task": "confirm", "until": ["input_required"]},
        {"kind": "answer", "task": "confirm", **CONFIRM},
        {"kind": "call", "tool": "multi_input", "arguments": {}, "as": "multi"},
        {"kind": "answer", "task": "multi", "contents": [{"name": "Ada"}, {"confirm": True}], "action": "accept"},
        {"kind": "call", "tool": "slow_compute", "arguments": {"seconds": 60}, "as": "long"},
        {"kind": "cancel", "task": "long"},
        {"kind": "cancel", "task": "long"},
        {"kind": "call", "tool": "failing_job", "arguments": {}, "as": "failing"},
        {"kind": "wait", "task": "failing", "until": ["failed"]},
        {"kind": "call", "tool": "protocol_error_job", "arguments": {}, "as": "broken"},
        {"kind": "result", "task": "broken"},
        {"kind": "get", "task": "task_unknown_0000"},
        {"kind": "list"},
    ]
    out = run("v1_client.mjs", stdio_plan(db, steps), db)
    assert ok(out[0])["server_capabilities"]["tasks"]["requests"] == {"tools": {"call": {}}}
    tools = {t["name"]: t.get("execution") for t in ok(out[1])["tools"]}
    assert tools["slow_compute"] == {"taskSupport": "optional"} and tools["greet"] == {"taskSupport": "forbidden"}
    assert ok(out[2])["mode"] == "task"
    result = ok(out[4])["result"]
    assert result["content"][0]["text"] == "computed ts after 0.5s"
    assert result["_meta"]["io.modelcontextprotocol/related-task"]["taskId"] == out[2]["task"]["taskId"]
    answered = ok(out[7])
    assert answered["result"]["content"][0]["text"] == "Deleted a.txt" and len(answered["elicitations"]) == 1
    multi = ok(out[9])
    assert multi["result"]["content"][0]["text"] == "Hello Ada, confirmed: True" and len(multi["elicitations"]) == 2
    assert ok(out[11])["task"]["status"] == "cancelled"
    assert out[12]["error"]["code"] == -32602  # a cancelled task cannot be cancelled again
    assert ok(out[14])["task"]["status"] == "failed"
    assert out[16]["error"]["code"] == -32603
    assert out[17]["error"]["code"] == -32602
    assert out[18]["error"]["code"] == -32601  # no tasks/list without authenticated callers


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_the_ext_tasks_client_on_2026_07_28(tmp_path: Path, transport: str) -> None:
    db = tmp_path / "tracker.db"
    steps = [
        {"kind": "info"},
        {"kind": "call", "tool": "slow_compute", "arguments": {"seconds": 0.5, "label": "ext"}, "as": "slow"},
        {"kind": "outcome", "task": "slow"},
        {"kind": "call", "tool": "confirm_delete", "arguments": {"filename": "b.txt"}, "as": "confirm"},
        {"kind": "wait", "task": "confirm", "until": ["input_required"]},
        {"kind": "answer", "task": "confirm", **CONFIRM},
        {"kind": "outcome", "task": "confirm"},
        {"kind": "call", "tool": "slow_compute", "arguments": {"seconds": 60}, "as": "long"},
        {"kind": "cancel", "task": "long"},
        {"kind": "wait", "task": "long", "until": ["cancelled"]},
        {"kind": "cancel", "task": "long"},
        {"kind": "call", "tool": "failing_job", "arguments": {}, "as": "failing"},
        {"kind": "outcome", "task": "failing"},
        {"kind": "call", "tool": "protocol_error_job", "arguments": {}, "as": "broken"},
        {"kind": "outcome", "task": "broken"},
        {"kind": "call", "tool": "greet", "arguments": {"name": "Ada"}},
        {"kind": "result", "task": "slow"},
        {"kind": "get", "task": "task_unknown_0000"},
    ]
    if transport == "http":
        with HttpServer(db, command=task_server_command()) as server:
            out = run("ext_client.mjs", {"url": server.url, "steps": steps}, db)
    else:
        out = run("ext_client.mjs", stdio_plan(db, steps, stdio_probe="in_place"), db)
    assert ok(out[1])["mode"] == "task" and out[1]["created"]["resultType"] == "task"
    assert ok(out[2])["outcome"]["status"] == "completed"
    assert ok(out[4])["task"]["inputRequests"]
    assert ok(out[5])["ack"]["resultType"] == "complete"
    confirmed = ok(out[6])["outcome"]
    assert confirmed["status"] == "completed" and confirmed["result"]["content"][0]["text"] == "Deleted b.txt"
    assert ok(out[8])["ack"]["resultType"] == "complete"
    assert ok(out[9])["task"]["status"] == "cancelled"
    assert ok(out[10])["ack"]["resultType"] == "complete"  # cancelling an ended task: the same empty ack
    failing = ok(out[12])["outcome"]
    assert failing["status"] == "completed" and failing["result"]["isError"] is True
    broken = ok(out[14])["outcome"]
    assert broken["status"] == "failed" and broken["error"]["code"] == -32603
    assert ok(out[15])["mode"] == "immediate" and out[15]["result"]["content"][0]["text"] == "Hello, Ada!"
    assert out[16]["error"]["code"] == -32601  # tasks/result is not on 2026-07-28
    assert out[17]["error"]["code"] == -32602


def host_plan(db: Path, steps: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """tests/host_tasks_server.py, a host server made durable with the README's three lines, on stdio."""
    repo = Path(__file__).resolve().parent.parent
    env = {**child_env(db), "PYTHONPATH": str(repo)}
    command = [sys.executable, str(repo / "tests" / "host_tasks_server.py")]
    return {"command": command, "env": env, "cwd": str(db.parent), "steps": steps, **extra}


@pytest.mark.parametrize("script", ["v1_client.mjs", "ext_client.mjs"])
def test_a_host_servers_own_tool_made_durable_in_three_lines(tmp_path: Path, script: str) -> None:
    db = tmp_path / "tracker.db"
    steps = [
        {"kind": "call", "tool": "export_report", "arguments": {"month": "2026-11", "sections": 4}, "as": "report"},
        {"kind": "wait", "task": "report", "until": ["completed"]},
    ]
    extra = {"stdio_probe": "in_place"} if script == "ext_client.mjs" else {}
    out = run(script, host_plan(db, steps, **extra), db)
    task = ok(out[1])["task"]
    assert task["status"] == "completed"
    if script == "ext_client.mjs":
        assert task["result"]["content"][0]["text"] == "report 2026-11: 4 sections"
    # The task is an operation: the mounted status tool shows it, with the items its body recorded.
    status_steps = [{"kind": "raw", "method": "tools/call",
                     "params": {"name": "get_batch_status", "arguments": {"batch_operation_id": task["taskId"]}}}]
    status = ok(run(script, host_plan(db, status_steps, **extra), db)[0])["result"]["structuredContent"]
    assert status["operation"]["operation_type"] == "task:export_report"
    assert status["operation"]["succeeded_count"] == 4 and status["operation"]["status"] == "completed"
