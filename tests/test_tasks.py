"""MCP tasks as a client sees them, over Streamable HTTP on the tasks fixture server (tracker.testing.task_server):
the 2026-07-28 extension's methods and their errors, the 2025-11-25 surface, a task as an operation row, and each
caller seeing only its own tasks. Bad input gets the spec's error and changes no row (the database is compared
before and after). Restarts and several servers: test_tasks_restart.py; the conformance suite:
test_tasks_conformance.py; independent TypeScript clients: test_ts_tasks_clients.py."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from tracker.testing.http_server import HttpServer, task_server_command
from tracker.tokens import token_hash

from .tasks_wire import EXTENSION as EXT
from .tasks_wire import Wire

LEGACY = "2025-11-25"


def rows(db: Path) -> list[tuple]:
    """Every operation and task row, for comparing the database before and after a refused request."""
    with sqlite3.connect(db) as conn:
        return [*conn.execute("SELECT * FROM operations ORDER BY id"), *conn.execute("SELECT * FROM tasks ORDER BY operation_id")]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("tasks")
    db = directory / "tracker.db"
    with HttpServer(db, log=directory / "serve.log", command=task_server_command()) as server:
        yield server, db


def _secret() -> str:
    return "sk-live-" + "9" * 24


# -- 2026-07-28 -----------------------------------------------------------------------------------------------------


def test_a_task_is_created_durably_polled_answered_and_ends_with_its_result(served) -> None:
    server, db = served
    wire = Wire(server.url)
    created = wire.call("confirm_delete", filename="report.csv")
    assert created["resultType"] == "task" and created["status"] == "working"
    assert isinstance(created["ttlMs"], int) and isinstance(created["pollIntervalMs"], int)
    assert len(created["taskId"]) >= 32  # 128 random bits behind the readable prefix
    waiting = wire.until(created["taskId"], "input_required")
    (key, request), = waiting["inputRequests"].items()
    assert request["method"] == "elicitation/create"
    ack = wire.ok("tasks/update", {"taskId": created["taskId"],
                                   "inputResponses": {key: {"action": "accept", "content": {"confirm": True}}}})
    assert ack["resultType"] == "complete" and set(ack) <= {"resultType", "_meta"}  # an empty ack, no task envelope
    done = wire.until(created["taskId"], "completed", "cancelled")
    assert done["status"] == "completed", done
    assert done["result"]["content"][0]["text"] == "Deleted report.csv"


def test_bad_task_requests_get_the_spec_errors_and_change_nothing(served) -> None:
    server, db = served
    wire = Wire(server.url)
    waiting = wire.call("confirm_delete", filename="keep.txt")
    task_id = waiting["taskId"]
    wire.until(task_id, "input_required")
    finished = wire.call("slow_compute", seconds=0, label="quick")["taskId"]
    wire.until(finished, "completed")
    before = rows(db)
    secret = _secret()
    cases = [
        ("tasks/get", {"taskId": secret}, -32602),
        ("tasks/get", {"taskId": "x" * 100_000}, -32602),
        ("tasks/get", {"taskId": "task_\u0000"}, -32602),
        ("tasks/get", {"taskId": 12}, -32602),
        ("tasks/get", {}, -32602),
        ("tasks/cancel", {"taskId": secret}, -32602),
        ("tasks/update", {"taskId": secret, "inputResponses": {}}, -32602),
        ("tasks/update", {"taskId": task_id, "inputResponses": [secret]}, -32602),
        ("tasks/update", {"taskId": task_id, "inputResponses": secret}, -32602),
        ("tasks/update", {"taskId": task_id, "inputResponses": {"confirm": secret}}, -32602),
        ("tasks/update", {"taskId": task_id}, -32602),
        # The right key, an answer that does not match the schema it was asked with.
        ("tasks/update", {"taskId": task_id, "inputResponses": {"confirm": {"action": "accept", "content": {"confirm": secret}}}}, -32602),
        ("tasks/update", {"taskId": task_id, "inputResponses": {"confirm": {"action": "maybe"}}}, -32602),
        ("tasks/result", {"taskId": task_id}, -32601),  # removed on 2026-07-28
        ("tasks/list", {}, -32601),
    ]
    for method, params, code in cases:
        error = wire.error(method, params)
        assert error["code"] == code, (method, params, error)
        assert secret not in json.dumps(error) and "\n" not in error["message"], error
    # Answers to keys never asked are ignored, as the spec lets a server: an ack, nothing written.
    assert wire.ok("tasks/update", {"taskId": task_id, "inputResponses": {"never-asked": {"action": "accept"}}})["resultType"] == "complete"
    # Cancelling a finished task is acknowledged and changes nothing.
    assert wire.ok("tasks/cancel", {"taskId": finished})["resultType"] == "complete"
    # A request that did not declare the extension: -32021 for tasks/*, naming what is required.
    for method in ("tasks/get", "tasks/update", "tasks/cancel"):
        error = wire.error(method, {"taskId": task_id, "inputResponses": {}}, declare=False)
        assert error["code"] == -32021 and error["data"]["requiredCapabilities"]["extensions"] == {EXT: {}}
    required = wire.error("tools/call", {"name": "failing_job", "arguments": {}}, declare=False)
    assert required["code"] == -32021
    # Over HTTP, Mcp-Name must name the task the body names.
    mismatch = wire.error("tasks/get", {"taskId": task_id}, headers={"Mcp-Name": "another-task"})
    assert mismatch["code"] == -32020
    # Arguments the tool would refuse are refused before any task exists.
    legacy = Wire(server.url, version=LEGACY)
    calls = [("slow_compute", {"seconds": secret}), ("run_grid_batch", {"grid_id": "g", "rows": [{"a": "1"}], "secret": secret})]
    for tool, arguments in calls:
        for answer in (wire.call(tool, **arguments),
                       legacy.ok("tools/call", {"name": tool, "arguments": arguments, "task": {}})):
            assert answer.get("isError") is True and "taskId" not in answer and "task" not in answer, (tool, answer)
            assert secret not in json.dumps(answer)
    assert rows(db) == before
    assert wire.get(task_id)["status"] == "input_required"
    wire.ok("tasks/cancel", {"taskId": task_id})
    assert wire.get(task_id)["status"] == "cancelled"


def test_a_plain_call_stays_plain_for_a_client_without_the_extension(served) -> None:
    server, db = served
    before = rows(db)
    plain = Wire(server.url, declare=False).call("slow_compute", seconds=0, label="plain")
    assert plain["resultType"] == "complete" and "taskId" not in plain
    assert plain["content"][0]["text"] == "computed plain after 0s"
    assert rows(db) == before  # no task, no row


def test_a_task_is_an_operation_that_the_status_tools_show(served) -> None:
    server, _ = served
    wire = Wire(server.url)
    task_id = wire.call("count_items", count=30, delay=0.01)["taskId"]
    done = wire.until(task_id, "completed")
    assert done["result"]["content"][0]["text"] == "counted 30"
    status = wire.call("get_batch_status", batch_operation_id=task_id)["structuredContent"]
    operation = status["operation"]
    assert status["found"] and operation["operation_type"] == "task:count_items"
    assert operation["status"] == "completed" and operation["succeeded_count"] == 30
    assert operation["progress"]["total"] == 30
    listed = wire.call("list_operations", operation_type="task:count_items")["structuredContent"]
    assert task_id in [row["operation_id"] for row in listed["operations"]]


def test_cancel_reaches_the_running_body(served) -> None:
    server, db = served
    wire = Wire(server.url)
    task_id = wire.call("count_items", count=2000, delay=0.01)["taskId"]
    wire.until(task_id, "working")
    time.sleep(0.3)
    assert wire.ok("tasks/cancel", {"taskId": task_id})["resultType"] == "complete"
    assert wire.get(task_id)["status"] == "cancelled"
    first = wire.call("get_batch_status", batch_operation_id=task_id)["structuredContent"]["operation"]
    time.sleep(1.0)
    later = wire.call("get_batch_status", batch_operation_id=task_id)["structuredContent"]["operation"]
    # The body stopped: no item lands after the cancel, and the end stays the cancel's.
    assert later["status"] == "cancelled" and later["succeeded_count"] == first["succeeded_count"] < 2000


# -- 2025-11-25 -----------------------------------------------------------------------------------------------------


def test_the_2025_11_25_surface(served) -> None:
    server, _ = served
    wire = Wire(server.url, version=LEGACY)
    hello = wire.ok("initialize", {"protocolVersion": LEGACY, "capabilities": {"tasks": {}},
                                   "clientInfo": {"name": "t", "version": "1"}})
    assert hello["capabilities"]["tasks"] == {"cancel": {}, "requests": {"tools": {"call": {}}}}  # no list: anonymous
    tools = {t["name"]: t for t in wire.ok("tools/list")["tools"]}
    assert tools["failing_job"]["execution"] == {"taskSupport": "required"}
    assert tools["greet"]["execution"] == {"taskSupport": "forbidden"}
    assert "execution" not in tools["get_batch_status"]
    created = wire.ok("tools/call", {"name": "slow_compute", "arguments": {"seconds": 0.5}, "task": {"ttl": 60000}})
    task = created["task"]
    assert task["status"] == "working" and isinstance(task["ttl"], int) and "ttlMs" not in task
    result = wire.ok("tasks/result", {"taskId": task["taskId"]})  # waits for the end
    assert result["content"][0]["text"] == "computed result after 0.5s"
    assert result["_meta"]["io.modelcontextprotocol/related-task"] == {"taskId": task["taskId"]}
    assert wire.ok("tasks/get", {"taskId": task["taskId"]})["status"] == "completed"
    # A tool error is a failed task on this revision; its result is still the tool's.
    failing = wire.ok("tools/call", {"name": "failing_job", "arguments": {}, "task": {}})["task"]["taskId"]
    assert wire.ok("tasks/result", {"taskId": failing})["isError"] is True
    assert wire.ok("tasks/get", {"taskId": failing})["status"] == "failed"
    # Cancel answers the cancelled task; a finished one cannot be cancelled.
    slow = wire.ok("tools/call", {"name": "slow_compute", "arguments": {"seconds": 60}, "task": {}})["task"]["taskId"]
    assert wire.ok("tasks/cancel", {"taskId": slow})["status"] == "cancelled"
    assert wire.error("tasks/cancel", {"taskId": slow})["code"] == -32602
    assert wire.error("tasks/result", {"taskId": slow})["code"] == -32602
    assert wire.error("tasks/list")["code"] == -32601  # callers are not authenticated here
    assert wire.error("tasks/update", {"taskId": slow, "inputResponses": {}})["code"] == -32601
    assert wire.error("tools/call", {"name": "failing_job", "arguments": {}})["code"] == -32601  # required
    assert wire.error("tools/call", {"name": "greet", "arguments": {"name": "x"}, "task": {}})["code"] == -32601
    # A tool that asks for input the 2026 way cannot be asked over stateless HTTP: one line saying so.
    refused = wire.error("tools/call", {"name": "confirm_delete", "arguments": {"filename": "a"}})
    assert "cannot ask" in refused["message"]


# -- subjects -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def authenticated(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("tasks-auth")
    tokens = directory / "tokens"
    tokens.write_text("".join(f"{who} {token_hash('trk_' + who + '-token')}\n" for who in ("alice", "bob")))
    tokens.chmod(0o600)
    db = directory / "tracker.db"
    command = [*task_server_command(), "--tokens", str(tokens)]
    with HttpServer(db, log=directory / "serve.log", command=command) as server:
        yield server, db


def test_another_subjects_task_is_unknown_and_untouched(authenticated) -> None:
    server, db = authenticated
    alice, bob = Wire(server.url, "trk_alice-token"), Wire(server.url, "trk_bob-token")
    task_id = alice.call("slow_compute", seconds=60, label="alice")["taskId"]
    before = rows(db)
    for method in ("tasks/get", "tasks/cancel"):
        assert bob.error(method, {"taskId": task_id})["code"] == -32602
    assert bob.error("tasks/update", {"taskId": task_id, "inputResponses": {}})["code"] == -32602
    assert rows(db) == before
    assert alice.get(task_id)["status"] == "working"
    # 2025-11-25's tasks/list, offered because callers are authenticated, lists the caller's own tasks only.
    legacy_alice = Wire(server.url, "trk_alice-token", version=LEGACY)
    legacy_bob = Wire(server.url, "trk_bob-token", version=LEGACY)
    hello = legacy_bob.ok("initialize", {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}})
    assert "list" in hello["capabilities"]["tasks"]
    bobs = legacy_bob.ok("tools/call", {"name": "slow_compute", "arguments": {"seconds": 60}, "task": {}})["task"]["taskId"]
    assert [t["taskId"] for t in legacy_bob.ok("tasks/list")["tasks"]] == [bobs]
    assert task_id in [t["taskId"] for t in legacy_alice.ok("tasks/list")["tasks"]]
    assert bobs not in [t["taskId"] for t in legacy_alice.ok("tasks/list")["tasks"]]
    alice.ok("tasks/cancel", {"taskId": task_id})
    legacy_bob.ok("tasks/cancel", {"taskId": bobs})


# -- tracker's own long tools as tasks -------------------------------------------------------------------------------


def test_run_grid_and_run_grid_batch_as_tasks_and_as_before(tmp_path: Path, fake_upstream) -> None:
    """run_grid longer than its short synchronous wait becomes a task whose result is the run's end;
    run_grid_batch is a task whose result is the batch's summary. A client without the extension sees both as
    they always were."""
    fake_upstream.configure(run_seconds="7")
    env = {**fake_upstream.env(), "TRACKER_POLL_INTERVAL": "0.3"}
    with HttpServer(tmp_path / "tracker.db", env=env, command=task_server_command()) as server:
        tasks, plain = Wire(server.url), Wire(server.url, declare=False)
        created = tasks.call("run_grid", grid_id="grid-1", inputs={"company": "Acme"})
        assert created["resultType"] == "task", created
        batch = tasks.call("run_grid_batch", grid_id="grid-1", rows=[{"company": "A"}, {"company": "B"}])
        assert batch["resultType"] == "task", batch
        inline = plain.call("run_grid", grid_id="grid-1", inputs={"company": "Inline"})  # waits the run out (7 s < 50 s)
        assert inline["structuredContent"]["status"] == "completed" and "outputs" in inline["structuredContent"]
        started = plain.call("run_grid_batch", grid_id="grid-1", rows=[{"company": "C"}])["structuredContent"]
        assert started["status"] == "running"  # at once, as before
        run = tasks.until(created["taskId"], "completed", "failed", timeout_s=90)
        assert run["status"] == "completed", run
        assert run["result"]["structuredContent"]["status"] == "completed" and run["result"]["structuredContent"]["outputs"]
        summary = tasks.until(batch["taskId"], "completed", "failed", timeout_s=90)["result"]["structuredContent"]
        assert summary["status"] == "completed" and summary["message"].startswith("2 of 2 runs succeeded")
