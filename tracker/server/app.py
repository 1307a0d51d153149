"""The MCP server: `serve(settings)` runs tracker's own stdio server, and `mount_status_tools` adds the status
tools to any MCPServer, so a host server keeps its own tools and gains durable status."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from ..aio import off_loop
from ..api import Tracker
from ..db import database_url, describe
from ..errors import DatabaseUnavailable, TrackerError
from ..reaper import PeriodicReaper
from ..remote import RunsService
from ..settings import Settings
from .grid_tools import mount_grid_tools
from .run_tools import mount_run_tools, run_lifespan
from .status_tools import StatusTools
from .stdio import run_stdio
from .tasks import TrackerTasks
from .tasks.own import own_policies

log = logging.getLogger(__name__)

INSTRUCTIONS = (
    "tracker keeps the status of long-running batch operations and remote runs in a database shared by every "
    "process, so status survives restarts. Poll get_batch_status or get_run_status every 2-5 seconds while an "
    "operation is running; use list_operations to find operations and get_operation_items to page through "
    "the ids or failures of a large batch. To run a grid: list_grids finds its grid_id, get_grid_details names its "
    "input labels, run_grid runs one row (run_grid_batch many), and get_run_status polls a run by its request_id "
    "or operation_id."
)
RETRY_OPEN_AFTER_S = 1.0  # a tool call within this long of a failed open answers its error without trying again


def mount_status_tools(server: MCPServer, tracker: Tracker, runs: RunsService | None = None) -> None:
    """Add get_batch_status, get_run_status, list_operations, get_operation_items and cancel_operation to
    `server`, answering from `tracker`'s database. The server's own tools stay as they are. get_run_status polls
    the upstream when BITSCALE_API_KEY is set (else it answers from the table); pass the server's RunsService
    if it has one (and run `run_lifespan(runs)` as the server's lifespan, so its HTTP client is closed and running
    runs are polled in the background too)."""
    StatusTools(tracker).register(server)
    mount_run_tools(server, runs or RunsService(tracker.settings, tracker.engine), status_only=True)


def _server_version() -> str:
    try:
        return version("tracker")
    except PackageNotFoundError:  # pragma: no cover - running from a plain checkout
        return ""


def _mount_all(server: MCPServer, tracker: Tracker, runs: RunsService) -> MCPServer:
    StatusTools(tracker).register(server)
    mount_run_tools(server, runs)
    mount_grid_tools(server, runs)
    return server


def build_server(tracker: Tracker) -> MCPServer:
    """tracker's tools over an open Tracker."""
    runs = RunsService(tracker.settings, tracker.engine)
    server = MCPServer(name="tracker", instructions=INSTRUCTIONS, version=_server_version(), lifespan=run_lifespan(runs))
    return _mount_all(server, tracker, runs)


class _WhenOpen:
    """Stands in for an object that exists only once the database is open: `settings` at once (the tools read
    it when they are registered), everything else from the real object, which the tool-call gate opens first."""

    def __init__(self, settings: Settings, get: Callable[[], Any]) -> None:
        self.settings = settings
        self._get = get

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)


class ServedDatabase:
    """The Tracker, reaper and runs service of `tracker serve`, opened when the database answers: at start, or on
    a later tool call. A database server that is down or silent does not keep the server from answering
    initialize and tools/list; until it answers, every tool call tries again (at most once a second) and returns
    the one-line reason, each try bounded by TRACKER_DB_TIMEOUT."""

    def __init__(self, settings: Settings, extra: Callable[[MCPServer, TrackerTasks], None] | None = None) -> None:
        """`extra(server, tasks)` adds a host's own tools (and their task policies) to the served server."""
        self.settings = settings
        self.extra = extra
        self.tasks: TrackerTasks | None = None
        self.tracker: Tracker | None = None
        self.runs: RunsService | None = None
        self._reaper: PeriodicReaper | None = None
        self._lock = asyncio.Lock()
        self._failed: tuple[float, str] | None = None  # (monotonic time, message) of the last failed open
        self._background: asyncio.Task[None] | None = None

    @property
    def is_server(self) -> bool:
        """A database server can come back; a file that cannot be used will not fix itself."""
        try:
            return make_url(database_url(self.settings.db)).get_backend_name() != "sqlite"
        except ArgumentError:
            return False

    def open_tracker(self) -> Tracker:
        """Open (and migrate) the database and start the reaper; blocking. Raises DatabaseUnavailable."""
        if self.tracker is None:
            tracker = Tracker(self.settings)
            log.info("tracker serve: database %s", describe(self.settings.db))
            # Fails what dead predecessors left running at once, then purges every reap interval (0: never).
            self._reaper = PeriodicReaper(tracker.engine, self.settings)
            self._reaper.start()
            self.tracker = tracker
        return self.tracker

    def _unavailable(self) -> DatabaseUnavailable:
        reason = self._failed[1] if self._failed else f"database {describe(self.settings.db)} is not open yet"
        return DatabaseUnavailable(reason)

    async def ensure_open(self) -> None:
        """Open everything unless it is; raises DatabaseUnavailable. Concurrent callers share one attempt."""
        if self.runs is not None:
            return
        async with self._lock:
            if self.runs is not None:
                return
            if self._failed and time.monotonic() - self._failed[0] < RETRY_OPEN_AFTER_S:
                raise self._unavailable()
            try:
                tracker = await off_loop(self.open_tracker, wait_on_cancel=True)
            except DatabaseUnavailable as exc:
                self._failed = (time.monotonic(), str(exc))
                raise
            self._failed = None
            runs = RunsService(self.settings, tracker.engine)
            try:
                await runs.start()
            except TrackerError as exc:
                log.warning("remote runs: could not start polling and batch resumption: %s", exc)
            self.runs = runs
            if self.tasks is not None:
                self.tasks.runtime.start()  # takes over or fails the tasks of servers that died

    async def _open_in_background(self) -> None:
        try:
            await self.ensure_open()
        except DatabaseUnavailable as exc:
            log.warning("tracker serve: %s; serving anyway: tools answer this until the database answers", exc)

    @asynccontextmanager
    async def lifespan(self, _server: MCPServer) -> AsyncIterator[None]:
        # In the background: initialize is answered at once, even while the database is silent.
        self._background = asyncio.create_task(self._open_in_background())
        try:
            yield
        finally:
            self._background.cancel()
            await asyncio.gather(self._background, return_exceptions=True)
            if self.tasks is not None:
                await self.tasks.runtime.aclose()
            if self.runs is not None:
                await self.runs.aclose()

    def close(self) -> None:
        if self._reaper is not None:
            self._reaper.stop()
        if self.tracker is not None:
            self.tracker.close()

    def _opened(self, part: str) -> Any:
        value = getattr(self, part)
        if value is None:
            raise self._unavailable()
        return value

    def build_server(self, **options: Any) -> MCPServer:
        """tracker's tools, each call opening the database first if it is not open yet. `options` go to MCPServer
        (`tracker serve --http` passes its auth and token_verifier)."""
        tracker = _WhenOpen(self.settings, lambda: self._opened("tracker"))
        runs = _WhenOpen(self.settings, lambda: self._opened("runs"))
        tasks = TrackerTasks(tracker, own_policies(self.settings), ready=self.ensure_open)  # type: ignore[arg-type]
        server = _GatedServer(
            self,
            name="tracker",
            instructions=INSTRUCTIONS,
            version=_server_version(),
            lifespan=self.lifespan,
            extensions=[tasks],
            middleware=[tasks.legacy],
            **options,
        )
        tasks.bind(server)
        self.tasks = tasks
        _mount_all(server, tracker, runs)  # type: ignore[arg-type]
        if self.extra is not None:
            self.extra(server, tasks)
        return server


class _GatedServer(MCPServer):
    """Every tool call first makes sure the database is open; if it cannot be, the call answers why (one line)."""

    def __init__(self, database: ServedDatabase, **options: Any) -> None:
        super().__init__(**options)
        self._database = database

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        try:
            await self._database.ensure_open()
        except DatabaseUnavailable as exc:
            raise ToolError(f"Error executing tool {name}: {exc}") from None  # worded as the SDK words ToolError
        return await super().call_tool(name, arguments, context)


def serve(settings: Settings, extra: Callable[[MCPServer, TrackerTasks], None] | None = None) -> None:
    """Run the stdio server until the client closes stdin. stdout carries only the protocol; a line that cannot be
    parsed gets a JSON-RPC error answer (stdio.py). A database file that cannot be used stops it at once
    (DatabaseUnavailable: one line, exit 1); a database server that does not answer does not (see ServedDatabase)."""
    database = ServedDatabase(settings, extra)
    if not database.is_server:
        database.open_tracker()
    try:
        anyio.run(run_stdio, database.build_server())
    finally:
        database.close()
