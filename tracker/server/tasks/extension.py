"""The io.modelcontextprotocol/tasks extension (SEP-2663, 2026-07-28) and the tasks methods of 2025-11-25, served
from tracker's table by TaskRuntime. TrackerTasks is the Extension an MCPServer is built with; its `legacy`
(legacy.py) is the ServerMiddleware for the rest of 2025-11-25."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager

import jsonschema
from typing import Any

from mcp.server.extension import Extension, MethodBinding
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata
from mcp_types import (
    CallToolRequestParams,
    CallToolResult,
    InputRequiredResult,
    TextContent,
    CreateMessageResult,
    ElicitResult,
    InputRequest,
    InputResponse,
    ListRootsResult,
    RequestParams,
)
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from ...aio import off_loop
from ...api import Tracker
from ...errors import DatabaseUnavailable, OperationClosed, OperationNotFound
from ...records import TaskRecord
from ..caller import current_subject
from ..strict import StrictTool, argument_problem
from . import wire
from .legacy import LegacyTasks
from .policy import TaskPolicy
from .runtime import _CURRENT, NewTask, TaskRuntime, _Slot

log = logging.getLogger(__name__)

TASK_ID_CHARS = 256
LIST_PAGE = 100
INLINE_ROUNDS = 10  # rounds of input a plain 2025-11-25 call may ask for
RESULT_WAIT_S = 0.25  # tasks/result (2025-11-25) looks again this often for a task run by another server
_RESPONSE = TypeAdapter(InputResponse)
_REQUEST = TypeAdapter(InputRequest)
_RESULT_TYPES = {
    "elicitation/create": ElicitResult,
    "sampling/createMessage": CreateMessageResult,
    "roots/list": ListRootsResult,
}


class TaskIdParams(RequestParams):
    """Checked by hand, not by pydantic, so an error names the field and never repeats the value."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    task_id: Any = Field(default=None, alias="taskId")


class UpdateParams(TaskIdParams):
    input_responses: Any = Field(default=None, alias="inputResponses")


class ListParams(RequestParams):
    model_config = ConfigDict(extra="allow")
    cursor: Any = None


def _declared(ctx: ServerRequestContext[Any, Any]) -> bool:
    capabilities = ctx.session.client_capabilities
    extensions = capabilities.extensions if capabilities is not None else None
    return bool(extensions) and wire.EXTENSION in extensions  # type: ignore[operator]


def _header(ctx: ServerRequestContext[Any, Any], name: str) -> str | None:
    headers = getattr(ctx.request, "headers", None)
    return headers.get(name) if headers is not None else None


class TrackerTasks(Extension):
    """Durable tasks for an MCPServer's tools, in tracker's table:

        tasks = TrackerTasks(tracker, {"slow_tool": TaskPolicy("optional")})
        server = MCPServer("mine", extensions=[tasks], middleware=[tasks.legacy], lifespan=tasks.lifespan)
        tasks.bind(server)

    A task is an operation row (kind batch, operation_type "task:<tool>"): every server on the database serves
    it, and get_batch_status, list_operations and the operator commands show it."""

    identifier = wire.EXTENSION

    def __init__(
        self,
        tracker: Tracker,
        policies: Mapping[str, TaskPolicy] | None = None,
        ready: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """`ready` is awaited before each use of the table, and raises DatabaseUnavailable when the database cannot
        be used: `tracker serve` passes its open gate (on a database server it listens before the database is open)."""
        self.tracker = tracker
        self._ready = ready
        self.policies: dict[str, TaskPolicy] = dict(policies or {})
        self.runtime = TaskRuntime(tracker)
        self.legacy = LegacyTasks(self)  # the 2025-11-25 surface, as ServerMiddleware

    def bind(self, server: MCPServer) -> None:
        """The server whose tools the tasks run (resumed and taken-over tasks call them without a request)."""
        self.runtime.bind(server)

    def policy(self, tool: str, policy: TaskPolicy) -> None:
        self.policies[tool] = policy

    @asynccontextmanager
    async def lifespan(self, _server: MCPServer) -> AsyncIterator[None]:
        """An MCPServer lifespan (or call it from yours): orphan recovery and the cancel watcher from the start,
        not from the first task request, so a restarted server takes over or fails its predecessor's tasks."""
        self.runtime.start()
        try:
            yield
        finally:
            await self.runtime.aclose()

    async def open_database(self) -> None:
        """The database, open before the table is used; else its one-line reason as the request's error."""
        if self._ready is None:
            return
        try:
            await self._ready()
        except DatabaseUnavailable as exc:
            raise MCPError(code=wire.INTERNAL_ERROR, message=str(exc)) from None

    # -- the extension's surface ----------------------------------------------------------------------------------

    def methods(self) -> list[MethodBinding]:
        return [
            MethodBinding("tasks/get", TaskIdParams, self._get),
            MethodBinding("tasks/cancel", TaskIdParams, self._cancel),
            MethodBinding("tasks/update", UpdateParams, self._update, protocol_versions=frozenset({wire.MODERN})),
            MethodBinding("tasks/result", TaskIdParams, self._result, protocol_versions=frozenset({wire.LEGACY})),
            MethodBinding("tasks/list", ListParams, self._list, protocol_versions=frozenset({wire.LEGACY})),
        ]

    async def intercept_tool_call(
        self, params: CallToolRequestParams, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        if not wire.is_modern(ctx.protocol_version):
            # 2025-11-25 has no InputRequiredResult: a tool asking for input is answered here, by asking the client.
            return await self._ask_inline(params, ctx, await call_next(ctx))
        policy = self.policies.get(params.name)
        if policy is None or not policy.takes_tasks:
            return await call_next(ctx)
        if not _declared(ctx):
            if policy.support == "required":
                raise wire.missing_extension()
            return await call_next(ctx)
        await self.open_database()
        refused = self.refusal(params.name, params.arguments or {})
        if refused is not None:
            return refused
        new = NewTask(
            tool=params.name,
            arguments=params.arguments or {},
            revision=wire.MODERN,
            subject=current_subject(),
            rerun=policy.rerun,
            responses={k: _dump(v) for k, v in (params.input_responses or {}).items()} or None,
            request_state=params.request_state,
        )
        if policy.sync_wait_s <= 0:
            return wire.modern_created(await self.runtime.begin(new), self.tracker.settings)
        slot = _Slot()
        context = contextvars.copy_context()
        context.run(_CURRENT.set, slot)
        body = asyncio.get_running_loop().create_task(call_next(ctx), context=context)
        try:
            done, _ = await asyncio.wait({body}, timeout=policy.sync_wait_s)
        except BaseException:
            body.cancel()
            raise
        if body in done:
            return body.result()  # answered inline: a result, or a request for input (a multi-round-trip)
        return wire.modern_created(await self.runtime.begin(new, (body, slot)), self.tracker.settings)

    def refusal(self, name: str, arguments: dict[str, Any]) -> CallToolResult | None:
        """The tool's answer to arguments it would refuse (names, then types), given before any task exists: bad
        input creates no row. None when the call may become a task; a tool this server lacks is left to the plain
        path, which answers it."""
        server = self.runtime.server
        tool = server._tool_manager.get_tool(name) if server is not None else None  # the SDK has no public lookup
        if tool is None:
            return None
        problem = argument_problem(name, tool.parameters, arguments) if isinstance(tool, StrictTool) else None
        if problem is None:
            try:
                tool.fn_metadata.validate_arguments(arguments)
            except ValidationError as exc:
                fields = sorted({str(error["loc"][0]) for error in exc.errors() if error["loc"]})
                problem = f"invalid {', '.join(fields) or 'arguments'}"  # names only: pydantic's text repeats values
            except Exception:  # noqa: BLE001 - a validator that crashes is the tool's to report when it runs
                return None
        if problem is None:
            return None
        text = f"Error executing tool {name}: {problem}"
        return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)

    async def _ask_inline(
        self, params: CallToolRequestParams, ctx: ServerRequestContext[Any, Any], result: HandlerResult
    ) -> HandlerResult:
        """A plain 2025-11-25 call of a tool that asks for input the 2026-07-28 way (returns InputRequiredResult):
        each request goes to the client on this call's stream, as a 2025-11-25 server asks, and the tool runs
        again with the answers, until it answers."""
        answers = {k: _dump(v) for k, v in (params.input_responses or {}).items()}
        for _ in range(INLINE_ROUNDS):
            if not isinstance(result, InputRequiredResult):
                return result
            for key, request in (result.input_requests or {}).items():
                answers[key] = await self._send(ctx, _dump(request))
            again = CallToolRequestParams(
                name=params.name, arguments=params.arguments, input_responses=answers, request_state=result.request_state
            )
            server = self.runtime.server
            assert server is not None, "TrackerTasks.bind(server) first"
            context = Context(request_context=ctx, mcp_server=server, input_params=again)
            try:
                result = await server.call_tool(params.name, params.arguments or {}, context)
            except MCPError:
                raise
            except ToolError as exc:
                result = CallToolResult(content=[TextContent(type="text", text=str(exc))], is_error=True)
        raise MCPError(code=wire.INTERNAL_ERROR, message=f"tool {params.name} asked for input {INLINE_ROUNDS} times")

    @staticmethod
    async def _send(ctx: ServerRequestContext[Any, Any], request: dict[str, Any], meta: dict[str, Any] | None = None) -> Any:
        """One input request as a server-to-client request on this call's stream; its answer as JSON."""
        params = {**(request.get("params") or {}), **({"_meta": meta} if meta else {})}
        typed = _REQUEST.validate_python({**request, "params": params})
        result_type = _RESULT_TYPES.get(typed.method, ElicitResult)
        related = ServerMessageMetadata(related_request_id=ctx.request_id)
        try:
            return _dump(await ctx.session.send_request(typed, result_type, metadata=related))
        except MCPError as exc:
            if exc.error.code == wire.INVALID_REQUEST:  # the SDK's word for a transport with no back-channel
                raise MCPError(
                    code=wire.INTERNAL_ERROR,
                    message="this call needs input from the client, and this connection cannot ask for it "
                    "(2025-11-25 over stateless HTTP): use stdio, or the 2026-07-28 wire",
                ) from None
            raise

    # -- the methods ----------------------------------------------------------------------------------------------

    def _task_id(self, ctx: ServerRequestContext[Any, Any], params: TaskIdParams) -> str:
        modern = wire.is_modern(ctx.protocol_version)
        if modern and not _declared(ctx):
            raise wire.missing_extension()
        task_id = params.task_id
        if not isinstance(task_id, str) or not task_id:
            raise wire.invalid("taskId must be a non-empty string")
        named = _header(ctx, "mcp-name")
        if named is not None and named.strip() != task_id:
            raise MCPError(code=wire.HEADER_MISMATCH, message="the Mcp-Name header does not match params.taskId")
        return task_id

    async def _find(self, task_id: str) -> TaskRecord:
        if len(task_id) > TASK_ID_CHARS or "\x00" in task_id:
            raise wire.unknown_task()
        await self.open_database()
        viewer = self.tracker.viewer(current_subject())
        record = await off_loop(self.runtime.store.get, task_id, viewer)
        if record is None:
            raise wire.unknown_task()
        return record

    def _shape(self, ctx: ServerRequestContext[Any, Any], record: TaskRecord) -> dict[str, Any]:
        if wire.is_modern(ctx.protocol_version):
            return wire.modern_detailed(record, self.tracker.settings)
        return wire.legacy_task(record, self.tracker.settings)

    async def _get(self, ctx: ServerRequestContext[Any, Any], params: TaskIdParams) -> dict[str, Any]:
        return self._shape(ctx, await self._find(self._task_id(ctx, params)))

    async def _update(self, ctx: ServerRequestContext[Any, Any], params: UpdateParams) -> dict[str, Any]:
        task_id = self._task_id(ctx, params)
        given = params.input_responses
        if not isinstance(given, dict) or not all(isinstance(v, dict) for v in given.values()):
            raise wire.invalid("inputResponses must be an object mapping input request keys to responses")
        record = await self._find(task_id)
        await self.answer(record, given)
        return {}

    async def answer(self, record: TaskRecord, given: dict[str, Any]) -> None:
        """Store answers to the task's open requests (others are ignored); the last one runs the tool again here."""
        pending = record.input_requests or {}
        responses: dict[str, Any] = {}
        for key, value in given.items():
            if key not in pending:
                continue  # unknown or already answered: the spec lets a server ignore it
            try:
                responses[key] = _dump(_RESPONSE.validate_python(value))
            except ValidationError:
                raise wire.invalid("inputResponses: a response does not have the shape of its request's result") from None
            check_answer(key, pending[key], responses[key])
        if not responses:
            return
        writer = self.tracker.new_writer()
        viewer = self.tracker.viewer(current_subject())
        try:
            outcome, task = await off_loop(self.runtime.store.answer, record.id, responses, viewer, writer,
                                           wait_on_cancel=True)
        except OperationNotFound:
            raise wire.unknown_task() from None
        if outcome == "resume":
            self.runtime.run(task, writer)

    async def _cancel(self, ctx: ServerRequestContext[Any, Any], params: TaskIdParams) -> dict[str, Any]:
        task_id = self._task_id(ctx, params)
        modern = wire.is_modern(ctx.protocol_version)
        record = await self._find(task_id)
        if not record.is_terminal:
            try:
                await off_loop(self.tracker.cancel, task_id, "cancelled by the client", current_subject())
            except OperationClosed:
                pass  # it ended first: as for a task that had ended
            except OperationNotFound:
                raise wire.unknown_task() from None
            self.runtime.stop_body(task_id)
        elif not modern:
            raise wire.invalid(f"the task is already {wire.legacy_status(record)}: it cannot be cancelled")
        if modern:
            return {}
        return wire.legacy_task(await self._find(task_id), self.tracker.settings)

    async def _result(self, ctx: ServerRequestContext[Any, Any], params: TaskIdParams) -> dict[str, Any]:
        """2025-11-25: wait for the end, then the plain call's answer. A task waiting for input asks this client
        on this request's stream (the side channel), and the answers resume it as tasks/update would."""
        task_id = self._task_id(ctx, params)
        while True:
            record = await self._find(task_id)
            if record.is_terminal:
                return wire.legacy_result(record)
            if record.task_status == "input_required":
                await self._ask(ctx, record)
                continue
            await self.runtime.wait_changed(task_id, RESULT_WAIT_S)

    async def _ask(self, ctx: ServerRequestContext[Any, Any], record: TaskRecord) -> None:
        meta = {wire.RELATED_TASK: {"taskId": record.id}}
        answers = {key: await self._send(ctx, request, meta) for key, request in (record.input_requests or {}).items()}
        await self.answer(record, answers)

    async def _list(self, ctx: ServerRequestContext[Any, Any], params: ListParams) -> dict[str, Any]:
        subject = current_subject()
        if subject is None:
            # The spec: a server that cannot tell callers apart must not list tasks (anyone would see everyone's).
            raise MCPError(code=wire.METHOD_NOT_FOUND, message="tasks/list needs authenticated callers (serve --http with tokens)")
        await self.open_database()
        before = None
        if params.cursor is not None:
            if not isinstance(params.cursor, str):
                raise wire.invalid("cursor must be the nextCursor of the previous page")
            last = await off_loop(self.runtime.store.get, params.cursor, self.tracker.viewer(subject))
            if last is None:
                raise wire.invalid("cursor must be the nextCursor of the previous page")
            before = (last.started_at, last.id)
        viewer = self.tracker.viewer(subject)
        rows = await off_loop(self.runtime.store.list_tasks, viewer, before, LIST_PAGE + 1)
        page = rows[:LIST_PAGE]
        result: dict[str, Any] = {"tasks": [wire.legacy_task(r, self.tracker.settings) for r in page]}
        if len(rows) > LIST_PAGE:
            result["nextCursor"] = page[-1].id
        return result


def check_answer(key: str, request: dict[str, Any], response: dict[str, Any]) -> None:
    """An accepted elicitation's content must match the schema it was asked with (SEP-2322: servers validate)."""
    if request.get("method") != "elicitation/create" or response.get("action") != "accept":
        return
    schema = (request.get("params") or {}).get("requestedSchema")
    if not isinstance(schema, dict):
        return
    try:
        jsonschema.validate(response.get("content") or {}, schema)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(part) for part in exc.absolute_path) or "content"
        raise wire.invalid(f"inputResponses: the answer to {key} does not match its requested schema (at {where})") from None
    except jsonschema.SchemaError:
        return  # the tool's own schema is not valid JSON Schema: nothing to hold the answer to


def _dump(value: Any) -> Any:
    return value.model_dump(by_alias=True, mode="json", exclude_none=True) if hasattr(value, "model_dump") else value
