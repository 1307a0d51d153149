"""`python -m tracker serve --http 127.0.0.1:0` as a real subprocess on this checkout, and MCP sessions on it over the
official Python client's Streamable HTTP transport (mcp.client.streamable_http, an httpx2 client carrying the
Authorization header)."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx2
from anyio.from_thread import start_blocking_portal
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client

from tracker.testing.client import SyncToolClient, ToolClient
from tracker.testing.env import child_env

from .conftest import PYTHON, REPO

LISTENING = re.compile(r"listening on (http://\S+/mcp)")
START_TIMEOUT_S = 30.0
ACCEPT = "application/json, text/event-stream"


class HttpServer:
    """`python -m tracker serve --http 127.0.0.1:0 ARGS` on `db`; its stderr is collected (a thread drains the pipe)
    and its URL read from the listening line."""

    def __init__(self, db: Path, args: Sequence[str] = (), address: str = "127.0.0.1:0", **env: str) -> None:
        """Starts the process; the first use of `url` waits until it listens (so several can start at once)."""
        self.process = subprocess.Popen(
            [PYTHON, "-m", "tracker", "serve", "--http", address, *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=child_env(db, **env), cwd=REPO,
        )
        self._lines: list[str] = []
        self._listening = threading.Event()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        self._url: str | None = None

    @property
    def url(self) -> str:
        return self.wait_listening()

    def wait_listening(self) -> str:
        """The URL from the listening line, once it is printed."""
        if self._url is None:
            if not self._listening.wait(START_TIMEOUT_S):
                raise AssertionError(f"tracker serve --http did not say where it listens:\n{self.stderr}")
            found = LISTENING.search(self.stderr)
            assert found, f"tracker serve --http ended without listening:\n{self.stderr}"
            self._url = found.group(1)
        return self._url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/")[0])

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._lines.append(line)
            if LISTENING.search(line):
                self._listening.set()
        self._listening.set()  # it ended without listening: stop waiting

    @property
    def stderr(self) -> str:
        return "".join(self._lines)

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(5)


@contextmanager
def http_server(db: Path, args: Sequence[str] = (), **env: str) -> Iterator[HttpServer]:
    server = HttpServer(db, args, **env)
    try:
        server.wait_listening()
        yield server
    finally:
        server.stop()


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
