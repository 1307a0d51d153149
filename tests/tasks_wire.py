"""A small client of the io.modelcontextprotocol/tasks extension (SEP-2663) on the 2026-07-28 wire: raw JSON-RPC
POSTs to a tracker HTTP server's /mcp (no session, no SDK client), each declaring the extension in its _meta, as
the spec's clients do. Answers are read whether they come as JSON or as an SSE stream of `data:` lines."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterable
from typing import Any

import httpx2

from .http_server import ACCEPT

WIRE = "2026-07-28"
EXTENSION = "io.modelcontextprotocol/tasks"
META = {
    "io.modelcontextprotocol/protocolVersion": WIRE,
    "io.modelcontextprotocol/clientCapabilities": {"extensions": {EXTENSION: {}}},
}
TERMINAL = {"completed", "failed", "cancelled"}
_ids = itertools.count(1)


class RpcError(Exception):
    """The server answered a JSON-RPC error: `error` is its error object."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.error = error


def _message(response: httpx2.Response, request_id: int) -> dict[str, Any]:
    """The JSON-RPC answer to `request_id`, from a JSON body or an SSE stream."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("id") == request_id:
                    return message
        raise AssertionError(f"no answer to request {request_id} in the stream: {response.text[:2000]}")
    return response.json()


def rpc(url: str, method: str, params: dict[str, Any], name: str | None = None, timeout: float = 60.0) -> dict[str, Any]:
    """One request, its result; RpcError for an error answer. `name` goes in the Mcp-Name header (a tool's name
    for tools/call, the taskId for tasks/*)."""
    request_id = next(_ids)
    headers = {"Accept": ACCEPT, "Content-Type": "application/json", "MCP-Protocol-Version": WIRE, "Mcp-Method": method}
    if name is not None:
        headers["Mcp-Name"] = name
    body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": {**params, "_meta": META}}
    response = httpx2.post(url, json=body, headers=headers, timeout=timeout)
    message = _message(response, request_id)
    if "error" in message:
        raise RpcError(message["error"])
    assert response.status_code == 200, f"{response.status_code}: {response.text[:2000]}"
    return message["result"]


class TasksClient:
    """Tasks through one server: `TasksClient(server.url).create("slow_compute", {"seconds": 3})`."""

    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        return rpc(self.url, "tools/call", {"name": tool, "arguments": arguments}, name=tool)

    def create(self, tool: str, arguments: dict[str, Any]) -> str:
        """The taskId of a call the server answered with a task (an assertion error if it answered inline)."""
        result = self.call(tool, arguments)
        assert result.get("resultType") == "task", result
        return result["taskId"]

    def get(self, task_id: str) -> dict[str, Any]:
        return rpc(self.url, "tasks/get", {"taskId": task_id}, name=task_id)

    def update(self, task_id: str, responses: dict[str, Any]) -> dict[str, Any]:
        return rpc(self.url, "tasks/update", {"taskId": task_id, "inputResponses": responses}, name=task_id)

    def cancel(self, task_id: str) -> dict[str, Any]:
        return rpc(self.url, "tasks/cancel", {"taskId": task_id}, name=task_id)

    def wait_status(self, task_id: str, statuses: Iterable[str], timeout: float = 60.0) -> dict[str, Any]:
        """tasks/get until its status is one of `statuses` (the task as last read); an AssertionError naming
        the last status seen when it is not by `timeout` (generous: a deadline, never a measure)."""
        wanted = set(statuses)
        deadline = time.monotonic() + timeout
        while True:
            task = self.get(task_id)
            if task["status"] in wanted:
                return task
            if time.monotonic() > deadline:
                raise AssertionError(f"task {task_id} is still {task['status']} after {timeout:g} s, not {wanted}: {task}")
            time.sleep(0.2)

    def wait_terminal(self, task_id: str, timeout: float = 60.0) -> dict[str, Any]:
        return self.wait_status(task_id, TERMINAL, timeout)


def accept(key: str = "confirm", **content: Any) -> dict[str, Any]:
    """inputResponses answering the elicitation `key` with accept and `content` (default {"confirm": true})."""
    return {key: {"action": "accept", "content": content or {"confirm": True}}}


def result_text(task: dict[str, Any]) -> str:
    """The text of a completed task's inlined result."""
    return "".join(part.get("text", "") for part in task["result"]["content"])
