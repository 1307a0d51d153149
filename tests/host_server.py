"""A small task-management MCP server with tools of its own, as tests/test_mcp_server.py mounts tracker on it.

Its batch tool returns the batch_operation_id at once and does the work in a background thread, recording each
item; the client polls get_batch_status (mounted from tracker) for live progress. Database: TRACKER_DB."""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer

from tracker import BatchHandle, Tracker
from tracker.server import mount_status_tools
from tracker.server.caller import current_subject


def _work(batch: BatchHandle, count: int, delay_ms: float, fail_every: int) -> None:
    with batch:  # a cancel ends the block quietly; leaving it finishes the batch
        for n in range(1, count + 1):
            if fail_every and n % fail_every == 0:
                batch.record_failure("task is locked", item_id=f"task-{n}", row_number=n)
            else:
                batch.record_success(f"task-{n}")
            time.sleep(delay_ms / 1000)


def build_host_server(tracker: Tracker) -> MCPServer:
    """The host's own tools, and tracker's status tools mounted beside them, over `tracker`."""
    server = MCPServer(name="tasks")

    def ping() -> str:
        """The host's own tool: it must survive the mount."""
        return "pong"

    def bulk_update_tasks(count: int, delay_ms: float = 5.0, fail_every: int = 0) -> dict[str, Any]:
        """Update `count` tasks in the background; poll get_batch_status with the returned id."""
        # The caller's subject (None over stdio): over authenticated HTTP only that caller sees the batch.
        batch = tracker.start_batch("update", total=count, inputs={"count": count}, subject=current_subject())
        threading.Thread(target=_work, args=(batch, count, delay_ms, fail_every), daemon=True).start()
        return {"batch_operation_id": batch.id}

    server.add_tool(ping)
    server.add_tool(bulk_update_tasks)
    mount_status_tools(server, tracker)
    return server


def main() -> None:
    tracker = Tracker.open()
    try:
        anyio.run(build_host_server(tracker).run_stdio_async)
    finally:
        tracker.close()

if __name__ == "__main__":
    main()
