"""Durable MCP tasks across server deaths and between live servers, on SQLite and PostgreSQL: real task fixture
servers (tracker.testing.task_server over HTTP) on one database, SIGKILLed the way a machine loses a process, and
the 2026-07-28 wire (tests/tasks_wire.py). A dead server's task is failed, or (its tool safe to run again) run
again once by a live server; a task waiting for input outlives its server; any server answers, cancels or resumes
any task, and two servers answering at once run the tool once."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from tracker import Tracker
from tracker.testing.http_server import HttpServer, task_server_command

from .http_server import wait_for
from .tasks_wire import RpcError, TasksClient, accept, result_text

LONG_S = 600  # a body that must not end by itself during the test
DEADLINE_S = 90.0  # for anything that needs a server's orphan recovery (every 5 s) on a loaded machine

Start = Callable[..., HttpServer]


@contextmanager
def task_servers(db: str, tmp_path: Path) -> Iterator[Start]:
    """start(name) launches a fixture server on `db` (its stderr in tmp_path/name.log); start(name, wait=False)
    returns at once, so several start together. Every one is stopped at the end."""
    started: list[HttpServer] = []

    def start(name: str, wait: bool = True) -> HttpServer:
        server = HttpServer(db, log=tmp_path / f"{name}.log", command=task_server_command())
        started.append(server)
        if wait:
            server.wait_listening()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


def row(engine: Engine, task_id: str) -> dict[str, Any]:
    """The task's operation and tasks rows as stored, read with plain SQL."""
    query = text(
        "SELECT o.status, o.error, o.owner_pid, o.updated_at, o.completed_at, t.phase, t.takeovers"
        " FROM operations o JOIN tasks t ON t.operation_id = o.id WHERE o.id = :id"
    )
    with engine.connect() as conn:
        return dict(conn.execute(query, {"id": task_id}).mappings().one())


def writers(engine: Engine, task_id: str) -> int:
    query = text("SELECT count(*) FROM operation_writers WHERE operation_id = :id")
    with engine.connect() as conn:
        return conn.execute(query, {"id": task_id}).scalar_one()


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_until_still(path: Path, quiet_s: float, timeout: float) -> None:
    """Until the file gained no line for quiet_s."""
    deadline = time.monotonic() + timeout
    before = len(lines(path))
    while True:
        time.sleep(quiet_s)
        now = len(lines(path))
        if now == before:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} still grows ({now} lines) {timeout:g} s on")
        before = now


def assert_interrupted(task: dict[str, Any]) -> None:
    assert task["status"] == "failed", task
    assert "interrupted" in task["error"]["message"] and "exited" in task["error"]["message"], task


def test_a_task_whose_server_is_killed_is_failed_by_the_next_server(backend_tracker: Tracker, tmp_path: Path) -> None:
    engine = backend_tracker.engine
    with task_servers(backend_tracker.settings.db, tmp_path) as start:
        a = start("a")
        task_id = TasksClient(a.url).create("record_then_sleep", {"seconds": LONG_S})
        assert TasksClient(a.url).get(task_id)["status"] == "working"
        a.kill()
        assert row(engine, task_id)["status"] == "running"  # a dead server ends nothing: the next one must

        b = start("b")
        task = TasksClient(b.url).wait_terminal(task_id, DEADLINE_S)
        assert_interrupted(task)
        assert row(engine, task_id)["takeovers"] == 0  # not safe to run again: never run again


def test_a_rerunnable_task_is_run_again_once_by_the_next_server(backend_tracker: Tracker, tmp_path: Path) -> None:
    engine = backend_tracker.engine
    with task_servers(backend_tracker.settings.db, tmp_path) as start:
        a = start("a")
        client_a = TasksClient(a.url)
        long_id = client_a.create("slow_compute", {"seconds": LONG_S, "label": "long"})
        quick_id = client_a.create("slow_compute", {"seconds": 4, "label": "quick"})
        a.kill()
        assert [row(engine, t)["status"] for t in (quick_id, long_id)] == ["running", "running"]

        b = start("b")
        client_b = TasksClient(b.url)
        quick = client_b.wait_terminal(quick_id, DEADLINE_S)
        assert quick["status"] == "completed", quick
        assert result_text(quick) == "computed quick after 4s"
        assert row(engine, quick_id)["takeovers"] == 1
        wait_for(lambda: row(engine, long_id)["owner_pid"] == b.pid, timeout=DEADLINE_S)  # b runs it again too
        assert row(engine, long_id)["takeovers"] == 1
        assert client_b.get(long_id)["status"] == "working"

        # Its second server dies as well, while the run again runs: it was run again once, so now it fails.
        b.kill()
        c = start("c")
        long = TasksClient(c.url).wait_terminal(long_id, DEADLINE_S)
        assert_interrupted(long)
        assert row(engine, long_id)["takeovers"] == 1
        assert TasksClient(c.url).get(quick_id)["status"] == "completed"


def test_a_task_waiting_for_input_outlives_its_server(backend_tracker: Tracker, tmp_path: Path) -> None:
    engine = backend_tracker.engine
    with task_servers(backend_tracker.settings.db, tmp_path) as start:
        a = start("a")
        client_a = TasksClient(a.url)
        task_id = client_a.create("confirm_delete", {"filename": "report.txt"})
        asked = client_a.wait_status(task_id, {"input_required"})
        # Two witnesses that b's orphan recovery has judged a's tasks: one failed, one taken over.
        doomed_id = client_a.create("record_then_sleep", {"seconds": LONG_S})
        rerun_id = client_a.create("slow_compute", {"seconds": LONG_S})
        a.kill()

        b = start("b")
        client_b = TasksClient(b.url)
        assert_interrupted(client_b.wait_terminal(doomed_id, DEADLINE_S))
        wait_for(lambda: row(engine, rerun_id)["owner_pid"] == b.pid, timeout=DEADLINE_S)
        waiting = client_b.get(task_id)
        assert waiting["status"] == "input_required", waiting
        assert waiting["inputRequests"] == asked["inputRequests"]

        client_b.update(task_id, accept())
        done = client_b.wait_terminal(task_id)
        assert done["status"] == "completed", done
        assert result_text(done) == "Deleted report.txt"


def test_live_servers_answer_and_cancel_each_others_tasks(backend_tracker: Tracker, tmp_path: Path) -> None:
    engine = backend_tracker.engine
    with task_servers(backend_tracker.settings.db, tmp_path) as start:
        a, b = start("a", wait=False), start("b", wait=False)
        client_a, client_b = TasksClient(a.url), TasksClient(b.url)

        task_id = client_a.create("confirm_delete", {"filename": "shared.txt"})
        asked = client_a.wait_status(task_id, {"input_required"})
        assert client_b.get(task_id)["inputRequests"] == asked["inputRequests"]
        client_b.update(task_id, accept())
        done = client_a.wait_terminal(task_id)
        assert done["status"] == "completed", done
        assert result_text(done) == "Deleted shared.txt"

        ticks = tmp_path / "ticks.txt"
        running_id = client_a.create("tick_file", {"path": str(ticks), "seconds": LONG_S, "every": 0.1})
        wait_for(lambda: len(lines(ticks)) >= 4, timeout=DEADLINE_S)
        assert set(lines(ticks)[:3]) == {f"tick in {a.pid}"}  # a runs it (the last line may be half written)
        client_b.cancel(running_id)
        assert client_a.wait_terminal(running_id)["status"] == "cancelled"
        assert client_b.get(running_id)["status"] == "cancelled"

        # a's body stops (it looks for cancels every 0.5 s): its file stops growing, and stays so.
        wait_until_still(ticks, quiet_s=1.5, timeout=DEADLINE_S)
        stopped, ended = len(lines(ticks)), row(engine, running_id)
        assert ended["status"] == "cancelled", ended
        time.sleep(2.0)
        assert len(lines(ticks)) == stopped, "a's body went on after the cancel"
        assert row(engine, running_id) == ended  # nothing wrote to the cancelled task since


def test_two_servers_answering_the_last_input_at_once_run_the_tool_once(backend_tracker: Tracker, tmp_path: Path) -> None:
    engine = backend_tracker.engine
    rounds = 4
    with task_servers(backend_tracker.settings.db, tmp_path) as start, ThreadPoolExecutor(2) as pool:
        a, b = start("a", wait=False), start("b", wait=False)
        clients = [TasksClient(a.url), TasksClient(b.url)]
        runs: dict[str, Path] = {}
        for n in range(rounds):
            path = tmp_path / f"runs-{n}.txt"
            task_id = clients[n % 2].create("confirm_append", {"path": str(path)})
            clients[0].wait_status(task_id, {"input_required"})
            together = threading.Barrier(2)

            def answer(client: TasksClient, task_id: str = task_id, together: threading.Barrier = together) -> dict:
                together.wait(timeout=30)
                return client.update(task_id, accept())

            for answered in [pool.submit(answer, client) for client in clients]:
                answered.result()  # both acknowledged (an error answer raises)
            done = clients[1].wait_terminal(task_id)
            assert done["status"] == "completed", done
            assert result_text(done) == f"Appended to {path}"
            runs[task_id] = path
        time.sleep(1.0)  # a second run, had there been one, would have appended by now
        counted = {task_id: len(lines(path)) for task_id, path in runs.items()}
        assert counted == dict.fromkeys(runs, 1), counted
        for task_id in runs:
            assert row(engine, task_id)["status"] == "completed"
            assert writers(engine, task_id) == 0


def test_task_requests_to_a_server_whose_database_is_down_answer_why(tmp_path: Path) -> None:
    """On a database server, `tracker serve` listens before its database is open (and serves while it is down):
    the tasks requests open it first, as tool calls do, and answer its one-line reason, not an internal error."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once it is closed
    down = f"postgresql+psycopg://postgres@127.0.0.1:{port}/tracker"
    with task_servers(down, tmp_path) as start:
        client = TasksClient(start("a").url)
        for ask in (lambda: client.create("slow_compute", {"seconds": 1}), lambda: client.get("task_x_1")):
            with pytest.raises(RpcError) as caught:
                ask()
            assert caught.value.error["code"] == -32603
            assert f"127.0.0.1:{port}/tracker" in caught.value.error["message"], caught.value.error
