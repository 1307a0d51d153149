"""A server built on tracker's tasks extension with the MCP conformance suite's task fixtures (and tracker's own
tools): `python -m tracker.testing.task_server --db DB [--http HOST:PORT]`. The conformance tests, the two
TypeScript clients, the restart tests and the tasks benchmark run against it.

The fixtures, as the suite's tasks-* scenarios describe them: greet (never a task), slow_compute (sleeps
`seconds`; safe to run again), failing_job (a task or the -32021 error; a tool error after ~1 s),
protocol_error_job (a JSON-RPC error), confirm_delete (asks one elicitation), multi_input (asks two at once),
test_tool_with_task (asks for a name inline, then runs as a task that greets it). tracker's own: count_items,
record_then_sleep, and two that leave a trace in a file for the restart tests to count: confirm_append (asks one
elicitation, then appends a line per run) and tick_file (appends a line every `every` seconds while it runs)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp_types import ElicitRequest, ElicitRequestFormParams, InputRequiredResult

from ..server.tasks import TaskPolicy, TrackerTasks, current_task
from ..settings import Settings

POLICIES = {
    "greet": TaskPolicy("forbidden"),
    "slow_compute": TaskPolicy("optional", rerun=True),
    "failing_job": TaskPolicy("required"),
    "protocol_error_job": TaskPolicy("optional"),
    "confirm_delete": TaskPolicy("optional"),
    "multi_input": TaskPolicy("optional"),
    "test_tool_with_task": TaskPolicy("required", sync_wait_s=0.5),
    "count_items": TaskPolicy("optional", rerun=True),
    "record_then_sleep": TaskPolicy("optional"),
    "confirm_append": TaskPolicy("optional"),
    "tick_file": TaskPolicy("optional"),
}


def _ask(key: str, message: str, properties: dict) -> dict:
    schema = {"type": "object", "properties": properties, "required": list(properties)}
    return {key: ElicitRequest(params=ElicitRequestFormParams(message=message, requested_schema=schema))}


def _accepted(ctx: Context, key: str) -> dict | None:
    answer = (ctx.input_responses or {}).get(key)
    if answer is None:
        return None
    return answer.content or {} if getattr(answer, "action", None) == "accept" else {}


def mount_fixtures(server: MCPServer, tasks: TrackerTasks) -> None:
    for name, policy in POLICIES.items():
        tasks.policy(name, policy)

    @server.tool()
    def greet(name: str) -> str:
        """Greets by name (never a task)."""
        return f"Hello, {name}!"

    @server.tool()
    async def slow_compute(seconds: float = 1.0, label: str = "") -> str:
        """Sleeps `seconds`, then answers."""
        await asyncio.sleep(seconds)
        return f"computed {label or 'result'} after {seconds:g}s"

    @server.tool()
    async def failing_job() -> str:
        """Always ends with a tool error, after about a second."""
        await asyncio.sleep(1.0)
        raise ToolError("failing_job failed, as it always does")

    @server.tool()
    async def protocol_error_job() -> str:
        """Always ends with a JSON-RPC error."""
        await asyncio.sleep(0.2)
        raise MCPError(code=-32603, message="protocol_error_job: an internal error, as designed")

    @server.tool()
    async def confirm_delete(filename: str, ctx: Context) -> str | InputRequiredResult:
        """Asks for confirmation, then deletes (pretends to)."""
        answer = _accepted(ctx, "confirm")
        if answer is None:
            return InputRequiredResult(input_requests=_ask("confirm", f"Delete {filename}?", {"confirm": {"type": "boolean"}}))
        return f"Deleted {filename}" if answer.get("confirm") else f"Kept {filename}"

    @server.tool()
    async def multi_input(ctx: Context) -> str | InputRequiredResult:
        """Asks two questions at once."""
        name, confirm = _accepted(ctx, "name"), _accepted(ctx, "confirm")
        asks = {}
        if name is None:
            asks.update(_ask("name", "Your name?", {"name": {"type": "string"}}))
        if confirm is None:
            asks.update(_ask("confirm", "Go ahead?", {"confirm": {"type": "boolean"}}))
        if asks:
            return InputRequiredResult(input_requests=asks)
        return f"Hello {name.get('name')}, confirmed: {bool(confirm.get('confirm'))}"

    @server.tool()
    async def test_tool_with_task(ctx: Context) -> str | InputRequiredResult:
        """Asks for a name inline (a multi-round-trip), then works on as a task."""
        answer = _accepted(ctx, "user_name")
        if answer is None:
            return InputRequiredResult(input_requests=_ask("user_name", "Your name?", {"name": {"type": "string"}}))
        await asyncio.sleep(1.5)
        return f"Hello, {answer.get('name')}! (from a task)"

    @server.tool()
    async def count_items(count: int = 10, delay: float = 0.05) -> str:
        """Records `count` items into its task, one every `delay` seconds (safe to run again)."""
        handle = current_task()
        if handle is not None:
            handle.set_total(count)
        for n in range(count):
            await asyncio.sleep(delay)
            if handle is not None:
                handle.record_success(f"item-{n}")
        return f"counted {count}"

    @server.tool()
    async def record_then_sleep(seconds: float = 60.0) -> str:
        """Sleeps (not safe to run again: a task of it whose server dies is failed)."""
        await asyncio.sleep(seconds)
        return "slept"

    @server.tool()
    async def confirm_append(path: str, ctx: Context) -> str | InputRequiredResult:
        """Asks for confirmation, then appends one line to the file `path` (each run once answered: the file
        counts the runs)."""
        answer = _accepted(ctx, "confirm")
        if answer is None:
            asks = _ask("confirm", f"Append to {path}?", {"confirm": {"type": "boolean"}})
            return InputRequiredResult(input_requests=asks)
        with open(path, "a") as file:
            file.write(f"ran in {os.getpid()}\n")
        return f"Appended to {path}"

    @server.tool()
    async def tick_file(path: str, seconds: float = 60.0, every: float = 0.1) -> str:
        """Appends a line to the file `path` every `every` seconds for `seconds` (the file shows while it runs)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            with open(path, "a") as file:
                file.write(f"tick in {os.getpid()}\n")
            await asyncio.sleep(every)
        return f"ticked for {seconds:g}s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tracker.testing.task_server")
    parser.add_argument("--db", default=None, help="the database (default: $TRACKER_DB)")
    parser.add_argument("--http", metavar="HOST:PORT", default=None)
    parser.add_argument("--tokens", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env(db=args.db)
    if args.http is None:
        from ..server.app import serve

        serve(settings, mount_fixtures)
        return 0
    from dataclasses import replace

    from ..server.http import plan, serve_http

    if args.tokens:
        settings = replace(settings, http_tokens=args.tokens)
    serve_http(settings, plan(settings, args.http), mount_fixtures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
