"""A real MCP client for the tests: a stdio session against a `python -m tracker ...` subprocess."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from tracker.testing.env import child_env as subprocess_env

from .conftest import PYTHON, REPO


@asynccontextmanager
async def mcp_session(
    db: Path | str, errlog: Path, args: list[str] | None = None, **env: str
) -> AsyncIterator[ClientSession]:
    """A client session with a fresh server subprocess on `db` (`tracker serve` unless args say otherwise), with
    extra environment; the server's stderr goes to `errlog`."""
    params = StdioServerParameters(
        command=PYTHON, args=args or ["-m", "tracker", "serve"], env=subprocess_env(db, **env), cwd=str(REPO)
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
