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


class Wire:
    """Raw JSON-RPC to one server, as sent and as answered (the SDK's client has no tasks methods): `version` the
    wire (2026-07-28: each request's _meta carries the version and, with `declare`, the extension; 2025-11-25: plain
    params), `token` a bearer token. request() returns the JSON-RPC answer, {"result": ...} or {"error": ...}."""

    def __init__(self, url: str, token: str | None = None, version: str = WIRE, declare: bool = True,
                 timeout: float = 60.0) -> None:
        self.url, self.token, self.version, self.declare = url, token, version, declare
        self.http = httpx2.Client(timeout=timeout)

    def request(self, method: str, params: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
                declare: bool | None = None) -> dict[str, Any]:
        request_id = next(_ids)
        params = dict(params or {})
        sent = {"Accept": ACCEPT, "Content-Type": "application/json", "MCP-Protocol-Version": self.version,
                "Mcp-Method": method}
        if self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        if self.version == WIRE:
            declared = self.declare if declare is None else declare
            capabilities = {"extensions": {EXTENSION: {}}} if declared else {}
            params["_meta"] = {**params.get("_meta", {}), **META, "io.modelcontextprotocol/clientCapabilities": capabilities}
            if method == "tools/call":
                sent["Mcp-Name"] = params["name"]
        sent.update(headers or {})
        body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        return _message(self.http.post(self.url, json=body, headers=sent), request_id)

    def ok(self, method: str, params: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        answer = self.request(method, params, **kw)
        assert "result" in answer, answer
        return answer["result"]

    def error(self, method: str, params: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        answer = self.request(method, params, **kw)
        assert "error" in answer, answer
        return answer["error"]

    def call(self, tool: str, **arguments: Any) -> dict[str, Any]:
        return self.ok("tools/call", {"name": tool, "arguments": arguments})

    def get(self, task_id: str) -> dict[str, Any]:
        return self.ok("tasks/get", {"taskId": task_id})

    def until(self, task_id: str, *statuses: str, timeout_s: float = 60.0) -> dict[str, Any]:
        """tasks/get until the status is one of `statuses` (a generous deadline, never a measure)."""
        deadline = time.monotonic() + timeout_s
        while True:
            task = self.get(task_id)
            if task["status"] in statuses:
                return task
            assert time.monotonic() < deadline, f"task still {task['status']}, wanted {statuses}: {task}"
            time.sleep(0.1)


def rpc(url: str, method: str, params: dict[str, Any], name: str | None = None, timeout: float = 60.0) -> dict[str, Any]:
    """One request, its result; RpcError for an error answer. `name` goes in the Mcp-Name header (a tool's name
    for tools/call, the taskId for tasks/*)."""
    message = Wire(url, timeout=timeout).request(method, params, headers={"Mcp-Name": name} if name is not None else None)
    if "error" in message:
        raise RpcError(message["error"])
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
