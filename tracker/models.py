"""Typed ORM models: the shape of the schema. Migrations (migrations/) are the only thing that creates it."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .timeutil import iso, parse_iso

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
STATUSES = (RUNNING, COMPLETED, FAILED, CANCELLED)
TERMINAL_STATUSES = (COMPLETED, FAILED, CANCELLED)
KINDS = ("run", "batch")
_UNBOUND_KEY = "subject IS NULL AND idempotency_key IS NOT NULL"


class UTCTimestamp(TypeDecorator[datetime]):
    """Aware UTC datetimes. SQLite stores them as '2026-11-23T18:57:33.123Z' text, which sqlite3 reads as ISO-8601
    and which sorts and compares as time; PostgreSQL uses timestamptz."""

    impl = String(24)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(24))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(timezone.utc)
        if dialect.name == "sqlite":
            return iso(value)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            return parse_iso(value)
        return value.astimezone(timezone.utc)


JSONValue = JSON().with_variant(JSONB(), "postgresql")
# INTEGER PRIMARY KEY is SQLite's rowid alias (no extra index); PostgreSQL gets a bigint identity.
ItemSeq = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Operation(Base):
    """One batch operation or one remote run. Counters are kept on the row, in the same transaction that adds items."""

    __tablename__ = "operations"

    id: Mapped[str] = mapped_column(String(96), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))
    operation_type: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=RUNNING)
    total: Mapped[int] = mapped_column(Integer, default=0)
    succeeded_count: Mapped[int] = mapped_column(Integer, default=0)
    failed_count: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(UTCTimestamp())
    updated_at: Mapped[datetime] = mapped_column(UTCTimestamp())
    completed_at: Mapped[datetime | None] = mapped_column(UTCTimestamp())
    execution_time_ms: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    inputs: Mapped[Any | None] = mapped_column(JSONValue)
    outputs: Mapped[Any | None] = mapped_column(JSONValue)
    owner_host: Mapped[str | None] = mapped_column(String(255))
    owner_pid: Mapped[int | None] = mapped_column(Integer)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCTimestamp())
    # A resumable operation whose owner died is left running for a new owner to pick up, not failed.
    resumable: Mapped[bool] = mapped_column(Boolean, default=False)
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("operations.id", ondelete="SET NULL"))
    request_id: Mapped[str | None] = mapped_column(String(128), unique=True)
    grid_id: Mapped[str | None] = mapped_column(String(128))
    mode: Mapped[str | None] = mapped_column(String(8))
    # Unique per subject (see __table_args__), so one caller's key never finds or blocks another's run.
    idempotency_key: Mapped[str | None] = mapped_column(String(256))
    last_polled_at: Mapped[datetime | None] = mapped_column(UTCTimestamp())
    # 1-based input row of the batch (parent_id) that this run was submitted for.
    row_number: Mapped[int | None] = mapped_column(Integer)
    # "<boot id>:<start ticks>" of the owner process (tracker.liveness): survives wall-clock steps and pid reuse.
    owner_process: Mapped[str | None] = mapped_column(String(64))
    # A poll in flight holds its run until its answer is written or this time (the database's clock) passes.
    poll_claimed_until: Mapped[datetime | None] = mapped_column(UTCTimestamp())
    poll_claim: Mapped[str | None] = mapped_column(String(32))  # the holder's token: only it renews or releases
    # The writer whose finish ended it: that writer's retry after a lost COMMIT reply gets the end, not an error.
    ended_by: Mapped[str | None] = mapped_column(String(32))
    # The authenticated caller that started it (a token's subject); NULL when recorded without one (stdio, the
    # library), which every caller may see. Reads filter on it: tracker.store.operations.visible.
    subject: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        CheckConstraint("kind IN ('run', 'batch')", name="kind"),
        CheckConstraint("status IN ('running', 'completed', 'failed', 'cancelled')", name="status"),
        CheckConstraint("total >= 0 AND succeeded_count >= 0 AND failed_count >= 0", name="counts"),
        Index("ix_operations_started_at_id", "started_at", "id"),
        Index("ix_operations_status_completed_at", "status", "completed_at"),
        Index("ix_operations_parent_id", "parent_id"),
        Index("ux_operations_parent_id_row_number", "parent_id", "row_number", unique=True),
        # list_operations for one subject: newest first within it, as ix_operations_started_at_id is for all.
        Index("ix_operations_subject_started_at_id", "subject", "started_at", "id"),
        # An idempotency key is unique per subject; NULL subjects are distinct in the first, hence the second.
        Index(
            "ux_operations_idempotency_key_subject", "idempotency_key", "subject", unique=True,
            sqlite_where=text("idempotency_key IS NOT NULL"), postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        Index(
            "ux_operations_idempotency_key_unbound", "idempotency_key", unique=True,
            sqlite_where=text(_UNBOUND_KEY), postgresql_where=text(_UNBOUND_KEY),
        ),
    )


class UpstreamRateLimit(Base):
    """The next free request slot (epoch seconds) of one upstream workspace, shared by every process on the
    database. Holds a hash of base URL and key, never the key."""

    __tablename__ = "upstream_rate_limits"

    workspace: Mapped[str] = mapped_column(String(64), primary_key=True)
    next_slot_at: Mapped[float] = mapped_column(Float)


class OperationWriter(Base):
    """One process recording into an operation (its starter or a process that attached). Keeps the operation alive
    while any writer is, and makes group writes idempotent: a group carries (writer_id, group number) and is applied
    only if last_group is below that number, so a retry after a lost COMMIT reply applies it once or not at all."""

    __tablename__ = "operation_writers"

    operation_id: Mapped[str] = mapped_column(ForeignKey("operations.id", ondelete="CASCADE"), primary_key=True)
    writer_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    process: Mapped[str | None] = mapped_column(String(64))
    heartbeat_at: Mapped[datetime] = mapped_column(UTCTimestamp())
    last_group: Mapped[int] = mapped_column(BigInteger)


class OperationItem(Base):
    """One processed item of an operation: a success (item_id) or a failure (item_id and/or row_number, error).
    seq orders items by completion; items are appended, never rewritten."""

    __tablename__ = "operation_items"

    seq: Mapped[int] = mapped_column(ItemSeq, primary_key=True, autoincrement=True)
    operation_id: Mapped[str] = mapped_column(ForeignKey("operations.id", ondelete="CASCADE"))
    ok: Mapped[bool] = mapped_column(Boolean)
    item_id: Mapped[str | None] = mapped_column(Text)
    row_number: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_operation_items_operation_id_ok_seq", "operation_id", "ok", "seq"),)


class RunBatchRow(Base):
    """One input row of a run batch (run_grid_batch), numbered from 1. Kept out of the batch's own row, whose inputs
    hold only the batch's parameters and row count: a status read of the batch never reads its rows (10,000 rows
    may be 100 MB), and its worker reads one row at a time, when it submits it."""

    __tablename__ = "run_batch_rows"

    batch_id: Mapped[str] = mapped_column(ForeignKey("operations.id", ondelete="CASCADE"), primary_key=True)
    row_number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    inputs: Mapped[Any] = mapped_column(JSONValue)


TASK_WORKING = "working"
TASK_INPUT_REQUIRED = "input_required"
TASK_PHASES = (TASK_WORKING, TASK_INPUT_REQUIRED)


class Task(Base):
    """An MCP task (tracker.server.tasks): a tools/call that became an operation. Its status, times, subject and
    result live on the operation row (outputs: the tool's result); this row holds what only a task has: the call
    to run again, the revision it was made on, and its input round (requests still open, answers given so far)."""

    __tablename__ = "tasks"

    operation_id: Mapped[str] = mapped_column(ForeignKey("operations.id", ondelete="CASCADE"), primary_key=True)
    tool: Mapped[str] = mapped_column(String(128))
    arguments: Mapped[Any] = mapped_column(JSONValue)
    revision: Mapped[str] = mapped_column(String(16))  # the protocol revision that made it: its wire shapes
    # While the operation runs: working (some process runs the tool) or input_required (nobody does; answers
    # through tasks/update, or tasks/result on 2025-11-25, resume it at whichever server gets them).
    phase: Mapped[str] = mapped_column(String(16), default=TASK_WORKING)
    input_requests: Mapped[Any | None] = mapped_column(JSONValue)  # {key: request} still unanswered
    input_responses: Mapped[Any | None] = mapped_column(JSONValue)  # {key: response} answered so far
    asked_keys: Mapped[Any | None] = mapped_column(JSONValue)  # every key ever asked: unique for the task's life
    request_state: Mapped[str | None] = mapped_column(Text)
    rpc_error: Mapped[Any | None] = mapped_column(JSONValue)  # a failed task's JSON-RPC error {code, message, data}
    rerun: Mapped[bool] = mapped_column(Boolean, default=False)  # its tool is declared safe to run again
    takeovers: Mapped[int] = mapped_column(Integer, default=0)  # times a live server took it over from a dead one

    __table_args__ = (CheckConstraint("phase IN ('working', 'input_required')", name="phase"),)
