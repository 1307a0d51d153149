"""The status tools: each checks its arguments, calls tracker.status off the event loop (a status read that waits on
nothing runs on it: get_batch_status), and returns its answer.

Parameters take any JSON value and are checked here (tracker.status), so a wrong type gets the same one-line
message naming the parameter as every other bad input; their JSON schema still tells the model the type."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field, WithJsonSchema

from .. import limits
from ..aio import off_loop as _off_loop
from ..api import Tracker
from ..errors import TrackerError
from ..models import KINDS, STATUSES
from ..checks import optional_choice, optional_operation_type, require_id, require_limit
from ..status import (
    OUTCOMES,
    StatusService,
    require_outcome,
)
from ..shapes import BatchStatus, Cancelled, OperationItems, OperationPage
from .caller import current_subject
from .strict import AS_GIVEN, ID_SCHEMA, add_strict_tool, describe, nullable


# `str` (not Any) keeps the SDK from JSON-decoding an id such as "null" before we see it.
_ID_SCHEMA = WithJsonSchema(ID_SCHEMA)
BatchOperationId = Annotated[
    str, AS_GIVEN, _ID_SCHEMA, Field(description="the batch_operation_id the batch tool returned")
]
OperationId = Annotated[
    str, AS_GIVEN, _ID_SCHEMA, Field(description="an operation id (a batch_operation_id or a run's)")
]
Cursor = Annotated[
    Any,
    AS_GIVEN,
    WithJsonSchema(nullable({"type": "string", "maxLength": limits.CURSOR_CHARS})),
    Field(description="next_cursor from the previous page; omit it for the first page"),
]
Kind = Annotated[
    Any, AS_GIVEN, WithJsonSchema(nullable({"type": "string", "enum": list(KINDS)})), Field(description="only batches, or only remote runs")
]
Status = Annotated[
    Any, AS_GIVEN, WithJsonSchema(nullable({"type": "string", "enum": list(STATUSES)})), Field(description="only operations in this status")
]
OperationType = Annotated[
    Any,
    AS_GIVEN,
    WithJsonSchema(nullable({"type": "string", "minLength": 1, "maxLength": limits.OPERATION_TYPE_CHARS})),
    Field(description="only this operation_type, e.g. import"),
]
ListLimit = Annotated[
    Any,
    AS_GIVEN,
    WithJsonSchema(nullable({"type": "integer", "minimum": 1, "maximum": limits.LIST_LIMIT})),
    Field(description=f"operations per page (default {limits.LIST_LIMIT_DEFAULT})"),
]
ItemsLimit = Annotated[
    Any,
    AS_GIVEN,
    WithJsonSchema(nullable({"type": "integer", "minimum": 1, "maximum": limits.ITEMS_LIMIT})),
    Field(description=f"items per page (default {limits.ITEMS_LIMIT_DEFAULT}); a page of long items holds fewer"),
]
Outcome = Annotated[
    Any,
    AS_GIVEN,
    WithJsonSchema(nullable({"type": "string", "enum": list(OUTCOMES)})),
    Field(description="succeeded: the successful ids; failed: the failures with their errors"),
]

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
# Cancelling again changes nothing (the operation stays cancelled; the repeat says so): idempotent.
CANCELS = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False)


@contextmanager
def as_tool_errors() -> Iterator[None]:
    """tracker's own errors reach the model as their one-line message; anything else the SDK logs with its
    traceback on stderr and reports only as "Error executing tool <name>"."""
    try:
        yield
    except TrackerError as exc:
        raise ToolError(str(exc)) from None


class StatusTools:
    """The five status tools over one Tracker. register() adds them to an MCPServer."""

    def __init__(self, tracker: Tracker) -> None:
        self.service = StatusService(tracker)

    async def get_batch_status(self, batch_operation_id: BatchOperationId) -> BatchStatus:
        """Status of a batch operation (update, delete, import, ...) that a tool started and handed you a
        batch_operation_id for. Returns {"found": true, "operation": {batch_operation_id, operation_type, status,
        progress: {completed, total, percent}, successful_ids, failed_items: [{id?, row_number?, error}],
        started_at, completed_at, execution_time_ms, ...}}. status is running, completed, failed or cancelled;
        the last three never change again. successful_ids and failed_items hold only the first items of a large
        batch: when successful_ids_truncated / failed_items_truncated is true, pass the matching *_next_cursor to
        get_operation_items for the rest. While status is running, poll again every 2-5 seconds.
        {"found": false} means no such operation: the id is wrong, or it finished more than <retention> ago
        (operations are kept for <retention> after completion)."""
        with as_tool_errors():
            operation_id = require_id(batch_operation_id, "batch_operation_id")
            if self.service.status_read_at_once():
                # One primary-key row and two bounded index pages on an idle local connection: less time than the
                # hop to a worker thread and back (figure 2's MCP round trip: 3-5% faster on the loop).
                return self.service.batch_status(operation_id, current_subject())
            return await _off_loop(self.service.batch_status, operation_id, current_subject())

    async def list_operations(
        self,
        kind: Kind = None,
        status: Status = None,
        operation_type: OperationType = None,
        limit: ListLimit = limits.LIST_LIMIT_DEFAULT,
        cursor: Cursor = None,
    ) -> OperationPage:
        """Recent batch operations and remote runs, newest first, optionally only one kind, status or
        operation_type. Returns {"operations": [{operation_id, kind, operation_type, status, progress, counts,
        started_at, completed_at, ...}], "next_cursor"}. next_cursor is null on the last page; otherwise pass it
        back with the same filters for the next page (pages never repeat or skip an operation, even while new
        ones start). Operations are kept for <retention> after completion. limit: 1 to <list_limit>."""
        with as_tool_errors():
            checked = (
                optional_choice(kind, "kind", KINDS),
                optional_choice(status, "status", STATUSES),
                optional_operation_type(operation_type),
                require_limit(limit, "limit", limits.LIST_LIMIT, limits.LIST_LIMIT_DEFAULT),
            )
            return await _off_loop(self.service.list_operations, *checked, cursor, current_subject())

    async def get_operation_items(
        self,
        operation_id: OperationId,
        outcome: Outcome = "succeeded",
        cursor: Cursor = None,
        limit: ItemsLimit = None,
    ) -> OperationItems:
        """Pages through all the successful ids (outcome="succeeded") or all the failures with their full error
        text (outcome="failed") of an operation, in completion order. Returns {"found": true, "items": [...],
        "total_count", "status", "next_cursor"}; next_cursor is null when there are no more items (yet: a running
        operation gains items). Start with the *_next_cursor from get_batch_status, or with no cursor for the
        first page. limit: 1 to <items_limit>, default <items_default>. {"found": false}: no such operation (kept for <retention>
        after completion)."""
        with as_tool_errors():
            checked_id = require_id(operation_id, "operation_id")
            checked_outcome = require_outcome(outcome)
            checked_limit = require_limit(limit, "limit", limits.ITEMS_LIMIT, limits.ITEMS_LIMIT_DEFAULT)
            return await _off_loop(
                self.service.operation_items, checked_id, checked_outcome, cursor, checked_limit, current_subject()
            )

    async def cancel_operation(self, operation_id: OperationId) -> Cancelled:
        """Cancels a running batch operation or run: its status becomes cancelled at once, and the process doing
        the work stops at its next recorded item; items already done stay done. Returns {"cancelled": true,
        "found": true, "operation": ...} as get_batch_status does. Cancelling an operation that already completed,
        failed or was cancelled is an error that says its status. {"found": false}: no such operation (kept for
        <retention> after completion), nothing was cancelled."""
        with as_tool_errors():
            checked = require_id(operation_id, "operation_id")
            return await _off_loop(self.service.cancel, checked, current_subject())

    def _doc_values(self) -> dict[str, str]:
        """What the docstrings' <placeholders> say: the bounds from tracker.limits, the retention from settings."""
        return {
            "<retention>": self.service.retention,
            "<list_limit>": str(limits.LIST_LIMIT),
            "<items_limit>": str(limits.ITEMS_LIMIT),
            "<items_default>": str(limits.ITEMS_LIMIT_DEFAULT),
        }

    def register(self, server: MCPServer) -> None:
        tools: list[tuple[Callable[..., Any], ToolAnnotations]] = [
            (self.get_batch_status, READ_ONLY),
            (self.list_operations, READ_ONLY),
            (self.get_operation_items, READ_ONLY),
            (self.cancel_operation, CANCELS),
        ]
        for fn, annotations in tools:
            add_strict_tool(server, fn, fn.__name__, describe(fn, self._doc_values()), annotations)
