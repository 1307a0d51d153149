"""The MCP server: `serve(settings)` runs tracker's own stdio server, and `mount_status_tools` adds the status
tools to any MCPServer, so a host server keeps its own tools and gains durable status."""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

import anyio
from mcp.server.mcpserver import MCPServer

from ..api import Tracker
from ..db import describe
from ..reaper import PeriodicReaper
from ..runs import RunsService
from ..settings import Settings
from .run_tools import mount_run_tools, run_lifespan
from .status_tools import StatusTools

log = logging.getLogger(__name__)

INSTRUCTIONS = (
    "tracker keeps the status of long-running batch operations and remote runs in a database shared by every "
    "process, so status survives restarts. Poll get_batch_status or get_run_status every 2-5 seconds while an "
    "operation is running; use list_operations to find operations and get_operation_items to page through "
    "the ids or failures of a large batch."
)


def mount_status_tools(server: MCPServer, tracker: Tracker, include_run_status: bool = True) -> None:
    """Add get_batch_status, get_run_status, list_operations, get_operation_items and cancel_operation to
    `server`, answering from `tracker`'s database. The server's own tools stay as they are.
    include_run_status=False leaves get_run_status out, for a server that registers its own."""
    StatusTools(tracker).register(server, include_run_status=include_run_status)


def build_server(tracker: Tracker) -> MCPServer:
    try:
        server_version = version("tracker")
    except PackageNotFoundError:  # pragma: no cover - running from a plain checkout
        server_version = ""
    runs = RunsService(tracker.settings, tracker.engine)
    server = MCPServer(
        name="tracker", instructions=INSTRUCTIONS, version=server_version, lifespan=run_lifespan(runs)
    )
    mount_status_tools(server, tracker, include_run_status=False)  # run_tools' get_run_status polls the upstream
    mount_run_tools(server, runs)
    return server


def serve(settings: Settings) -> None:
    """Run the stdio server until the client closes stdin. stdout carries only the protocol."""
    with Tracker(settings) as tracker:
        log.info("tracker serve: database %s", describe(settings.db))
        # Fails what dead predecessors left running at once, then purges every reap interval (0: never).
        reaper = PeriodicReaper(tracker.engine, settings)
        reaper.start()
        try:
            anyio.run(build_server(tracker).run_stdio_async)
        finally:
            reaper.stop()
