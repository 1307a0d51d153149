"""Helpers for the remote-run tests that speak MCP: a real stdio session against `python -m tracker serve`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from .conftest import PYTHON, REPO, FakeUpstreamProcess, subprocess_env


@asynccontextmanager
async def tracker_session(
    db: Path, fake: FakeUpstreamProcess, errlog: Path, **env: str
) -> AsyncIterator[ClientSession]:
    """A client session with a fresh `tracker serve` on `db`, its upstream the fake; stderr goes to `errlog`."""
    params = StdioServerParameters(
        command=PYTHON,
        args=["-m", "tracker", "serve"],
        env=subprocess_env(db, **fake.env(), TRACKER_POLL_INTERVAL="0.3", **env),
        cwd=str(REPO),
    )
    with errlog.open("a") as log:
        async with stdio_client(params, errlog=log) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            yield session


async def call(session: ClientSession, tool: str, **arguments: Any) -> tuple[bool, Any]:
    """(is_error, the error text or the structured answer)."""
    result = await session.call_tool(tool, arguments)
    if result.is_error:
        return True, result.content[0].text
    return False, result.structured_content


async def answer(session: ClientSession, tool: str, **arguments: Any) -> Any:
    is_error, value = await call(session, tool, **arguments)
    assert not is_error, value
    return value
