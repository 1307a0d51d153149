"""The answers tracker's tools return, as typed structures: the one definition of each shape. The MCP SDK derives
every tool's output schema from these, and validates each answer against its shape before it is sent, so the
schema a client reads is the answer it gets (CONTRACTS.md sections 1 and 2).

Rules: a field the original contracts leave out while unknown is NotRequired and left out, never null; a field
of tracker's own that is null by design (a cursor on the last page) is `str | None`, which the schema states as
anyOf, never as a type array. tracker's own shapes forbid other keys, so a field added to an answer without its
definition here fails in tests instead of vanishing from structuredContent; the upstream's own answers (a run's
outputs) are kept as they came."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, with_config
from typing_extensions import NotRequired, Required, TypedDict

from .models import KINDS, STATUSES

Status = Literal[STATUSES]  # type: ignore[valid-type]
Kind = Literal[KINDS]  # type: ignore[valid-type]
Mode = Literal["sync", "async"]
EXACT = ConfigDict(extra="forbid")


@with_config(EXACT)
class Progress(TypedDict):
    completed: int
    total: int
    percent: float


@with_config(EXACT)
class FailedItem(TypedDict):
    """One failure: its item id and/or 1-based row number, each left out when the failure has none."""

    id: NotRequired[str]
    row_number: NotRequired[int]
    error: str


@with_config(EXACT)
class OperationCore(TypedDict):
    """What every view of an operation shows: the batch status of get_batch_status and a row of list_operations."""

    operation_type: str
    status: Status
    progress: Progress
    started_at: str
    completed_at: NotRequired[str]  # left out while running
    execution_time_ms: NotRequired[int]  # left out while running
    kind: Kind
    succeeded_count: int
    failed_count: int
    error: str | None


@with_config(EXACT)
class Operation(OperationCore):
    """CONTRACTS.md section 1 OPERATION, and the bounded first page of its items with cursors for the rest."""

    batch_operation_id: str
    successful_ids: list[str]
    failed_items: list[FailedItem]
    successful_ids_truncated: bool
    successful_ids_next_cursor: str | None
    failed_items_truncated: bool
    failed_items_next_cursor: str | None


@with_config(EXACT)
class BatchStatus(TypedDict):
    """get_batch_status: the operation when found, else a message saying how long operations are kept."""

    found: bool
    operation: NotRequired[Operation]
    message: NotRequired[str]


@with_config(EXACT)
class Cancelled(BatchStatus):
    cancelled: NotRequired[bool]  # true when found: the operation is cancelled now


@with_config(EXACT)
class OperationSummary(OperationCore):
    """A row of list_operations; runs add their request_id (once the upstream gave one), grid_id and mode."""

    operation_id: str
    request_id: NotRequired[str]
    grid_id: NotRequired[str]
    mode: NotRequired[Mode]


@with_config(EXACT)
class OperationPage(TypedDict):
    operations: list[OperationSummary]
    count: int
    next_cursor: str | None  # null on the last page


@with_config(EXACT)
class OperationItems(TypedDict):
    """get_operation_items: a page of successful ids (str) or failures; all but found/message only when found."""

    found: bool
    operation_id: NotRequired[str]
    outcome: NotRequired[Literal["succeeded", "failed"]]
    status: NotRequired[Status]
    total_count: NotRequired[int]
    items: NotRequired[list[str | FailedItem]]
    next_cursor: NotRequired[str | None]  # null when there are no more items yet
    message: NotRequired[str]


# The upstream's outputs of a completed run, as it sends them: column_id -> {value, name} (any JSON is kept).
Outputs = Annotated[
    dict[str, Any], Field(description="column_id -> {value, name}, as the upstream sent them")
]


@with_config(EXACT)
class RunFields(TypedDict, total=False):
    """A run's fields that appear only when they apply (CONTRACTS.md section 2 plus tracker's own)."""

    mode: Mode  # left out only for a run first seen upstream that did not say
    grid_id: str  # likewise
    request_id: str  # the upstream's id, once it gave one
    outputs: Outputs  # when completed
    poll_url: str  # the upstream's status URL, while running with a request_id
    error: str  # when failed, or why the status is stale
    batch_operation_id: str  # the batch a run_grid_batch run belongs to
    row_number: int  # its 1-based input row in that batch
    completed_at: str
    last_polled_at: str
    message: str  # while running: when to poll again
    replayed: bool  # an idempotency_key seen before: the recorded run, nothing submitted


@with_config(EXACT)
class Run(RunFields):
    """run_grid's answer: the upstream's {mode, status, grid_id, outputs | request_id, poll_url}, plus the run's
    operation_id (always, so a client that lost the call can poll it), stale and started_at."""

    status: Required[Status]
    operation_id: Required[str]
    stale: Required[bool]  # true: the status is the last one known (the upstream could not be asked)
    started_at: Required[str]


@with_config(EXACT)
class RunStatus(RunFields, total=False):
    """get_run_status: found, and when found every field of Run; else a message."""

    found: Required[bool]
    status: Status
    operation_id: str
    stale: bool
    started_at: str


@with_config(EXACT)
class BatchStarted(TypedDict):
    """run_grid_batch's answer, at once: the batch to poll with get_batch_status."""

    batch_operation_id: str
    status: Status
    total: int
    started_at: str
    message: str


# -- the grid reads (tracker/remote/grids.py) ------------------------------------------------------------------------
# The upstream's own answers (workspace, page, grid) keep every field the upstream sends, known or not
# (extra="allow"): only the fields an agent relies on are required. Values are taken strictly, never coerced: an
# answer is shown as the upstream sent it. get_grid_curl's answer is tracker's own, so it allows no other keys.

UPSTREAM = ConfigDict(extra="allow", strict=True)
OWN = ConfigDict(extra="forbid", strict=True)
Number = int | float


# -- the upstream's answers ------------------------------------------------------------------------------------------


@with_config(UPSTREAM)
class Plan(TypedDict, total=False):
    name: str
    credits_included: Number
    billing_interval: str


@with_config(UPSTREAM)
class Credits(TypedDict, total=False):
    total: Number
    used: Number
    remaining: Number


@with_config(UPSTREAM)
class Members(TypedDict, total=False):
    total: int


@with_config(UPSTREAM)
class Workspace(TypedDict):
    """The workspace the API key belongs to, as GET /workspace answers it (every other field kept as sent)."""

    id: str
    name: str
    plan: NotRequired[Plan]
    credits: NotRequired[Credits]
    members: NotRequired[Members]


@with_config(UPSTREAM)
class GridSummary(TypedDict):
    """A grid in a list_grids page: its id is what run_grid, get_grid_details and get_grid_curl take."""

    id: str
    name: str
    description: NotRequired[str | None]
    row_count: NotRequired[int]
    column_count: NotRequired[int]
    created_at: NotRequired[str]
    updated_at: NotRequired[str]


@with_config(UPSTREAM)
class GridPage(TypedDict):
    """One page of GET /grids: `total` grids match, `limit` a page, pages numbered from 1."""

    grids: list[GridSummary]
    page: NotRequired[int]
    limit: NotRequired[int]
    total: NotRequired[int]


@with_config(UPSTREAM)
class Column(TypedDict):
    """A grid column. is_input: a run's inputs name it by its label; the others are outputs, named by id in
    run_grid's output_columns."""

    id: str
    name: str
    type: NotRequired[str]
    is_input: NotRequired[bool]
    label: NotRequired[str]
    dependencies: NotRequired[list[str]]


@with_config(UPSTREAM)
class GridDetails(TypedDict):
    """A grid's details, as GET /grids/{grid_id} answers them."""

    id: str
    name: str
    description: NotRequired[str | None]
    row_count: NotRequired[int]
    created_at: NotRequired[str]
    updated_at: NotRequired[str]
    columns: list[Column]


# -- tracker's own answer ----------------------------------------------------------------------------------------------


@with_config(OWN)
class OutputColumn(TypedDict):
    id: str
    name: str
    type: NotRequired[str]


@with_config(OWN)
class RunBody(TypedDict):
    mode: str
    inputs: dict[str, str]


@with_config(OWN)
class GridCurl(TypedDict):
    """How to run a grid outside the agent: the POST run_grid makes, as a curl command with the key as a shell
    variable (never the key itself)."""

    grid_id: str
    grid_name: str
    method: str
    run_url: str
    headers: dict[str, str]
    request_body: RunBody
    input_labels: list[str]
    output_columns: list[OutputColumn]
    curl: str
