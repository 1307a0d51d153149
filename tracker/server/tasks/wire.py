"""The tasks' wire shapes on both revisions, and the JSON-RPC errors the spec names. No value a caller sent is
repeated in an error (a task id may be a bearer secret)."""

from __future__ import annotations

from typing import Any

from mcp.shared.exceptions import MCPError
from mcp_types.version import is_version_at_least

from ...records import TaskRecord
from ...settings import Settings
from ...timeutil import iso

EXTENSION = "io.modelcontextprotocol/tasks"
MODERN = "2026-07-28"  # SEP-2663: the extension
LEGACY = "2025-11-25"  # the experimental tasks of the core spec
RELATED_TASK = "io.modelcontextprotocol/related-task"
POLL_INTERVAL_MS = 500

INVALID_REQUEST = -32600
INVALID_PARAMS = -32602
METHOD_NOT_FOUND = -32601
INTERNAL_ERROR = -32603
HEADER_MISMATCH = -32020
MISSING_CAPABILITY = -32021


def is_modern(version: str | None) -> bool:
    return version is not None and is_version_at_least(version, MODERN)


def unknown_task() -> MCPError:
    return MCPError(code=INVALID_PARAMS, message="unknown task: no task has this taskId (or it expired)")


def invalid(message: str) -> MCPError:
    return MCPError(code=INVALID_PARAMS, message=message)


def missing_extension() -> MCPError:
    return MCPError(
        code=MISSING_CAPABILITY,
        message=f"this request did not declare the {EXTENSION} extension",
        data={"requiredCapabilities": {"extensions": {EXTENSION: {}}}},
    )


def ttl_ms(settings: Settings) -> int:
    """A task is kept until the retention window after it ends (tracker's purge), so for at least that long after
    it was created: an honest TTL from creation, never shorter than the task lives."""
    return max(1, int(settings.retention_s * 1000))


def status_message(task: TaskRecord) -> str | None:
    if task.task_status == "input_required":
        return "waiting for input: answer the open input requests"
    if task.status in ("failed", "cancelled"):
        return task.error
    return None


def rpc_error(task: TaskRecord) -> dict[str, Any]:
    """A failed task's JSON-RPC error: the tool's own, or (its server died) an internal error saying so."""
    if isinstance(task.rpc_error, dict):
        return task.rpc_error
    return {"code": INTERNAL_ERROR, "message": task.error or "the task failed"}


def _times(task: TaskRecord) -> dict[str, Any]:
    return {"createdAt": iso(task.started_at), "lastUpdatedAt": iso(task.updated_at)}


def modern_task(task: TaskRecord, settings: Settings) -> dict[str, Any]:
    """SEP-2663's Task."""
    shape: dict[str, Any] = {
        "taskId": task.id,
        "status": task.task_status,
        **_times(task),
        "ttlMs": ttl_ms(settings),
        "pollIntervalMs": POLL_INTERVAL_MS,
    }
    if (message := status_message(task)) is not None:
        shape["statusMessage"] = message
    return shape


def modern_created(task: TaskRecord, settings: Settings) -> dict[str, Any]:
    """CreateTaskResult: flat, resultType "task"."""
    return {"resultType": "task", **modern_task(task, settings)}


def modern_detailed(task: TaskRecord, settings: Settings) -> dict[str, Any]:
    """tasks/get's DetailedTask: the result, the error or the open input requests inlined."""
    shape = modern_task(task, settings)
    status = task.task_status
    if status == "completed":
        shape["result"] = task.outputs if isinstance(task.outputs, dict) else {"content": []}
    elif status == "failed":
        shape["error"] = rpc_error(task)
    elif status == "input_required":
        shape["inputRequests"] = task.input_requests or {}
    return shape


def legacy_status(task: TaskRecord) -> str:
    """2025-11-25 reports a tool result with isError as a failed task."""
    status = task.task_status
    if status == "completed" and isinstance(task.outputs, dict) and task.outputs.get("isError"):
        return "failed"
    return status


def legacy_task(task: TaskRecord, settings: Settings) -> dict[str, Any]:
    """2025-11-25's Task."""
    shape: dict[str, Any] = {
        "taskId": task.id,
        "status": legacy_status(task),
        **_times(task),
        "ttl": ttl_ms(settings),
        "pollInterval": POLL_INTERVAL_MS,
    }
    if (message := status_message(task)) is not None:
        shape["statusMessage"] = message
    return shape


def legacy_result(record: TaskRecord) -> dict[str, Any]:
    """tasks/result (2025-11-25): the plain call's answer with the related-task _meta, or its error."""
    if record.status == "cancelled":
        raise MCPError(code=INVALID_PARAMS, message="the task was cancelled: it has no result")
    if record.status == "failed" or not isinstance(record.outputs, dict):
        error = rpc_error(record)
        raise MCPError(code=error.get("code", INTERNAL_ERROR), message=error.get("message", ""), data=error.get("data"))
    meta = {**(record.outputs.get("_meta") or {}), RELATED_TASK: {"taskId": record.id}}
    plain = {key: value for key, value in record.outputs.items() if key != "resultType"}  # no such field then
    return {**plain, "_meta": meta}
