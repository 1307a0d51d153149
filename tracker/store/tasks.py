"""The SQL of MCP tasks (tracker.server.tasks): a task is an operation row plus its tasks row, written together.

Every change is one short transaction that starts with the operation row (the lock order of every write path), so
that whoever races on a task (two servers answering its input, a cancel and a finish, two takeovers) is decided by
a guarded UPDATE's rowcount, on SQLite's serialised writers and PostgreSQL's row locks alike."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from ..db import write_connection
from ..errors import OperationNotFound
from ..models import RUNNING, TASK_INPUT_REQUIRED, TASK_WORKING, Operation, OperationWriter, Task
from ..records import EVERYONE, TaskRecord, Viewer, Writer
from .clock import db_now
from .operations import Store, end_running, new_operation_row, viewer_params, where_visible

_OPS = Operation.__table__
_TASKS = Task.__table__
_WRITERS = OperationWriter.__table__
_TASK_FIELDS = {f.name for f in fields(TaskRecord)}
_COLUMNS = [
    *(_OPS.c[name] for name in _TASK_FIELDS if name in _OPS.c and name != "id"),
    _OPS.c.id,
    *(_TASKS.c[name] for name in _TASK_FIELDS if name in _TASKS.c),
]
_SELECT = select(*_COLUMNS).select_from(_OPS.join(_TASKS, _TASKS.c.operation_id == _OPS.c.id))


def _owned_by(writer: Writer, now: datetime) -> dict[str, Any]:
    """The operation's owner columns for the process that now runs its task."""
    process = writer.process
    return {"owner_host": process.host, "owner_pid": process.pid, "owner_process": process.identity,
            "heartbeat_at": now, "updated_at": now}


def _record(row: Any) -> TaskRecord:
    return TaskRecord(**row._mapping)


class TaskStore(Store):
    """Tasks over one engine."""

    def create(self, operation: dict[str, Any], task: dict[str, Any], writer: Writer) -> TaskRecord:
        """The operation, its writer and its task row in one transaction: once this returns, every server on the
        database finds the task (the create result may be sent)."""
        with write_connection(self.engine) as conn:
            now = db_now(conn)
            row = new_operation_row(operation, now)
            conn.execute(insert(_OPS).values(**row))
            self._insert_writer(conn, row["id"], writer, now)
            conn.execute(
                insert(_TASKS).values(operation_id=row["id"], phase=TASK_WORKING, takeovers=0, **task)
            )
            return self._task(conn, row["id"])

    def get(self, task_id: str, viewer: Viewer = EVERYONE) -> TaskRecord | None:  # type: ignore[override]
        with self.engine.connect() as conn:
            row = conn.execute(
                where_visible(_SELECT.where(_OPS.c.id == task_id), viewer.scope), viewer_params(viewer)
            ).first()
            return None if row is None else _record(row)

    def list_tasks(self, viewer: Viewer, before: tuple[Any, str] | None, limit: int) -> list[TaskRecord]:
        """Newest first, `before` the (started_at, id) of the last one already seen."""
        query = _SELECT
        if before is not None:
            started_at, last_id = before
            query = query.where(
                (_OPS.c.started_at < started_at) | ((_OPS.c.started_at == started_at) & (_OPS.c.id < last_id))
            )
        query = where_visible(query, viewer.scope).order_by(_OPS.c.started_at.desc(), _OPS.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [_record(row) for row in conn.execute(query, viewer_params(viewer))]

    def park(self, task_id: str, writer_id: str, requests: dict[str, Any], request_state: str | None) -> bool:
        """The tool asked for input: the task waits (input_required) with these requests open, run by nobody
        (resumable, so orphan recovery leaves it when this process exits), until answers resume it. False when it
        is no longer running (cancelled meanwhile): then nothing changes."""
        with write_connection(self.engine) as conn:
            now = db_now(conn)
            changed = conn.execute(
                update(_OPS).where(_OPS.c.id == task_id, _OPS.c.status == RUNNING).values(resumable=True, updated_at=now)
            )
            if changed.rowcount != 1:
                return False
            asked = conn.execute(select(_TASKS.c.asked_keys).where(_TASKS.c.operation_id == task_id)).scalar() or []
            conn.execute(
                update(_TASKS)
                .where(_TASKS.c.operation_id == task_id)
                .values(
                    phase=TASK_INPUT_REQUIRED,
                    input_requests=requests,
                    asked_keys=[*asked, *requests],
                    request_state=request_state,
                )
            )
            self._delete_writer(conn, task_id, writer_id)
            return True

    def answer(
        self, task_id: str, responses: dict[str, Any], viewer: Viewer, writer: Writer
    ) -> tuple[str, TaskRecord]:
        """Store answers to a waiting task's open requests; answers to keys it is not waiting for are ignored (the
        spec lets a server ignore them; nothing is written for them). Returns ("resume", task) when this call
        answered the last open request: this caller now owns the task (its `writer` registered) and runs the tool
        again with every answer; exactly one caller gets that, however many race. Else ("waiting" | "ignored",
        task). OperationNotFound when `viewer` may not see the task."""
        with write_connection(self.engine) as conn:
            current = self._get_for_update(conn, task_id, viewer)
            task = self._task(conn, task_id)
            if current.status != RUNNING or task.phase != TASK_INPUT_REQUIRED:
                return "ignored", task
            pending = dict(task.input_requests or {})
            given = {key: value for key, value in responses.items() if key in pending}
            if not given:
                return "ignored", task
            now = db_now(conn)
            answered = {**(task.input_responses or {}), **given}
            remaining = {key: value for key, value in pending.items() if key not in given}
            if remaining:
                conn.execute(update(_OPS).where(_OPS.c.id == task_id).values(updated_at=now))
                conn.execute(
                    update(_TASKS)
                    .where(_TASKS.c.operation_id == task_id)
                    .values(input_requests=remaining, input_responses=answered)
                )
                return "waiting", self._task(conn, task_id)
            conn.execute(
                update(_OPS)
                .where(_OPS.c.id == task_id)
                .values(**_owned_by(writer, now), resumable=task.rerun and task.takeovers == 0)
            )
            conn.execute(
                update(_TASKS)
                .where(_TASKS.c.operation_id == task_id)
                .values(phase=TASK_WORKING, input_requests=None, input_responses=answered)
            )
            self._insert_writer(conn, task_id, writer, now)
            return "resume", self._task(conn, task_id)

    def take_over(self, task: TaskRecord, writer: Writer) -> TaskRecord | None:
        """Become the runner of a working task whose runner is gone (its tool is safe to run again), if its owner
        is still the one judged dead (compare-and-set, as claim_batch). It is not resumable any more: a second
        death fails it. None when another server took it first, or it ended."""
        same_owner = [
            _OPS.c[name].is_(None) if getattr(task, name) is None else _OPS.c[name] == getattr(task, name)
            for name in ("owner_host", "owner_pid", "owner_process")
        ]
        with write_connection(self.engine) as conn:
            now = db_now(conn)
            result = conn.execute(
                update(_OPS)
                .where(_OPS.c.id == task.id, _OPS.c.status == RUNNING, _OPS.c.resumable.is_(True), *same_owner)
                .values(**_owned_by(writer, now), resumable=False)
            )
            if result.rowcount != 1:
                return None
            conn.execute(
                update(_TASKS)
                .where(_TASKS.c.operation_id == task.id, _TASKS.c.phase == TASK_WORKING)
                .values(takeovers=_TASKS.c.takeovers + 1)
            )
            self._insert_writer(conn, task.id, writer, now)
            return self._task(conn, task.id)

    def end(
        self,
        task_id: str,
        status: str,
        by: str,
        outputs: Any = None,
        rpc_error: dict[str, Any] | None = None,
        message: str | None = None,
    ) -> bool:
        """The task's terminal transition: completed with the tool's result, or failed with its JSON-RPC error.
        False when it had ended already (a cancel won): terminal states never change."""
        with write_connection(self.engine) as conn:
            try:
                current = self._get_for_update(conn, task_id)
            except OperationNotFound:
                return False
            if current.status != RUNNING:
                return False
            if not end_running(conn, current, db_now(conn), status, error=message, outputs=outputs, ended_by=by):
                return False
            conn.execute(
                update(_TASKS)
                .where(_TASKS.c.operation_id == task_id)
                .values(rpc_error=rpc_error, input_requests=None, phase=TASK_WORKING)
            )
            self._delete_writer(conn, task_id, by)
            return True

    def ended_among(self, task_ids: Sequence[str]) -> set[str]:
        """Which of these tasks are no longer running (a cancel through any server, orphan recovery)."""
        if not task_ids:
            return set()
        with self.engine.connect() as conn:
            query = select(_OPS.c.id).where(_OPS.c.id.in_(list(task_ids)), _OPS.c.status != RUNNING)
            return set(conn.execute(query).scalars())

    def tasks_among(self, operation_ids: Sequence[str]) -> list[TaskRecord]:
        """The tasks among these operations (orphan recovery's candidates), as they are now."""
        if not operation_ids:
            return []
        with self.engine.connect() as conn:
            return [_record(row) for row in conn.execute(_SELECT.where(_OPS.c.id.in_(list(operation_ids))))]

    def _task(self, conn: Connection, task_id: str) -> TaskRecord:
        row = conn.execute(_SELECT.where(_OPS.c.id == task_id)).first()
        if row is None:
            raise OperationNotFound(f"task {task_id!r} not found")
        return _record(row)

    @staticmethod
    def _delete_writer(conn: Connection, task_id: str, writer_id: str) -> None:
        conn.execute(_WRITERS.delete().where(_WRITERS.c.operation_id == task_id, _WRITERS.c.writer_id == writer_id))
