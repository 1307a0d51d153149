"""Helpers for the reliability tests: one real stdio MCP session driven from synchronous code (hypothesis runs
its examples synchronously, so the session lives in an anyio blocking portal), and read-only looks at the
database from outside the server (a checksum of what a tool could write, integrity, counters vs item rows)."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.types import Tool

from tracker.db import sqlite_module
from tracker.testing.env import child_env as subprocess_env

from .conftest import PYTHON, REPO

CALL_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Answer:
    is_error: bool
    text: str  # the first text content (the error message, or the JSON of the answer)
    value: Any  # the structured answer, None for an error


class SyncSession:
    """A ClientSession on a `python -m tracker serve` subprocess, called from plain (non-async) code."""

    def __init__(self, portal: BlockingPortal, session: ClientSession) -> None:
        self._portal = portal
        self._session = session
        self.tools: dict[str, Tool] = {tool.name: tool for tool in portal.call(self._list_tools)}

    async def _list_tools(self) -> list[Tool]:
        return (await self._session.list_tools()).tools

    async def _call(self, name: str, arguments: dict[str, Any]) -> Answer:
        with anyio.fail_after(CALL_TIMEOUT_S):
            result = await self._session.call_tool(name, arguments)
        text = result.content[0].text if result.content and hasattr(result.content[0], "text") else ""
        return Answer(bool(result.is_error), text, None if result.is_error else result.structured_content)

    def call(self, name: str, arguments: dict[str, Any]) -> Answer:
        return self._portal.call(self._call, name, arguments)


@contextmanager
def sync_session(
    db: str | Path, errlog: Path, args: tuple[str, ...] = ("serve",), **env: str | None
) -> Iterator[SyncSession]:
    """`python -m tracker <args>` on `db` (a path or URL) with extra environment (None removes a variable);
    stderr appended to `errlog`."""
    server_env = subprocess_env(db, **{name: value for name, value in env.items() if value is not None})
    for name, value in env.items():
        if value is None:
            server_env.pop(name, None)

    @asynccontextmanager
    async def session():
        params = StdioServerParameters(command=PYTHON, args=["-m", "tracker", *args], env=server_env, cwd=str(REPO))
        with errlog.open("a") as log:
            async with stdio_client(params, errlog=log) as (read, write), ClientSession(read, write) as opened:
                await opened.initialize()
                yield opened

    with start_blocking_portal() as portal, portal.wrap_async_context_manager(session()) as opened:
        yield SyncSession(portal, opened)


@contextmanager
def refused_port() -> Iterator[int]:
    """A 127.0.0.1 port that is bound but never listens: every connection to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# -- the database, seen from outside ------------------------------------------------------------------------------

CHECKSUM_QUERIES = ("SELECT * FROM operations ORDER BY id", "SELECT * FROM operation_items ORDER BY seq")


def _rows(db: str, queries: tuple[str, ...]) -> list[list[tuple]]:
    if "://" in db and not db.startswith("sqlite"):
        import psycopg

        url = db.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(url, autocommit=True) as conn:
            return [conn.execute(q).fetchall() for q in queries]
    path = db.removeprefix("sqlite:///")
    conn = sqlite_module().connect(path)
    try:
        return [conn.execute(q).fetchall() for q in queries]
    finally:
        conn.close()


def checksum(db: str | Path) -> str:
    """sha256 over every row of operations and operation_items, through a separate read connection."""
    digest = hashlib.sha256()
    for rows in _rows(str(db), CHECKSUM_QUERIES):
        for row in rows:
            digest.update(repr(tuple(row)).encode("utf-8", "backslashreplace"))
        digest.update(b"|")
    return digest.hexdigest()


def counters_and_items(db: str | Path) -> tuple[list[tuple], list[tuple]]:
    """(id, kind, status, succeeded_count, failed_count) of every operation, and (operation_id, ok, count) of
    its item rows, for checking that the counters equal the rows."""
    operations, items = _rows(
        str(db),
        (
            "SELECT id, kind, status, succeeded_count, failed_count FROM operations ORDER BY id",
            "SELECT operation_id, ok, count(*) FROM operation_items GROUP BY operation_id, ok",
        ),
    )
    return operations, items


def assert_counters_match_items(db: str | Path) -> None:
    operations, items = counters_and_items(db)
    counted = {(op_id, bool(ok)): n for op_id, ok, n in items}
    for op_id, kind, _status, succeeded, failed in operations:
        assert (succeeded, failed) == (counted.get((op_id, True), 0), counted.get((op_id, False), 0)), op_id


def integrity_check(path: str | Path) -> str:
    conn = sqlite_module().connect(str(path))
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
