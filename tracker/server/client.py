"""A small MCP client for `tracker serve` over stdio, for the demo and scripts (tests use the SDK directly)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, TextIO

from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from ..errors import TrackerError


class ToolSession:
    """Calls tools and returns their structured answers; a tool error raises TrackerError with its text."""

    def __init__(self, session: ClientSession) -> None:
        self.session = session

    async def call(self, tool: str, **arguments: Any) -> Any:
        result = await self.session.call_tool(tool, arguments)
        if result.is_error:
            text = result.content[0].text if result.content else "tool error"
            raise TrackerError(f"{tool}: {text}")
        return result.structured_content


@asynccontextmanager
async def serve_session(env: Mapping[str, str], errlog: TextIO) -> AsyncIterator[ToolSession]:
    """Start `python -m tracker serve` with this environment and open a session to it."""
    params = StdioServerParameters(command=sys.executable, args=["-m", "tracker", "serve"], env=dict(env))
    async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield ToolSession(session)
