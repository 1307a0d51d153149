"""Plain, immutable values that the store hands to the service and protocol layers (and the Viewer they hand it)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .checks import optional_subject
from .liveness import Process
from .models import COMPLETED, FAILED, TERMINAL_STATUSES

if TYPE_CHECKING:
    from .settings import Settings


class _Progress:
    """completed, percent and is_terminal, for any record with the counters and the status."""

    __slots__ = ()
    status: str
    total: int
    succeeded_count: int
    failed_count: int

    @property
    def completed(self) -> int:
        """Items processed, successes and failures together."""
        return self.succeeded_count + self.failed_count

    @property
    def percent(self) -> float:
        if self.total > 0:
            return min(100.0, round(100.0 * self.completed / self.total, 2))
        return 100.0 if self.is_terminal else 0.0

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class OperationRecord(_Progress):
    """An operation as status, list, adopt and poll reads see it: every column but `inputs` and `outputs`, which
    may be large (a library batch's inputs are the caller's JSON) and which no such answer shows."""

    id: str
    kind: str
    operation_type: str
    status: str
    total: int
    succeeded_count: int
    failed_count: int
    started_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    execution_time_ms: int | None
    error: str | None
    owner_host: str | None
    owner_pid: int | None
    heartbeat_at: datetime | None
    resumable: bool
    parent_id: str | None
    request_id: str | None
    grid_id: str | None
    mode: str | None
    idempotency_key: str | None
    last_polled_at: datetime | None
    row_number: int | None  # a run submitted by a batch: its 1-based input row
    owner_process: str | None  # the owner's identity on its host (tracker.liveness)
    poll_claimed_until: datetime | None
    poll_claim: str | None
    ended_by: str | None
    subject: str | None  # the authenticated caller that started it; None: recorded without one (Viewer)

    @property
    def natural_end(self) -> str:
        """The state finishing it now gives: failed when every processed item failed (at least one failure and no
        success), otherwise completed."""
        return FAILED if self.failed_count > 0 and self.succeeded_count == 0 else COMPLETED

    @property
    def item_id(self) -> str:
        """The id a batch reports for this run: its upstream request_id, or its own id for a sync run that
        completed at once (the upstream gives those no request_id)."""
        return self.request_id or self.id


@dataclass(frozen=True, slots=True)
class StatusRecord(_Progress):
    """An operation as a status answer (get_batch_status) shows it, and no column more: the hot read path selects
    only these (tracker.store.operations.STATUS_COLUMNS)."""

    id: str
    kind: str
    operation_type: str
    status: str
    total: int
    succeeded_count: int
    failed_count: int
    started_at: datetime
    completed_at: datetime | None
    execution_time_ms: int | None
    error: str | None


@dataclass(frozen=True)
class RunRecord(OperationRecord):
    """An operation with its outputs: what a run's answer shows. A running operation's outputs are NULL, so the
    poll and adopt reads of running rows pay nothing for them."""

    outputs: Any


@dataclass(frozen=True)
class OperationDetail(RunRecord):
    """Every stored field, inputs too: the library's get, `tracker show`, and a batch worker's parameters."""

    inputs: Any


@dataclass(frozen=True)
class Viewer:
    """Who is reading, and so which operations a read may show (the rule; tracker.store.operations.visible writes it
    in SQL). A viewer without a subject (stdio, the library, the operator commands) sees every operation. An
    authenticated caller (its token's subject) sees the operations it started and those recorded without a
    subject; with `own_only` (TRACKER_SUBJECT_BOUND_ONLY) only its own. Every other operation is answered exactly
    as an id that never existed."""

    subject: str | None = None
    own_only: bool = False

    @classmethod
    def of(cls, subject: str | None, settings: Settings) -> Viewer:
        """The caller with this subject (checked: at most limits.SUBJECT_CHARS), under these settings."""
        return cls(optional_subject(subject), settings.subject_bound_only)

    @property
    def scope(self) -> str:
        """What the read's SQL depends on (the subject is only its parameter): "all", "own" or "own_and_unbound"."""
        if self.subject is None:
            return "all"
        return "own" if self.own_only else "own_and_unbound"


EVERYONE = Viewer()


@dataclass(frozen=True)
class ItemRecord:
    seq: int
    ok: bool
    item_id: str | None
    row_number: int | None
    error: str | None


# An item waiting in a handle's buffer: its operation_items row as inserted, (operation_id, ok, item_id,
# row_number, error), ok as 1 or 0 (a bool is accepted too). A plain tuple of atoms, not a class, because the
# garbage collector untracks those; buffered objects otherwise trigger full collections (measured: +40% per-item
# cost in some deciles of a 100,000-item batch). The whole row, so that a flush hands the buffer to executemany as
# it is (rebuilding each row there was 7% of a flush), and an int flag because SQLite's driver binds an int
# directly and a bool through its adapter lookup (measured: the insert 1.17x faster with ints).
NewItem = tuple[str, int, str | None, int | None, str | None]


@dataclass(frozen=True)
class Writer:
    """A process recording into an operation, as its operation_writers row names it."""

    writer_id: str
    process: Process


@dataclass(frozen=True)
class TaskRecord:
    """An MCP task as the tasks methods read it: its operation's status, times, message and result, with the
    task's own fields (tracker.models.Task)."""

    id: str
    operation_type: str  # "task:<tool>"
    status: str  # the operation's: running, completed, failed, cancelled
    started_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    error: str | None  # the operation's message: why it failed or was cancelled
    outputs: Any  # the tool's result (a CallToolResult as JSON) once completed
    subject: str | None
    owner_host: str | None
    owner_pid: int | None
    owner_process: str | None
    heartbeat_at: datetime | None
    resumable: bool
    tool: str
    arguments: Any
    revision: str
    phase: str
    input_requests: Any
    input_responses: Any
    asked_keys: Any
    request_state: str | None
    rpc_error: Any
    rerun: bool
    takeovers: int

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def task_status(self) -> str:
        """working, input_required, completed, failed or cancelled."""
        return self.phase if self.status == "running" else self.status
