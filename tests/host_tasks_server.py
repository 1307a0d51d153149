"""A host MCP server that makes one of its own tools durable with tracker's tasks (the README's three lines), and
mounts tracker's status tools beside it; stdio, database TRACKER_DB. tests/test_ts_tasks_clients.py drives it."""

from __future__ import annotations

import asyncio

import anyio
from mcp.server.mcpserver import MCPServer

from tracker import Tracker
from tracker.server import mount_status_tools, run_stdio
from tracker.server.tasks import TaskPolicy, TrackerTasks, current_task


def build(tracker: Tracker) -> MCPServer:
    tasks = TrackerTasks(tracker, {"export_report": TaskPolicy("optional", rerun=True)})
    server = MCPServer(name="reports", extensions=[tasks], middleware=[tasks.legacy], lifespan=tasks.lifespan)
    tasks.bind(server)

    @server.tool()
    async def export_report(month: str, sections: int = 3) -> str:
        """Exports one month's report, a section at a time."""
        handle = current_task()  # None in a plain call
        if handle is not None:
            handle.set_total(sections)
        for n in range(1, sections + 1):
            await asyncio.sleep(0.1)
            if handle is not None:
                handle.record_success(f"{month}-section-{n}")
        return f"report {month}: {sections} sections"

    mount_status_tools(server, tracker)
    return server


if __name__ == "__main__":
    with Tracker.open() as opened:
        anyio.run(run_stdio, build(opened))
