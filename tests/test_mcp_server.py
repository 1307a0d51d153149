"""The MCP status tools through a client session: a real stdio subprocess where the process is the point
(`python -m tracker`, two servers on one database, the host server of tests/host_server.py that mounts them), and
`tracker serve` (or the host server) in process elsewhere (restart survival, the bad-input table, the 16 KB bound,
stable list paging, cancel, unexpected errors, the mounted host polled live)."""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from tracker import Settings, Tracker, status
from tracker.db import sqlite_module
from tracker.testing.client import in_process
from tracker.testing.env import child_env
from tracker.reaper import ORPHAN_ERROR
from tracker.testing.client import served as _served
from tracker.timeutil import iso

from .conftest import OPERATION_FIELDS, PYTHON, value_schema
from .host_server import build_host_server
from .sessions import ToolClient
from .sessions import mcp_session as _mcp_session

HOST_SERVER = str(Path(__file__).with_name("host_server.py"))
STATUS_TOOLS = {"get_batch_status", "get_run_status", "list_operations", "get_operation_items", "cancel_operation"}
GRID_TOOLS = {"get_workspace_details", "list_grids", "get_grid_details", "get_grid_curl"}  # server/grid_tools.py
FAST_FLUSH = {"TRACKER_FLUSH_INTERVAL": "0.05"}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def mcp_session(db: Path, errlog: Path, args: list[str] | None = None):  # noqa: ANN201
    """A client session with a fresh server subprocess on `db`, flushing fast; stderr goes to `errlog`."""
    return _mcp_session(db, errlog, args, **FAST_FLUSH)


def served(db: Path):  # noqa: ANN201
    """`tracker serve` in this process on `db`, flushing fast."""
    return _served(Settings.from_env(FAST_FLUSH, db=str(db)))


def run_python(code: str, db: Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-c", code], env=child_env(db, **FAST_FLUSH), capture_output=True, text=True, timeout=60, **kwargs
    )


def db_snapshot(db: Path) -> list[tuple]:
    """Everything a tool could have written."""
    conn = sqlite_module().connect(str(db))
    try:
        operations = conn.execute(
            "SELECT id, status, updated_at, succeeded_count, failed_count, error FROM operations ORDER BY id"
        ).fetchall()
        items = conn.execute("SELECT count(*), max(seq) FROM operation_items").fetchall()
        return operations + items
    finally:
        conn.close()


# -- tools, restart survival, two servers ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_python_m_tracker_serves_the_tools_with_annotations(tmp_path: Path) -> None:
    async with mcp_session(tmp_path / "t.db", tmp_path / "stderr.log", args=["-m", "tracker"]) as session:
        tools = await session.list_tools()
    assert set(tools) == STATUS_TOOLS | {"run_grid", "run_grid_batch"} | GRID_TOOLS  # run tools: server/run_tools.py
    for name in STATUS_TOOLS - {"cancel_operation"}:
        assert tools[name].annotations.read_only_hint is True
    cancel = tools["cancel_operation"].annotations
    # Repeating a cancel changes nothing (the operation stays cancelled; the repeat says so): idempotent.
    assert (cancel.read_only_hint, cancel.destructive_hint, cancel.idempotent_hint) == (False, True, True)
    for name in ("get_batch_status", "get_run_status"):
        assert "every 2-5 seconds" in tools[name].description
        assert "kept for 1 hour after completion" in tools[name].description
    assert tools["get_batch_status"].input_schema["properties"]["batch_operation_id"]["type"] == "string"
    assert value_schema(tools["list_operations"].input_schema["properties"]["limit"])["maximum"] == 100


WRITER = """
import json
import logging
from tracker import Tracker
with Tracker.open() as tracker:
    done = tracker.start_batch("import", total=5, inputs={"file": "contacts.csv"})
    for n in (1, 2, 3):
        done.record_success(f"contact-{n}")
    done.record_failure("missing email", row_number=4)
    done.finish()
    running = tracker.start_batch("update", total=10)
    running.record_success("task-1")
    running.record_success("task-2")
print(json.dumps({"done": done.id, "running": running.id}))
"""


@pytest.mark.anyio
async def test_status_survives_the_writer_and_a_server_started_after_it_exited(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    writer = run_python(WRITER, db)
    assert writer.returncode == 0, writer.stderr
    ids = json.loads(writer.stdout)
    async with served(db) as session:
        done = await session.answer("get_batch_status", batch_operation_id=ids["done"])
        running = await session.answer("get_batch_status", batch_operation_id=ids["running"])
        listed = await session.answer("list_operations")
        missing = await session.answer("get_batch_status", batch_operation_id="batch_import_gone")
    assert done["found"] is True and OPERATION_FIELDS <= set(done["operation"])
    operation = done["operation"]
    assert (operation["batch_operation_id"], operation["operation_type"], operation["status"]) == (
        ids["done"], "import", "completed"
    )
    assert operation["progress"] == {"completed": 4, "total": 5, "percent": 80.0}
    assert operation["successful_ids"] == ["contact-1", "contact-2", "contact-3"]
    assert operation["failed_items"] == [{"row_number": 4, "error": "missing email"}]
    assert operation["completed_at"] >= operation["started_at"] and operation["execution_time_ms"] >= 0
    left = running["operation"]
    assert left["progress"]["completed"] == 2 and left["successful_ids"] == ["task-1", "task-2"]
    # Its writer exited without finishing it: running until the server's start-up orphan pass judges the owner
    # gone (its heartbeat quiet for 2 s: a slow machine gets there before the first read), then failed as an
    # orphan, with its items kept. Either way its end fields follow its status.
    if left["status"] == "running":
        assert "completed_at" not in left and "execution_time_ms" not in left
    else:
        assert (left["status"], left["error"]) == ("failed", ORPHAN_ERROR) and "completed_at" in left
    assert [row["operation_id"] for row in listed["operations"]] == [ids["running"], ids["done"]]
    assert missing == {
        "found": False,
        "message": 'Batch operation "batch_import_gone" not found. Operations are kept for 1 hour after completion.',
    }


@pytest.mark.anyio
async def test_two_servers_on_one_database_see_each_others_operations_while_they_run(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    Tracker(Settings.from_env({}, db=str(db))).close()  # migrate once, before two servers race to
    async with (
        mcp_session(db, tmp_path / "a.log", args=[HOST_SERVER]) as a,
        mcp_session(db, tmp_path / "b.log", args=[HOST_SERVER]) as b,
    ):
        a_id = (await a.answer("bulk_update_tasks", count=150, delay_ms=10))["batch_operation_id"]
        b_id = (await b.answer("bulk_update_tasks", count=150, delay_ms=10))["batch_operation_id"]
        a_seen_by_b = await b.answer("get_batch_status", batch_operation_id=a_id)
        b_seen_by_a = await a.answer("get_batch_status", batch_operation_id=b_id)
        assert a_seen_by_b["operation"]["status"] == "running" and b_seen_by_a["operation"]["status"] == "running"
        for session in (a, b):
            listed = await session.answer("list_operations", status="running")
            assert {row["operation_id"] for row in listed["operations"]} == {a_id, b_id}
        finals = {}
        for watcher, watched in ((b, a_id), (a, b_id)):
            finals[watched] = await poll_to_end(watcher, watched, timeout_s=20)
    for final in finals.values():
        assert final["status"] == "completed" and final["progress"]["completed"] == 150


async def poll_to_end(session: ToolClient, batch_id: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        operation = (await session.answer("get_batch_status", batch_operation_id=batch_id))["operation"]
        if operation["status"] != "running":
            return operation
        await anyio.sleep(0.05)
    raise AssertionError(f"{batch_id} still running after {timeout_s} s")


# -- the bad-input table, through one long-lived server -------------------------------------------------------------


@dataclass
class Shared:
    db: Path
    session: ToolClient
    done: str  # a completed batch with 120 successes and 3 failures
    running: str
    ok_cursor: str  # successful_ids_next_cursor of `done`
    failed_cursor: str  # an items cursor of `done`'s failures
    list_cursor: str  # next_cursor of list_operations(limit=1)


@pytest.fixture(scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Shared]:
    folder = tmp_path_factory.mktemp("shared")
    db = folder / "t.db"
    with Tracker(Settings.from_env({}, db=str(db))) as tracker:
        done = tracker.start_batch("import", total=123)
        for n in range(120):
            done.record_success(f"contact-{n}")
        for n in range(3):
            done.record_failure("bad row", row_number=n + 1)
        done.finish()
        running = tracker.start_batch("update", total=10)
    async with served(db) as session:
        operation = (await session.answer("get_batch_status", batch_operation_id=done.id))["operation"]
        failed_page = await session.answer("get_operation_items", operation_id=done.id, outcome="failed", limit=1)
        listed = await session.answer("list_operations", limit=1)
        yield Shared(
            db,
            session,
            done.id,
            running.id,
            operation["successful_ids_next_cursor"],
            failed_page["next_cursor"],
            listed["next_cursor"],
        )


def edited(cursor: str) -> str:
    middle = len(cursor) // 2
    return cursor[:middle] + ("A" if cursor[middle] != "A" else "B") + cursor[middle + 1 :]


def old_version_cursor() -> str:
    payload = b'{"v":0,"p":"list","t":"2026-01-01T00:00:00.000Z","i":"x","f":[null,null,null]}'
    return base64.urlsafe_b64encode(status._checksum(payload) + payload).decode()


Args = Callable[[Shared], dict[str, Any]]
BATCH_ID = "batch_operation_id"
LIST_LIMIT = "limit must be a whole number from 1 to 100"
BAD_CALLS: list[tuple[str, str, Args, str]] = [
    ("missing id", "get_batch_status", lambda s: {}, f"{BATCH_ID} is required"),
    ("unknown argument", "list_operations", lambda s: {"state": "running"}, 'unknown argument "state"'),
    ("empty id", "get_batch_status", lambda s: {BATCH_ID: ""}, f"{BATCH_ID} must not be empty"),
    ("blank id", "get_batch_status", lambda s: {BATCH_ID: "  \t"}, f"{BATCH_ID} must not be empty"),
    ("long id", "get_batch_status", lambda s: {BATCH_ID: "b" * 257}, f"{BATCH_ID} is longer than 128"),
    ("int id", "get_batch_status", lambda s: {BATCH_ID: 123}, f"{BATCH_ID} must be a string, not integer"),
    ("null id", "get_batch_status", lambda s: {BATCH_ID: None}, f"{BATCH_ID} must be a string, not null"),
    ("list id", "get_batch_status", lambda s: {BATCH_ID: [s.done]}, f"{BATCH_ID} must be a string, not array"),
    ("dict id", "get_batch_status", lambda s: {BATCH_ID: {"id": 1}}, f"{BATCH_ID} must be a string, not object"),
    ("bool id", "get_batch_status", lambda s: {BATCH_ID: True}, f"{BATCH_ID} must be a string, not boolean"),
    ("empty request id", "get_run_status", lambda s: {"request_id": ""}, "request_id must not be empty"),
    ("int request id", "get_run_status", lambda s: {"request_id": 42}, "request_id must be a string, not integer"),
    ("list limit 0", "list_operations", lambda s: {"limit": 0}, LIST_LIMIT),
    ("list limit 101", "list_operations", lambda s: {"limit": 101}, LIST_LIMIT),
    ("list limit -1", "list_operations", lambda s: {"limit": -1}, LIST_LIMIT),
    ("list limit text", "list_operations", lambda s: {"limit": "5"}, LIST_LIMIT),
    ("list limit bool", "list_operations", lambda s: {"limit": True}, LIST_LIMIT),
    ("list limit float", "list_operations", lambda s: {"limit": 2.5}, LIST_LIMIT),
    ("bad kind", "list_operations", lambda s: {"kind": "job"}, "kind must be one of run, batch"),
    ("bad status", "list_operations", lambda s: {"status": "done"}, "status must be one of running, completed"),
    ("empty type", "list_operations", lambda s: {"operation_type": " "}, "operation_type must be a non-empty string"),
    ("int type", "list_operations", lambda s: {"operation_type": 7}, "operation_type must be a non-empty string"),
    ("garbage cursor", "list_operations", lambda s: {"cursor": "garb!"}, "cursor is not a cursor from list_operations"),
    ("edited cursor", "list_operations", lambda s: {"cursor": edited(s.list_cursor)}, "cursor was altered"),
    ("stale cursor", "list_operations", lambda s: {"cursor": old_version_cursor()}, "cursor comes from another"),
    (
        "cursor, other filters",
        "list_operations",
        lambda s: {"cursor": s.list_cursor, "kind": "batch"},
        "cursor belongs to a list_operations call with other filters",
    ),
    ("items cursor in list", "list_operations", lambda s: {"cursor": s.ok_cursor}, "a cursor of another tool"),
    ("int cursor", "list_operations", lambda s: {"cursor": 5}, "cursor must be a string, not integer"),
    ("items empty id", "get_operation_items", lambda s: {"operation_id": ""}, "operation_id must not be empty"),
    (
        "bad outcome",
        "get_operation_items",
        lambda s: {"operation_id": s.done, "outcome": "ok"},
        'outcome must be "succeeded" or "failed"',
    ),
    (
        "items limit 0",
        "get_operation_items",
        lambda s: {"operation_id": s.done, "limit": 0},
        "limit must be a whole number from 1 to 1000",
    ),
    (
        "items limit 1001",
        "get_operation_items",
        lambda s: {"operation_id": s.done, "limit": 1001},
        "limit must be a whole number from 1 to 1000",
    ),
    (
        "cursor, other operation",
        "get_operation_items",
        lambda s: {"operation_id": s.running, "cursor": s.ok_cursor},
        "cursor belongs to another operation",
    ),
    (
        "cursor, other outcome",
        "get_operation_items",
        lambda s: {"operation_id": s.done, "outcome": "succeeded", "cursor": s.failed_cursor},
        'cursor pages failed items; pass it with outcome="failed"',
    ),
    (
        "edited items cursor",
        "get_operation_items",
        lambda s: {"operation_id": s.done, "cursor": edited(s.ok_cursor)},
        "cursor was altered",
    ),
    (
        "list cursor in items",
        "get_operation_items",
        lambda s: {"operation_id": s.done, "cursor": s.list_cursor},
        "cursor is a cursor of another tool",
    ),
    ("cancel empty id", "cancel_operation", lambda s: {"operation_id": ""}, "operation_id must not be empty"),
    ("cancel long id", "cancel_operation", lambda s: {"operation_id": "c" * 300}, "operation_id is longer than 128"),
    ("cancel int id", "cancel_operation", lambda s: {"operation_id": 5}, "operation_id must be a string, not integer"),
    (
        "cancel completed",
        "cancel_operation",
        lambda s: {"operation_id": s.done},
        "is already completed; only a running operation can be cancelled",
    ),
]


@pytest.mark.anyio
@pytest.mark.parametrize("tool, make_args, message", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
async def test_bad_input_is_a_tool_error_naming_the_parameter(
    shared: Shared, tool: str, make_args: Args, message: str
) -> None:
    before = db_snapshot(shared.db)
    is_error, text = astuple(await shared.session.call(tool, make_args(shared)))[:2]
    assert is_error, text
    assert message in text
    assert len(text) < 400 and "SELECT" not in text and "Traceback" not in text
    assert db_snapshot(shared.db) == before
    # The server is still up: a good call in the same session answers.
    still_up = await shared.session.answer("get_batch_status", batch_operation_id=shared.running)
    assert still_up["operation"]["status"] == "running"


@pytest.mark.anyio
async def test_unknown_ids_are_found_false_not_errors(shared: Shared) -> None:
    for tool, argument in (
        ("get_batch_status", "batch_operation_id"),
        ("get_run_status", "request_id"),
        ("get_operation_items", "operation_id"),
        ("cancel_operation", "operation_id"),
    ):
        value = await shared.session.answer(tool, **{argument: "nope_0123"})
        assert value["found"] is False and '"nope_0123" not found' in value["message"], tool
        assert "kept for 1 hour after completion" in value["message"]


@pytest.mark.anyio
async def test_unexpected_exception_is_logged_with_traceback_and_generic_to_the_model(
    shared: Shared, caplog: pytest.LogCaptureFixture
) -> None:
    conn = sqlite_module().connect(str(shared.db))
    try:
        # A row edited by hand into something the code cannot read: a crash, not an anticipated error.
        conn.execute(
            "INSERT INTO operations (id, kind, operation_type, status, total, succeeded_count, failed_count, "
            "started_at, updated_at, resumable) VALUES ('batch_corrupt', 'batch', 'update', 'running', 0, 0, 0, "
            "'garbage', 'garbage', 0)"
        )
        conn.commit()
        with caplog.at_level(logging.INFO):
            is_error, text = astuple(await shared.session.call("get_batch_status", batch_operation_id="batch_corrupt"))[:2]
    finally:
        conn.execute("DELETE FROM operations WHERE id = 'batch_corrupt'")
        conn.commit()
        conn.close()
    assert is_error and text == "Error executing tool get_batch_status"
    log = caplog.text
    assert "Traceback" in log and "time data 'garbage'" in log
    assert (await shared.session.answer("get_batch_status", batch_operation_id=shared.done))["found"] is True


# -- large batches, paging, cancel, the mounted host ----------------------------------------------------------------


@pytest.mark.anyio
async def test_status_of_a_100000_item_batch_stays_under_16_kb(tmp_path: Path, tracker: Tracker) -> None:
    batch = tracker.start_batch("import", total=100_000)
    long_id = "é" * 1023  # 2 KB of UTF-8 each
    for n in range(100_000):
        if n % 100 == 99:
            batch.record_failure("\x01" * 4000, item_id=f"row-{n}", row_number=n + 1)  # 6 bytes a char in JSON
        else:
            batch.record_success(f"{n % 10}{long_id}" if n < 100 else f"contact-{n:06d}")
    batch.finish()
    async with served(Path(tracker.settings.db)) as session:
        result = await session.client.call_tool("get_batch_status", {"batch_operation_id": batch.id})
        operation = result.structured_content["operation"]
        last_ok = operation["successful_ids"][-1]
        next_ok = await session.answer(
            "get_operation_items",
            operation_id=batch.id,
            cursor=operation["successful_ids_next_cursor"],
            limit=1000,
        )
        next_failed = await session.answer(
            "get_operation_items",
            operation_id=batch.id,
            outcome="failed",
            cursor=operation["failed_items_next_cursor"],
        )
    assert not result.is_error
    text_bytes = len(result.content[0].text.encode())
    whole_result_bytes = len(result.model_dump_json(by_alias=True).encode())
    assert text_bytes < 16_384 and whole_result_bytes < 16_384, (text_bytes, whole_result_bytes)
    assert operation["progress"] == {"completed": 100_000, "total": 100_000, "percent": 100.0}
    assert (operation["succeeded_count"], operation["failed_count"]) == (99_000, 1_000)
    assert operation["successful_ids_truncated"] is True and operation["failed_items_truncated"] is True
    assert 1 <= len(operation["successful_ids"]) < 50 and len(operation["failed_items"]) >= 1
    assert operation["failed_items"][0]["error"] == "\x01" * status.STATUS_ERROR_CHARS + "…"
    shown = len(operation["successful_ids"])
    assert next_ok["items"][0] == f"{shown % 10}{long_id}" != last_ok  # the page goes on right after the status page
    assert next_ok["total_count"] == 99_000
    first_unshown_failure = len(operation["failed_items"])
    assert next_failed["items"][0]["row_number"] == 100 * (first_unshown_failure + 1)
    assert next_failed["items"][0]["error"] == "\x01" * 4000


INSERTER = """
import sys, time
from pathlib import Path
from tracker import Tracker
stop = Path(sys.argv[1])
with Tracker.open() as tracker:
    n = 0
    while not stop.exists() and n < 5000:
        tracker.start_batch("sync").finish()
        n += 1
        if n == 1:
            print("inserting", flush=True)
        time.sleep(0.01)
print(n, flush=True)
"""


@pytest.mark.anyio
async def test_list_pages_have_no_duplicates_or_gaps_while_another_process_inserts(
    tmp_path: Path, tracker: Tracker
) -> None:
    seeded = {tracker.start_batch("import" if n % 3 else "delete").id for n in range(60)}
    db = Path(tracker.settings.db)
    stop = tmp_path / "stop"
    inserter = subprocess.Popen(
        [PYTHON, "-c", INSERTER, str(stop)], env=child_env(db), stdout=subprocess.PIPE, text=True
    )
    try:
        assert inserter.stdout is not None and inserter.stdout.readline().strip() == "inserting"
        seen: list[dict[str, Any]] = []
        async with served(db) as session:
            cursor = None
            while True:
                page = await session.answer("list_operations", kind="batch", limit=7, cursor=cursor)
                seen += page["operations"]
                cursor = page["next_cursor"]
                if cursor is None:
                    break
                await anyio.sleep(0.02)  # let the inserter get ahead of us between pages
    finally:
        stop.touch()
        inserted = int(inserter.communicate(timeout=30)[0].split()[-1])
    ids = [row["operation_id"] for row in seen]
    assert len(ids) == len(set(ids)), "a page repeated an operation"
    assert seeded <= set(ids), "a page skipped an operation"
    assert inserted > 1
    newer = tracker.list(kind="batch", limit=1)[0]
    assert (iso(newer.started_at), newer.id) > (seen[0]["started_at"], seen[0]["operation_id"]), (
        "nothing was inserted while paging"
    )
    positions = [(row["started_at"], row["operation_id"]) for row in seen]
    assert positions == sorted(positions, reverse=True)


WORKER = """
import json, time
from tracker import Tracker
with Tracker.open() as tracker:
    batch = tracker.start_batch("delete", total=100000)
    print(batch.id, flush=True)
    n = 0
    deadline = time.monotonic() + 30
    with batch:
        while time.monotonic() < deadline:
            batch.record_success(f"row-{n}")
            n += 1
            time.sleep(0.002)
    print(json.dumps({"recorded": n, "durable": batch.durable_count, "closed": batch.closed}), flush=True)
"""


@pytest.mark.anyio
async def test_cancel_is_seen_by_the_recording_worker(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    Tracker(Settings.from_env({}, db=str(db))).close()
    worker = subprocess.Popen(
        [PYTHON, "-c", WORKER], env=child_env(db, **FAST_FLUSH), stdout=subprocess.PIPE, text=True
    )
    try:
        assert worker.stdout is not None
        batch_id = worker.stdout.readline().strip()
        async with served(db) as session:
            while (await session.answer("get_batch_status", batch_operation_id=batch_id))["operation"]["progress"][
                "completed"
            ] == 0:
                await anyio.sleep(0.05)
            cancelled = await session.answer("cancel_operation", operation_id=batch_id)
            assert cancelled["cancelled"] is True and cancelled["operation"]["status"] == "cancelled"
            out, _ = await anyio.to_thread.run_sync(lambda: worker.communicate(timeout=20))
            report = json.loads(out.strip().splitlines()[-1])
            final = (await session.answer("get_batch_status", batch_operation_id=batch_id))["operation"]
            again_error, again = astuple(await session.call("cancel_operation", operation_id=batch_id))[:2]
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0
    assert report["closed"] is True and report["recorded"] < 100_000  # it stopped at the cancel, not the deadline
    assert final["status"] == "cancelled" and final["error"] == "cancelled by cancel_operation"
    assert final["progress"]["completed"] == report["durable"]  # late items refused, none applied
    assert again_error and "is already cancelled" in again


@pytest.mark.anyio
async def test_mounted_host_server_keeps_its_tools_and_is_polled_live_to_completion(tracker: Tracker) -> None:
    """In process; the two-servers test above runs the same host server as subprocesses."""
    async with in_process(build_host_server(tracker)) as session:
        names = set(await session.list_tools())
        assert names == STATUS_TOOLS | {"ping", "bulk_update_tasks"}
        assert (await session.call("ping")).text == "pong"
        started = time.monotonic()
        batch_id = (await session.answer("bulk_update_tasks", count=120, delay_ms=8, fail_every=10))[
            "batch_operation_id"
        ]
        assert time.monotonic() - started < 5  # returned before the work (about 1 s) was done
        seen: list[int] = []
        while True:
            operation = (await session.answer("get_batch_status", batch_operation_id=batch_id))["operation"]
            seen.append(operation["progress"]["completed"])
            if operation["status"] != "running":
                break
            await anyio.sleep(0.05)
        listed = await session.answer("list_operations", operation_type="update")
    assert seen == sorted(seen), "progress went backwards"
    assert any(0 < completed < 120 for completed in seen), f"no live progress seen: {seen}"
    assert operation["status"] == "completed"
    assert operation["progress"] == {"completed": 120, "total": 120, "percent": 100.0}
    assert (operation["succeeded_count"], operation["failed_count"]) == (108, 12)
    assert operation["failed_items"][0] == {"id": "task-10", "row_number": 10, "error": "task is locked"}
    assert [row["operation_id"] for row in listed["operations"]] == [batch_id]


def test_serve_on_an_unusable_database_exits_1_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [PYTHON, "-m", "tracker", "serve"],
        env=child_env(tmp_path / "missing-dir" / "t.db"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("tracker: cannot open database") and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
