"""The remote-run tools: run_grid, run_grid_batch and get_run_status (the only one: it polls the upstream when
one is configured, else answers from the table), over a RunsService.

Each tool checks nothing itself beyond the SDK's plumbing: the service validates (one-line messages naming the
parameter), and tracker's errors reach the model as ToolError with that message."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ToolAnnotations
from pydantic import Field, WithJsonSchema

from ..errors import OperationNotFound
from ..limits import (
    BATCH_CONCURRENCY,
    BATCH_CONCURRENCY_DEFAULT,
    BATCH_ROWS,
    ID_CHARS,
    INPUT_COLUMNS,
    INPUT_VALUE_CHARS,
    KEY_CHARS,
)
from ..remote import RunsService
from ..remote.service import Progress
from ..remote.requests import MODES
from ..settings import format_duration
from ..shapes import BatchStarted, Run, RunStatus
from ..checks import require_id
from .caller import current_subject
from .status_tools import as_tool_errors
from .tasks.runtime import current_task
from .strict import AS_GIVEN, ID_SCHEMA, add_strict_tool, describe, nullable


GridId = Annotated[
    str, AS_GIVEN, WithJsonSchema(ID_SCHEMA), Field(description="the grid to run"),
]
_INPUTS_SCHEMA = {
    "type": "object", "minProperties": 1, "maxProperties": INPUT_COLUMNS,
    "propertyNames": {"minLength": 1, "maxLength": ID_CHARS},
    "additionalProperties": {"type": "string", "maxLength": INPUT_VALUE_CHARS},
}
Inputs = Annotated[
    dict[str, str], AS_GIVEN, WithJsonSchema(_INPUTS_SCHEMA),
    Field(description="input column label -> value for the new row (get_grid_details lists the labels)"),
]
Rows = Annotated[
    list[dict[str, str]], AS_GIVEN,
    WithJsonSchema({"type": "array", "minItems": 1, "maxItems": BATCH_ROWS, "items": _INPUTS_SCHEMA}),
    Field(description=f"one inputs object per run, at most {BATCH_ROWS}"),
]
Mode = Annotated[str, AS_GIVEN, WithJsonSchema({"type": "string", "enum": list(MODES)})]
# Optional arguments are not required; one that takes an explicit null as "omitted" says so with anyOf (no
# ["string", "null"] arrays, which strict clients warn about).
OutputColumns = Annotated[
    list[str] | None, AS_GIVEN,
    WithJsonSchema(nullable({"type": "array", "items": ID_SCHEMA})),
    Field(description="column ids to return; omit for all"),
]
SourceId = Annotated[
    str | None, AS_GIVEN, WithJsonSchema(nullable(ID_SCHEMA)),
    Field(description="the upstream's source_id for the new row, if any"),
]
IdempotencyKey = Annotated[
    str | None, AS_GIVEN, WithJsonSchema(nullable({"type": "string", "minLength": 1, "maxLength": KEY_CHARS})),
    Field(description="any unique string; calling again with the same key returns the same run, submitted once"),
]
Concurrency = Annotated[
    int, AS_GIVEN, WithJsonSchema({"type": "integer", "minimum": 1, "maximum": BATCH_CONCURRENCY}),
    Field(description="runs submitted at a time (the shared rate limit applies regardless)"),
]
RequestId = Annotated[
    str, AS_GIVEN, WithJsonSchema(ID_SCHEMA),
    Field(description="the request_id that run_grid returned (or the run's operation_id)"),
]

STARTS_RUNS = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=True)
READS_UPSTREAM = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=True)


def _progress_to(ctx: Context | None) -> Progress | None:
    """Progress notifications to the caller of this request (the SDK sends none unless it gave a progressToken)."""
    if ctx is None:
        return None

    async def report(waited: float, message: str) -> None:
        if current_task() is None:  # once the call became a task, its request has been answered
            await ctx.report_progress(waited, message=message)

    return report


class RunTools:
    def __init__(self, runs: RunsService) -> None:
        self.runs = runs
        self.retention = format_duration(runs.settings.retention_s)

    async def run_grid(
        self,
        grid_id: GridId,
        inputs: Inputs,
        mode: Mode = "sync",
        output_columns: OutputColumns = None,
        source_id: SourceId = None,
        idempotency_key: IdempotencyKey = None,
        ctx: Context | None = None,
    ) -> Run:
        """Run a grid on one new row of inputs (this spends credits; get_grid_details lists the input labels).
        mode="sync" waits at most <sync_wait> and returns {mode, status: "completed", outputs: {column_id: {value,
        name}}}; if the run takes longer, or with mode="async", it returns {status: "running", operation_id,
        request_id, poll_url} (request_id once the upstream gave one): then call get_run_status with the
        request_id (or the operation_id) every 2-5 seconds. Every answer names the run's operation_id, and every
        run is recorded, so its status survives restarts and a lost call. Pass an idempotency_key when you might
        retry: a repeated key returns the recorded run and submits nothing. An error mentioning "unknown" means
        the upstream may have the run; do not resubmit blindly."""
        with as_tool_errors():
            subject = current_subject()
            run = await self.runs.run_grid(
                grid_id, inputs, mode, output_columns, source_id, idempotency_key, progress=_progress_to(ctx),
                subject=subject,
            )
            if current_task() is not None:  # a task's answer is the run's end, however long it takes
                run = await self.runs.run_to_end(run, subject)
            return run

    async def run_grid_batch(
        self,
        grid_id: GridId,
        rows: Rows,
        mode: Mode = "async",
        output_columns: OutputColumns = None,
        source_id: SourceId = None,
        concurrency: Concurrency = BATCH_CONCURRENCY_DEFAULT,
    ) -> BatchStarted:
        """Run a grid once per row of inputs, in the background (each run spends credits). Returns at once with
        {batch_operation_id, status: "running", total}; poll get_batch_status(batch_operation_id) every 2-5
        seconds for progress. When it ends, successful_ids are the runs' request_ids (pass one to get_run_status
        for its outputs) and failed_items carry the row_number (1-based) and the error. cancel_operation stops
        further submissions. The batch survives a server restart: rows already submitted are never submitted
        again."""
        with as_tool_errors():
            started = await self.runs.run_grid_batch(
                grid_id, rows, mode, output_columns, source_id, concurrency, subject=current_subject()
            )
            if current_task() is not None:  # a task's answer is the batch's end
                return await self.runs.batch_to_end(started)
            return started

    async def get_run_status(self, request_id: RequestId) -> RunStatus:
        """Status of a grid run by the request_id that run_grid returned: {found: true, mode, status, grid_id,
        outputs (when completed), error (when failed)}. status is running, completed, failed or cancelled. While
        running, call again every 2-5 seconds (tracker asks the upstream at most once per poll interval). stale:
        true means the upstream could not be reached: the status is the last one known, and error says why.
        {"found": false} means neither tracker nor the upstream knows the id (runs are kept for <retention>
        after completion)."""
        with as_tool_errors():
            checked = require_id(request_id, "request_id")
            try:
                return {"found": True, **await self.runs.get_run_status(checked, current_subject())}
            except OperationNotFound as exc:
                return {
                    "found": False,
                    "message": f'Run "{checked}" not found: {exc}. Runs are kept for {self.retention} after completion.',
                }

    def register(self, server: MCPServer, status_only: bool = False) -> None:
        """Add the three tools, or only get_run_status (for a server that starts no runs itself)."""
        tools: list[tuple[Callable[..., Any], ToolAnnotations]] = [(self.get_run_status, READS_UPSTREAM)]
        if not status_only:
            tools[:0] = [(self.run_grid, STARTS_RUNS), (self.run_grid_batch, STARTS_RUNS)]
        for fn, hints in tools:
            values = {"<retention>": self.retention, "<sync_wait>": format_duration(self.runs.settings.sync_wait_s)}
            add_strict_tool(server, fn, fn.__name__, describe(fn, values), hints)


def mount_run_tools(server: MCPServer, runs_service: RunsService, status_only: bool = False) -> None:
    """Add run_grid, run_grid_batch and get_run_status to `server` (status_only: get_run_status alone). Run
    `run_lifespan(runs_service)` as the server's lifespan so running runs are polled and orphaned batches
    resumed."""
    RunTools(runs_service).register(server, status_only)


def run_lifespan(runs_service: RunsService) -> Callable[[MCPServer], AbstractAsyncContextManager[None]]:
    """A lifespan for MCPServer(lifespan=...): background polling and batch resumption while the server runs."""

    @asynccontextmanager
    async def lifespan(_server: MCPServer) -> AsyncIterator[None]:
        await runs_service.start()
        try:
            yield
        finally:
            await runs_service.aclose()

    return lifespan
