"""One MCP client for tests, scripts and the demo: a session over an in-process server object (the SDK's
in-memory Client, no subprocess), over a `python -m tracker ...` stdio subprocess, or over Streamable HTTP to a
running server (`tracker serve --http`; tracker.testing.http_server starts one), each usable from async code
(`ToolClient`) or plain code (`SyncToolClient`, the session in an anyio blocking portal). A tool call answers a
`ToolAnswer` (error text or structured content); `answer()` returns the structured content or raises
ToolCallError with the tool's error text."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp.types import Tool

from ..errors import ToolCallError
from ..settings import Settings

CALL_TIMEOUT_S = 60.0  # a call that takes longer is a hung server: fail the test instead of waiting for ever


@dataclass(frozen=True)
class ToolAnswer:
    is_error: bool
    text: str  # the first text content: the error message, or the JSON of the answer
    value: Any  # the structured content; None for an error


class ToolClient:
    """Calls tools on one open session, from async code."""

    def __init__(self, client: Client) -> None:
        self.client = client

    @property
    def session(self) -> Any:
        """The SDK's ClientSession, for what this class does not wrap."""
        return self.client.session

    async def list_tools(self) -> dict[str, Tool]:
        return {tool.name: tool for tool in (await self.client.list_tools()).tools}

    async def call(self, tool: str, arguments: Mapping[str, Any] | None = None, **kwargs: Any) -> ToolAnswer:
        """Call `tool` with `arguments` (a mapping, for names that are not identifiers) and/or keywords."""
        with anyio.fail_after(CALL_TIMEOUT_S):
            result = await self.client.call_tool(tool, {**(arguments or {}), **kwargs})
        first = result.content[0] if result.content else None
        text = getattr(first, "text", "") if first is not None else ""
        is_error = bool(result.is_error)
        return ToolAnswer(is_error, text, None if is_error else result.structured_content)

    async def answer(self, tool: str, arguments: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        """The structured answer; a tool error raises ToolCallError."""
        answered = await self.call(tool, arguments, **kwargs)
        if answered.is_error:
            raise ToolCallError(f"{tool}: {answered.text or 'tool error'}")
        return answered.value


@asynccontextmanager
async def in_process(server: MCPServer) -> AsyncIterator[ToolClient]:
    """A session on a server object in this process (its lifespan runs for the session's length)."""
    async with Client(server, cache=None) as client:
        yield ToolClient(client)


@asynccontextmanager
async def stdio(
    env: Mapping[str, str],
    errlog: IO[str] | None = None,
    args: Sequence[str] = ("-m", "tracker", "serve"),
    cwd: str | Path | None = None,
    python: str = sys.executable,
) -> AsyncIterator[ToolClient]:
    """A session on a fresh `python <args>` subprocess (`tracker serve` unless args say otherwise) with exactly
    this environment; its stderr goes to `errlog` (default: ours). The initialize handshake, as MCP clients of
    today speak it."""
    params = StdioServerParameters(
        command=python, args=list(args), env=dict(env), cwd=str(cwd) if cwd is not None else None
    )
    transport = stdio_client(params, errlog=errlog if errlog is not None else sys.stderr)
    async with Client(transport, mode="legacy", cache=None) as client:
        yield ToolClient(client)


@asynccontextmanager
async def http(url: str) -> AsyncIterator[ToolClient]:
    """A session on the Streamable HTTP server at `url` (http://127.0.0.1:PORT/mcp), with the initialize handshake
    as stdio() does it. The session has one HTTP client of its own, so its calls reuse kept-alive connections."""
    async with Client(streamable_http_client(url), mode="legacy", cache=None) as client:
        yield ToolClient(client)


@asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[ToolClient]:
    """`tracker serve` in this process: the same ServedDatabase, tools, gate and lifespan (reaper, run polling)
    over `settings`, with an in-process session instead of stdio. The database is closed on the way out."""
    from ..server.app import ServedDatabase

    database = ServedDatabase(settings)
    try:
        if not database.is_server:
            database.open_tracker()  # as serve() does: a bad file fails here, before any session
        async with in_process(database.build_server()) as client:
            yield client
    finally:
        database.close()


# -- the same from plain code ---------------------------------------------------------------------------------------


class SyncToolClient:
    """A ToolClient driven from synchronous code (hypothesis runs its examples synchronously)."""

    def __init__(self, portal: BlockingPortal, client: ToolClient) -> None:
        self._portal = portal
        self.client = client
        self.tools: dict[str, Tool] = portal.call(client.list_tools)

    def call(self, tool: str, arguments: Mapping[str, Any] | None = None, **kwargs: Any) -> ToolAnswer:
        return self._portal.call(lambda: self.client.call(tool, arguments, **kwargs))

    def answer(self, tool: str, arguments: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        return self._portal.call(lambda: self.client.answer(tool, arguments, **kwargs))


@contextmanager
def _sync(opened: Any) -> Iterator[SyncToolClient]:
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(opened) as client:
        yield SyncToolClient(portal, client)


def sync_in_process(server: MCPServer) -> Any:
    """in_process() from plain code: `with sync_in_process(server) as client: client.call(...)`."""
    return _sync(in_process(server))


def sync_served(settings: Settings) -> Any:
    """served() from plain code."""
    return _sync(served(settings))


def sync_stdio(
    env: Mapping[str, str],
    errlog: IO[str] | None = None,
    args: Sequence[str] = ("-m", "tracker", "serve"),
    cwd: str | Path | None = None,
) -> Any:
    """stdio() from plain code."""
    return _sync(stdio(env, errlog, args, cwd))
