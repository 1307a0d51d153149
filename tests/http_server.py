"""MCP sessions over the official Python client's Streamable HTTP transport (mcp.client.streamable_http, an httpx2
client carrying the Authorization header) on `python -m tracker serve --http 127.0.0.1:0` subprocesses
(tracker.testing.http_server.HttpServer, the one launcher)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx2
from anyio.from_thread import start_blocking_portal
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client

from tracker.testing.client import SyncToolClient, ToolClient
from tracker.testing.http_server import HttpServer

ACCEPT = "application/json, text/event-stream"


@contextmanager
def http_server(db: Path, args: Sequence[str] = (), **env: str) -> Iterator[HttpServer]:
    with HttpServer(db, args, env) as server:
        yield server


@contextmanager
def http_servers(*servers: HttpServer) -> Iterator[tuple[HttpServer, ...]]:
    """Servers started together (their starts overlap), each listening on entry, all stopped on exit."""
    try:
        for server in servers:
            server.wait_listening()
        yield servers
    finally:
        for server in servers:
            server.stop()


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token is not None else {}


@asynccontextmanager
async def http_session(url: str, token: str | None) -> AsyncIterator[ToolClient]:
    """An MCP session over Streamable HTTP, as an MCP client of today opens one (the initialize handshake)."""
    timeout = httpx2.Timeout(30.0, read=120.0)
    async with httpx2.AsyncClient(headers=bearer(token), timeout=timeout) as http:
        async with Client(streamable_http_client(url, http_client=http), mode="legacy", cache=None) as client:
            yield ToolClient(client)


@contextmanager
def sync_http_session(url: str, token: str | None) -> Iterator[SyncToolClient]:
    """http_session() from plain code."""
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(http_session(url, token)) as client:
        yield SyncToolClient(portal, client)


def post(url: str, body: bytes | str, token: str | None = None, **headers: str) -> httpx2.Response:
    """One raw POST to the server (no MCP client): for the HTTP-level answers."""
    sent = {"Content-Type": "application/json", "Accept": ACCEPT, **bearer(token), **headers}
    return httpx2.post(url, content=body, headers=sent, timeout=30.0)


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(every)
