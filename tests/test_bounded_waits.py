"""Bounded waits on PostgreSQL: a server that accepts connections and never answers (tests/tcp_proxy.py's
SilentListener), or a partition (TcpProxy.go_silent), gives DatabaseUnavailable within about TRACKER_DB_TIMEOUT
instead of a hang: the CLI prints one line and exits 1, `tracker serve` answers initialize and one-line tool
errors, a recorder's flush() raises and keeps its group for the next try. Durations are printed (run with -s),
and asserted only against bounds a hang would exceed."""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from tracker import DatabaseUnavailable, Settings, Tracker
from tracker.db import open_engine
from tracker.testing.env import child_env

from .conftest import PYTHON, REPO
from .sessions import ToolAnswer, mcp_session
from .tcp_proxy import SilentListener, TcpProxy

pytestmark = pytest.mark.timeout(90)

ALL_TOOLS = {
    "get_batch_status", "get_run_status", "list_operations", "get_operation_items", "cancel_operation",
    "run_grid", "run_grid_batch", "get_workspace_details", "list_grids", "get_grid_details", "get_grid_curl",
}
VALID_CALLS = {
    "get_batch_status": {"batch_operation_id": "batch_import_x"},
    "get_run_status": {"request_id": "req_x"},
    "list_operations": {},
    "get_operation_items": {"operation_id": "batch_import_x"},
    "cancel_operation": {"operation_id": "batch_import_x"},
    "run_grid": {"grid_id": "g", "inputs": {"a": "b"}, "mode": "async"},
    "run_grid_batch": {"grid_id": "g", "rows": [{"a": "b"}]},
    "get_workspace_details": {},
    "list_grids": {"search": "lead"},
    "get_grid_details": {"grid_id": "g"},
    "get_grid_curl": {"grid_id": "g"},
}
HANG = 40.0  # seconds: far beyond the bound, well under the pytest timeout

_numbers = itertools.count()


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def silent():
    listener = SilentListener()
    yield listener
    listener.stop()


@pytest.fixture
def pg_database(postgres_server) -> tuple[int, str]:
    """A fresh, migrated database on the test server: (port, name)."""
    name = f"bw{os.getpid()}_{next(_numbers)}"
    url = postgres_server.create_database(name)
    open_engine(Settings.from_env({}, db=url)).dispose()
    return postgres_server.port, name


def _url(port: int, name: str) -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:{port}/{name}"


def _one_line_naming(message: str, port: int) -> None:
    assert message.count("\n") == 0, message
    assert "Traceback" not in message and f"127.0.0.1:{port}" in message, message


# -- the CLI ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [["ls"], ["reap"], ["show", "batch_import_x"], ["watch", "batch_import_x"], ["db", "current"], ["ls", "--json"]],
    ids=lambda c: " ".join(c),
)
def test_cli_against_a_silent_server_fails_in_one_line(silent: SilentListener, command: list[str]) -> None:
    # A short bound keeps the tests fast (2 s: connect_timeout is never shorter); that the bound is the one setting
    # is tested below (7 s).
    started = time.monotonic()
    result = subprocess.run(
        [PYTHON, "-m", "tracker", *command], env=child_env(silent.url(), TRACKER_DB_TIMEOUT="2s"), cwd=REPO,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=HANG,
    )
    elapsed = time.monotonic() - started
    print(f"tracker {' '.join(command)} against a silent server: exit {result.returncode} after {elapsed:.1f}s")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("tracker: ") and result.stderr.endswith("\n")
    _one_line_naming(result.stderr.rstrip("\n"), silent.port)


# -- tracker serve ------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_serve_on_a_silent_server_answers_initialize_and_one_line_tool_errors(
    tmp_path: Path, silent: SilentListener
) -> None:
    with anyio.fail_after(HANG):
        async with mcp_session(silent.url(), tmp_path / "serve.log", TRACKER_DB_TIMEOUT="2s") as session:
            assert set(await session.list_tools()) == ALL_TOOLS
            for tool, arguments in VALID_CALLS.items():
                started = time.monotonic()
                is_error, message = _pair(await session.call(tool, **arguments))
                print(f"{tool} against a silent server: error after {time.monotonic() - started:.1f}s: {message}")
                assert is_error, message
                _one_line_naming(message, silent.port)
            assert await session.list_tools()  # still up
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


@pytest.mark.anyio
async def test_serve_uses_a_database_that_comes_back_and_survives_a_partition(
    tmp_path: Path, pg_database: tuple[int, str]
) -> None:
    port, name = pg_database
    with TcpProxy("127.0.0.1", port) as proxy, anyio.fail_after(3 * HANG):
        proxy.go_silent()  # silent from the start: serve cannot open the database
        async with mcp_session(_url(proxy.port, name), tmp_path / "serve.log", TRACKER_DB_TIMEOUT="2s") as session:
            is_error, message = _pair(await session.call("list_operations"))
            assert is_error
            _one_line_naming(message, proxy.port)

            proxy.forward()
            answer = await _until_answered(session)
            assert answer["operations"] == []

            proxy.go_silent()  # a partition while it serves: the pooled connection stops answering
            started = time.monotonic()
            is_error, message = _pair(await session.call("list_operations"))
            print(f"list_operations during a partition: error after {time.monotonic() - started:.1f}s: {message}")
            assert is_error
            _one_line_naming(message, proxy.port)

            proxy.forward()
            assert (await _until_answered(session))["operations"] == []


def _pair(answer: ToolAnswer) -> tuple[bool, Any]:
    """(is_error, the error text or the structured answer)."""
    return answer.is_error, answer.text if answer.is_error else answer.value


async def _until_answered(session) -> dict:  # noqa: ANN001
    deadline = time.monotonic() + HANG
    while True:
        is_error, value = _pair(await session.call("list_operations"))
        if not is_error:
            return value
        assert time.monotonic() < deadline, value
        await anyio.sleep(0.1)


# -- the library: a recorder's flush during a partition ------------------------------------------------------------


def test_flush_during_a_partition_raises_and_keeps_the_group(pg_database: tuple[int, str]) -> None:
    port, name = pg_database
    # No time-based flushes: only the explicit ones below write.
    env = {"TRACKER_DB_TIMEOUT": "2s", "TRACKER_FLUSH_INTERVAL": "1h"}
    with TcpProxy("127.0.0.1", port) as proxy:
        tracker = Tracker.open(db=_url(proxy.port, name), env=env)
        try:
            batch = tracker.start_batch("import", total=150)
            for n in range(100):
                batch.record_success(f"item-{n}")
            assert batch.flush() == 100

            for n in range(100, 150):
                batch.record_success(f"item-{n}")
            proxy.go_silent()
            started = time.monotonic()
            with pytest.raises(DatabaseUnavailable) as raised:
                batch.flush()
            elapsed = time.monotonic() - started
            print(f"flush during a partition: DatabaseUnavailable after {elapsed:.1f}s: {raised.value}")
            assert elapsed < HANG
            _one_line_naming(str(raised.value), proxy.port)
            assert batch.durable_count == 100

            proxy.forward()
            assert batch.flush() == 50
            assert batch.durable_count == 150
            batch.finish()
        finally:
            tracker.close()

    with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname={name}") as direct:
        counts = direct.execute("SELECT succeeded_count, failed_count FROM operations WHERE id = %s", [batch.id]).fetchone()
        ids = [row[0] for row in direct.execute(
            "SELECT item_id FROM operation_items WHERE operation_id = %s ORDER BY seq", [batch.id]
        )]
    assert counts == (150, 0)
    assert ids == [f"item-{n}" for n in range(150)]  # each exactly once, in order


# -- the engine: what a deadline does to the connection -------------------------------------------------------------


def test_a_statement_without_answer_closes_the_connection_and_it_leaves_the_pool(pg_database: tuple[int, str]) -> None:
    port, name = pg_database
    with TcpProxy("127.0.0.1", port) as proxy:
        engine = open_engine(Settings.from_env({"TRACKER_DB_TIMEOUT": "2s"}, db=_url(proxy.port, name)), migrate=False)
        try:
            with engine.connect() as conn:
                assert conn.execute(text("SELECT 1")).scalar() == 1
                raw = conn.connection.driver_connection
                proxy.go_silent()
                started = time.monotonic()
                with pytest.raises(OperationalError) as raised:
                    conn.execute(text("SELECT 2"))
                assert time.monotonic() - started < HANG
                assert raised.value.connection_invalidated  # SQLAlchemy saw a disconnect: the connection is gone
            assert raw.closed
            proxy.forward()
            with engine.connect() as conn:  # a new connection (the pool kept none), through the healed network
                assert conn.execute(text("SELECT 3")).scalar() == 3
            assert proxy.connections == 2
        finally:
            engine.dispose()


def test_a_broken_pooled_connection_is_replaced_on_checkout(pg_database: tuple[int, str]) -> None:
    """The checkout ping (in place of pool_pre_ping) still hides a server restart: the caller never sees it."""
    port, name = pg_database
    with TcpProxy("127.0.0.1", port) as proxy:
        engine = open_engine(Settings.from_env({"TRACKER_DB_TIMEOUT": "2s"}, db=_url(proxy.port, name)), migrate=False)
        try:
            with engine.connect() as conn:
                assert conn.execute(text("SELECT 1")).scalar() == 1
            assert proxy.cut_all() == 1  # the pooled connection dies, as when the server restarts
            with engine.connect() as conn:
                assert conn.execute(text("SELECT 2")).scalar() == 2
            assert proxy.connections == 2
        finally:
            engine.dispose()


def test_the_server_side_timeouts_follow_the_one_setting(pg_database: tuple[int, str]) -> None:
    port, name = pg_database
    engine = open_engine(Settings.from_env({"TRACKER_DB_TIMEOUT": "7s"}, db=_url(port, name)), migrate=False)
    try:
        with engine.connect() as conn:
            shown = {
                setting: conn.execute(text(f"SHOW {setting}")).scalar()
                for setting in ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout", "TimeZone")
            }
            keepalives = conn.connection.driver_connection.info.get_parameters()
    finally:
        engine.dispose()
    assert shown["statement_timeout"] == "7s" and shown["lock_timeout"] == "7s" and shown["TimeZone"] == "UTC"
    assert shown["idle_in_transaction_session_timeout"] != "0"
    assert keepalives.get("keepalives_idle") and keepalives.get("tcp_user_timeout") == "7000", keepalives
