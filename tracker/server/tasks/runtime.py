"""Running tasks: the tool bodies of this process's tasks, their outcomes written to the table, cancels seen from
any server, and tasks whose server died failed or (safe to re-run) taken over.

A task's body runs in this process's event loop, as a plain call of the tool would; its row says which process
runs it (the operation's owner, with a registered writer that the flusher heartbeats). What the body ends with is
written once: the tool's result (completed), a JSON-RPC error (failed), or a request for input (input_required:
then no process runs it, and whichever server gets the last answer runs the tool again with every answer)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.context import Context
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolRequestParams, CallToolResult, InputRequiredResult, TextContent

from ... import limits
from ...aio import off_loop
from ...api import Tracker
from ...errors import TrackerError
from ...ids import new_operation_id
from ...reaper import find_orphans, recover_orphans
from ...recording import BatchHandle, check_json, error_text
from ...records import TaskRecord, Writer
from ...store.tasks import TaskStore
from . import wire

log = logging.getLogger(__name__)

CANCEL_CHECK_S = 0.5  # how often the bodies running here look for a cancel made through another server
RECOVER_EVERY_S = 5.0  # how often a server looks for tasks whose server died
TOOL_CHARS = 128


@dataclass
class _Slot:
    handle: BatchHandle | None = None


_CURRENT: ContextVar[_Slot | None] = ContextVar("tracker_task", default=None)


def current_task() -> BatchHandle | None:
    """Inside a tool body running as a task: the handle of its operation, to record items and set a total into
    (get_batch_status, list_operations and the operator commands show them). None in a plain call, and in a
    call with a synchronous wait until it became a task. The task's end is the runtime's: do not finish it."""
    slot = _CURRENT.get()
    return slot.handle if slot is not None else None


@dataclass(frozen=True)
class NewTask:
    """A tools/call that becomes a task."""

    tool: str
    arguments: dict[str, Any]
    revision: str  # wire.MODERN or wire.LEGACY: the shapes its creator reads
    subject: str | None  # the caller's (serve --http with tokens), who alone may see it
    rerun: bool  # its tool is safe to run again (TaskPolicy.rerun)
    responses: dict[str, Any] | None = None  # answers of a multi-round-trip before it became a task
    request_state: str | None = None


Outcome = tuple[str, Any]  # ("result", CallToolResult json) | ("error", JSON-RPC error) | ("input", (requests, state))


def _dump(model: Any) -> dict[str, Any]:
    return model.model_dump(by_alias=True, mode="json", exclude_none=True)


def outcome_of_result(result: Any) -> Outcome:
    if isinstance(result, InputRequiredResult):
        requests = {key: _dump(request) for key, request in (result.input_requests or {}).items()}
        return "input", (requests, result.request_state)
    if isinstance(result, CallToolResult):
        return "result", _dump(result)
    if isinstance(result, dict):
        return "result", result
    return "error", {"code": wire.INTERNAL_ERROR, "message": "the tool returned something that is not a tool result"}


def outcome_of_error(tool: str, exc: BaseException) -> Outcome:
    if isinstance(exc, MCPError):
        return "error", _dump(exc.error)
    if isinstance(exc, ToolError) and not isinstance(exc, UnexpectedToolError):
        return "result", _dump(CallToolResult(content=[TextContent(type="text", text=str(exc))], is_error=True))
    log.error("task tool %r raised an unexpected exception", tool, exc_info=exc)
    return "error", {"code": wire.INTERNAL_ERROR, "message": f"tool {tool} failed with an internal error"}


class TaskRuntime:
    """The tasks of one server process over one Tracker. bind(server) before the first task."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self._store: TaskStore | None = None
        self.server: MCPServer | None = None
        self._bodies: dict[str, asyncio.Task[None]] = {}
        self._stopped: set[str] = set()  # bodies stopped because their task ended elsewhere (a cancel)
        self._ended: dict[str, asyncio.Event] = {}  # set when a body here wrote its outcome
        self._loops: list[asyncio.Task[None]] = []

    @property
    def settings(self):  # noqa: ANN201 - the tracker's Settings
        return self.tracker.settings

    @property
    def store(self) -> TaskStore:
        # On first use: `tracker serve` opens its database after the server is built.
        if self._store is None:
            self._store = TaskStore(self.tracker.engine)
        return self._store

    def bind(self, server: MCPServer) -> None:
        self.server = server

    # -- background loops -----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the cancel watcher and orphan recovery in the running loop (once; any first use starts them)."""
        if self._loops and not all(loop.done() for loop in self._loops):
            return
        self._loops = [asyncio.create_task(self._watch_cancels()), asyncio.create_task(self._recover_loop())]

    async def aclose(self) -> None:
        for task in [*self._loops, *self._bodies.values()]:
            task.cancel()
        await asyncio.gather(*self._loops, *self._bodies.values(), return_exceptions=True)
        self._loops = []

    async def _watch_cancels(self) -> None:
        while True:
            await asyncio.sleep(CANCEL_CHECK_S)
            if not self._bodies:
                continue
            try:
                ended = await off_loop(self.store.ended_among, list(self._bodies))
            except TrackerError as exc:
                log.warning("tasks: could not check for cancels: %s", exc)
                continue
            for task_id in ended:
                self.stop_body(task_id)

    async def _recover_loop(self) -> None:
        while True:
            try:
                for record, writer in await off_loop(self.recover_once):
                    self._spawn(record, writer)
            except TrackerError as exc:
                log.warning("tasks: orphan recovery failed: %s", exc)
            await asyncio.sleep(RECOVER_EVERY_S)

    def recover_once(self) -> list[tuple[TaskRecord, Writer]]:
        """Tasks whose every recording process is gone: failed ("interrupted: owner process exited"), unless
        their tool is safe to re-run and they have not been taken over before: those this process takes over
        (compare-and-set on the dead owner, so one server does) and returns to run. Waiting for input is no
        orphan: nobody runs such a task until it is answered."""
        lease = self.settings.heartbeat_lease_s
        orphans = find_orphans(self.tracker.engine, lease)
        if not orphans:
            return []
        tasks = {t.id: t for t in self.store.tasks_among([o.operation.id for o in orphans])}
        doomed = [o for o in orphans if o.operation.id in tasks and not o.resumable]
        if doomed:
            recover_orphans(self.tracker.engine, lease, orphans=doomed)
        taken = []
        for task in tasks.values():
            if task.phase == "working" and task.resumable and task.rerun and task.id not in self._bodies:
                writer = self.tracker.new_writer()
                record = self.store.take_over(task, writer)
                if record is not None:
                    log.warning("tasks: running task %s again (its server %s/%s is gone)", task.id, task.owner_host,
                                task.owner_pid)
                    taken.append((record, writer))
        return taken

    # -- creating and running -------------------------------------------------------------------------------------

    async def begin(self, new: NewTask, inline: tuple[asyncio.Task[Any], _Slot] | None = None) -> TaskRecord:
        """Create the task's rows, committed (from the moment this returns any server answers tasks/get for it),
        and start its body: the tool in the background, or `inline`, a call already running that becomes this task.
        Once the rows are written the body starts even if the caller was cancelled meanwhile: a task must end."""
        self.start()

        async def create_then_start() -> TaskRecord:
            try:
                record, writer = await self._create(new)
            except BaseException:
                if inline is not None:
                    inline[0].cancel()
                raise
            if inline is None:
                self._spawn(record, writer)
            else:
                self.adopt(record, writer, *inline)
            return record

        return await asyncio.shield(asyncio.ensure_future(create_then_start()))

    async def _create(self, new: NewTask) -> tuple[TaskRecord, Writer]:
        arguments = check_json(new.arguments, "arguments")
        writer = self.tracker.new_writer()
        tool = new.tool[:TOOL_CHARS]
        operation = {
            "id": new_operation_id("task", tool),
            "kind": "batch",
            "operation_type": f"task:{tool}"[: limits.OPERATION_TYPE_CHARS],
            "inputs": {"tool": tool, "arguments": arguments},
            "owner_host": writer.process.host,
            "owner_pid": writer.process.pid,
            "owner_process": writer.process.identity,
            "resumable": new.rerun,
            "subject": new.subject,
        }
        # Answers given before it became a task (a multi-round-trip) go with it: a run again needs them too.
        task = {
            "tool": tool,
            "arguments": arguments,
            "revision": new.revision,
            "rerun": new.rerun,
            "input_responses": check_json(new.responses, "inputResponses"),
            "asked_keys": sorted(new.responses) if new.responses else None,
            "request_state": new.request_state,
        }
        record = await off_loop(self.store.create, operation, task, writer, wait_on_cancel=True)
        return record, writer

    def run(self, record: TaskRecord, writer: Writer) -> None:
        """Run the tool of a task this process now owns (created, taken over, or resumed by its last answer)."""
        self.start()
        self._spawn(record, writer)

    def adopt(self, record: TaskRecord, writer: Writer, body: asyncio.Task[Any], slot: _Slot) -> None:
        """A call that ran inline past its synchronous wait and is now this task: its outcome is the task's."""
        slot.handle = self.tracker.handle_for(record, writer)  # type: ignore[arg-type]
        self._start_body(record.id, self._finish(record, writer, slot.handle, self._outcome_of(record.tool, body)))

    def _spawn(self, record: TaskRecord, writer: Writer) -> None:
        handle = self.tracker.handle_for(record, writer)  # type: ignore[arg-type]
        self._start_body(record.id, self._finish(record, writer, handle, self._call(record, handle)))

    def _start_body(self, task_id: str, body: Awaitable[None]) -> None:
        self._ended.setdefault(task_id, asyncio.Event())
        task = asyncio.ensure_future(body)
        self._bodies[task_id] = task
        task.add_done_callback(lambda _: self._bodies.pop(task_id, None))

    async def _outcome_of(self, tool: str, body: asyncio.Task[Any]) -> Outcome:
        try:
            return outcome_of_result(await body)
        except asyncio.CancelledError:
            body.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the tool is its task's outcome
            return outcome_of_error(tool, exc)

    async def _call(self, record: TaskRecord, handle: BatchHandle) -> Outcome:
        server = self.server
        assert server is not None, "TaskRuntime.bind(server) first"
        _CURRENT.set(_Slot(handle))
        params = CallToolRequestParams(
            name=record.tool,
            arguments=record.arguments or {},
            input_responses=record.input_responses,
            request_state=record.request_state,
        )
        context = Context(mcp_server=server, input_params=params)
        try:
            return outcome_of_result(await server.call_tool(record.tool, record.arguments or {}, context))
        except Exception as exc:  # noqa: BLE001 - any failure of the tool is its task's outcome
            return outcome_of_error(record.tool, exc)

    async def _finish(self, record: TaskRecord, writer: Writer, handle: BatchHandle, body: Awaitable[Outcome]) -> None:
        task_id = record.id
        try:
            kind, value = await body
        except asyncio.CancelledError:
            if task_id in self._stopped:  # its task was cancelled: the row says so already
                self._stopped.discard(task_id)
                await self._detach(handle)
                self._signal(task_id)
                return
            raise  # this server is stopping: the task is left to orphan recovery
        await self._detach(handle)
        try:
            await off_loop(self._write, record, writer, kind, value, wait_on_cancel=True)
        except TrackerError as exc:
            log.warning("tasks: could not record the end of %s: %s", task_id, exc)
        self._signal(task_id)

    def _write(self, record: TaskRecord, writer: Writer, kind: str, value: Any) -> None:
        by = writer.writer_id
        if kind == "input":
            requests, state = value
            again = sorted(set(requests) & set(record.asked_keys or ()))
            if not requests or again:
                # Keys are unique for a task's life (the spec): a tool asking again under an answered key is a bug.
                error = {"code": wire.INTERNAL_ERROR, "message": f"tool {record.tool} asked for input under a key "
                         "it used before, or for nothing"}
                self.store.end(record.id, "failed", by, rpc_error=error, message=error["message"])
                return
            self.store.park(record.id, by, check_json(requests, "inputRequests"), state)
        elif kind == "result":
            try:
                outputs = check_json(value, "result")
            except TrackerError:
                error = {"code": wire.INTERNAL_ERROR, "message": f"tool {record.tool} returned a result that is not JSON"}
                self.store.end(record.id, "failed", by, rpc_error=error, message=error["message"])
                return
            self.store.end(record.id, "completed", by, outputs=outputs)
        else:
            error = check_json(value, "error")
            self.store.end(record.id, "failed", by, rpc_error=error, message=error_text(str(error.get("message", ""))))

    @staticmethod
    async def _detach(handle: BatchHandle) -> None:
        try:
            await off_loop(handle.detach, wait_on_cancel=True)
        except TrackerError as exc:
            log.debug("tasks: detaching from %s: %s", handle.id, exc)

    def _signal(self, task_id: str) -> None:
        event = self._ended.pop(task_id, None)
        if event is not None:
            event.set()

    def stop_body(self, task_id: str) -> None:
        """Its task ended elsewhere (cancelled): stop its body here, if it runs here."""
        body = self._bodies.get(task_id)
        if body is not None and not body.done():
            self._stopped.add(task_id)
            body.cancel()

    async def wait_changed(self, task_id: str, timeout_s: float) -> None:
        """Until a body here writes this task's outcome, or timeout_s (a task run elsewhere is polled)."""
        event = self._ended.get(task_id)
        if event is None:
            await asyncio.sleep(timeout_s)
            return
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
        except TimeoutError:
            pass


