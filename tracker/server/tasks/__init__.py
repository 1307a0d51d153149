"""Durable MCP tasks on tracker's table: the io.modelcontextprotocol/tasks extension (2026-07-28) and the
experimental tasks of 2025-11-25, for any MCPServer (TrackerTasks) and for tracker's own long tools."""

from .extension import TrackerTasks
from .legacy import LegacyTasks
from .policy import TaskPolicy
from .runtime import TaskRuntime, current_task

__all__ = ["LegacyTasks", "TaskPolicy", "TaskRuntime", "TrackerTasks", "current_task"]
