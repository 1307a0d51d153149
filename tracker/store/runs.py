"""SQL of remote runs and of the batches that submit them (rows of `operations` with kind 'run' / 'batch').

A run that belongs to a batch carries parent_id and row_number; (parent_id, row_number) is unique, so the row
written before a submission is the durable record that this input row was (perhaps) submitted. Finishing a
run and recording its outcome as an item of its batch happen in one transaction: the batch's counts are exact
whichever process finishes the run."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from .. import limits
from ..db import write_connection
from ..errors import DuplicateRun, OperationClosed, OperationNotFound
from ..liveness import Process
from ..models import COMPLETED, FAILED, RUNNING, Operation, OperationItem, RunBatchRow
from ..records import EVERYONE, OperationDetail, OperationRecord, RunRecord, Viewer
from .clock import db_now
from .operations import (
    DETAIL_COLUMNS,
    RUN_COLUMNS,
    SUMMARY_COLUMNS,
    Store,
    end_running,
    new_operation_row,
    record_from_row,
    same_subject,
    viewer_params,
    where_visible,
)

log = logging.getLogger(__name__)

_OPS = Operation.__table__
_ITEMS = OperationItem.__table__
_ROWS = RunBatchRow.__table__

# A run is an operation row. Its reads select what its answer shows, its outputs, never its inputs (RunRecord);
# a running row's outputs are NULL, so the poll and adopt reads of running rows cost no more for them.
_COLUMNS = RUN_COLUMNS


def _record(row: Any) -> RunRecord:
    return record_from_row(row, RunRecord)


def _detail(row: Any) -> OperationDetail:
    return record_from_row(row, OperationDetail)


# A value for a timestamp column of create(): the database's time of the insert.
FIRST_SEEN = object()


class RunStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._operations = Store(engine)

    # -- reads --------------------------------------------------------------------------------------------------

    def now(self) -> datetime:
        """The database's time (leases are judged by it)."""
        return self._operations.now()

    def get(self, run_id: str, viewer: Viewer = EVERYONE) -> RunRecord | None:
        return self._one(_OPS.c.id == run_id, viewer)

    def get_by_request_id(self, request_id: str, viewer: Viewer = EVERYONE) -> RunRecord | None:
        return self._one(_OPS.c.request_id == request_id, viewer)

    def get_detail(self, operation_id: str) -> OperationDetail | None:
        """Every field, inputs too: a batch worker's parameters (a batch's input rows are in batch_row)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(*DETAIL_COLUMNS).where(_OPS.c.id == operation_id)).first()
        return _detail(row) if row is not None else None

    def get_by_idempotency_key(self, key: str, subject: str | None = None) -> OperationDetail | None:
        """The run `subject` (None: no subject) recorded under `key`, with its inputs: a repeated key is honoured
        only for the same inputs. Keys are unique per subject: another subject's run with the same key is not
        found, and does not stop this subject from using the key."""
        query = select(*DETAIL_COLUMNS).where(_OPS.c.idempotency_key == key, same_subject(subject))
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return _detail(row) if row is not None else None

    def batch_row(self, batch_id: str, row_number: int) -> Any:
        """The inputs of one input row of a batch (1-based), read when the worker submits it."""
        query = select(_ROWS.c.inputs).where(_ROWS.c.batch_id == batch_id, _ROWS.c.row_number == row_number)
        with self.engine.connect() as conn:
            return conn.execute(query).scalar_one()

    def due_for_poll(self, interval_s: float, limit: int, now: datetime | None = None) -> list[RunRecord]:
        """Running runs with a request_id whose last poll is older than the interval and that no poll in flight
        holds, least recently polled first, as of `now` (the database's clock when None)."""
        with self.engine.connect() as conn:
            query = (
                select(*_COLUMNS)
                .where(_OPS.c.kind == "run", _OPS.c.status == RUNNING, *_pollable(now or db_now(conn), interval_s))
                .order_by(_OPS.c.last_polled_at)
                .limit(limit)
            )
            return [_record(row) for row in conn.execute(query)]

    def running_batches(self, operation_type: str) -> list[RunRecord]:
        query = select(*_COLUMNS).where(
            _OPS.c.kind == "batch", _OPS.c.status == RUNNING, _OPS.c.operation_type == operation_type
        )
        with self.engine.connect() as conn:
            return [_record(row) for row in conn.execute(query)]

    def submitted_rows(self, batch_id: str) -> set[int]:
        """Row numbers that have a run, or an item in the batch (its run may have been purged by retention while
        the batch still ran): rows that must never be submitted again."""
        runs = select(_OPS.c.row_number).where(_OPS.c.parent_id == batch_id)
        items = select(_ITEMS.c.row_number).where(_ITEMS.c.operation_id == batch_id)
        with self.engine.connect() as conn:
            return {n for (n,) in conn.execute(runs.union(items)) if n is not None}

    def children(
        self, batch_id: str, running: bool | None = None, submitted: bool | None = None
    ) -> list[OperationDetail]:
        query = select(*DETAIL_COLUMNS).where(_OPS.c.parent_id == batch_id)
        if running is not None:
            query = query.where(_OPS.c.status == RUNNING if running else _OPS.c.status != RUNNING)
        if submitted is not None:
            query = query.where(_OPS.c.request_id.is_not(None) if submitted else _OPS.c.request_id.is_(None))
        with self.engine.connect() as conn:
            return [_detail(row) for row in conn.execute(query.order_by(_OPS.c.row_number))]

    def running_children(self, batch_id: str) -> int:
        query = select(func.count()).where(_OPS.c.parent_id == batch_id, _OPS.c.status == RUNNING)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    # -- writes -------------------------------------------------------------------------------------------------

    def create(self, values: dict[str, Any]) -> RunRecord:
        """Insert a run; DuplicateRun when its idempotency_key or request_id is taken."""
        try:
            with write_connection(self.engine) as conn:
                conn.execute(insert(_OPS).values(**_defaults(values, db_now(conn))))
                return self._get(conn, values["id"])
        except IntegrityError:
            raise DuplicateRun("a run with this idempotency_key, request_id or batch row is already recorded") from None
        except DBAPIError as exc:
            return self._operations.found_after_lost_reply(exc, values["id"])

    def create_batch(self, values: dict[str, Any], rows: Sequence[Any]) -> RunRecord:
        """Insert a running batch and its input rows (numbered from 1) in one transaction."""
        try:
            with write_connection(self.engine) as conn:
                conn.execute(insert(_OPS).values(**_defaults(values, db_now(conn))))
                conn.execute(
                    insert(_ROWS),
                    [{"batch_id": values["id"], "row_number": n, "inputs": row} for n, row in enumerate(rows, 1)],
                )
                return self._get(conn, values["id"])
        except DBAPIError as exc:
            return self._operations.found_after_lost_reply(exc, values["id"])

    def create_child(self, batch_id: str, values: dict[str, Any]) -> RunRecord:
        """Insert the run for one input row of a batch, only while the batch is running (a cancel stops new
        submissions at this point): OperationClosed when it no longer runs, DuplicateRun when that row already
        has a run. The run carries its batch's subject, whichever process submits it (a resumer too)."""
        try:
            with write_connection(self.engine) as conn:
                batch = conn.execute(select(_OPS.c.status, _OPS.c.subject).where(_OPS.c.id == batch_id)).first()
                status = batch.status if batch is not None else None
                if status != RUNNING:
                    raise OperationClosed(f"batch {batch_id!r} is {status or 'gone'}: it takes no more rows")
                row = _defaults({**values, "parent_id": batch_id, "subject": batch.subject}, db_now(conn))
                conn.execute(insert(_OPS).values(**row))
                return self._get(conn, values["id"])
        except IntegrityError:
            raise DuplicateRun(f"row {values.get('row_number')} of batch {batch_id} already has a run") from None
        except DBAPIError as exc:
            return self._operations.found_after_lost_reply(exc, values["id"])

    def mark_submitted(self, run_id: str, request_id: str) -> RunRecord:
        """The upstream accepted the run: remember its request_id. From here on, any process may poll it."""
        with write_connection(self.engine) as conn:
            now = db_now(conn)
            conn.execute(
                update(_OPS)
                .where(_OPS.c.id == run_id, _OPS.c.status == RUNNING)
                .values(request_id=request_id, last_polled_at=now, updated_at=now, resumable=True)
            )
            return self._get(conn, run_id)

    def claim_poll(self, run_id: str, interval_s: float, hold_s: float, now: datetime | None = None) -> str | None:
        """Take the right to poll this run now: a token for one caller across all processes, valid until its
        answer is written (note_poll, finish) or hold_s passes unrenewed; then once per interval again. None when
        another caller holds it or the run was polled within the interval. `now` is the database's time unless a
        test fixes it."""
        token = secrets.token_hex(16)
        with write_connection(self.engine) as conn:
            now = now or db_now(conn)
            result = conn.execute(
                update(_OPS)
                .where(_OPS.c.id == run_id, _OPS.c.status == RUNNING, *_pollable(now, interval_s))
                .values(last_polled_at=now, poll_claimed_until=now + timedelta(seconds=hold_s), poll_claim=token)
            )
            return token if result.rowcount == 1 else None

    def renew_poll_claim(self, run_id: str, token: str, hold_s: float) -> bool:
        """Extend our poll claim (its GET is still in flight); False once the run ended or the claim is no longer
        ours (it lapsed and another caller took it)."""
        with write_connection(self.engine) as conn:
            now = db_now(conn)
            result = conn.execute(
                update(_OPS)
                .where(_OPS.c.id == run_id, _OPS.c.status == RUNNING, _OPS.c.poll_claim == token)
                .values(poll_claimed_until=now + timedelta(seconds=hold_s))
            )
            return result.rowcount == 1

    def note_poll(self, run_id: str, error: str | None, token: str | None = None) -> RunRecord:
        """A poll found the run still running (error None) or could not reach the upstream (error kept, so
        later answers say they are stale). Releases the poll's claim if it is still ours."""
        with write_connection(self.engine) as conn:
            now = db_now(conn)
            conn.execute(
                update(_OPS)
                .where(_OPS.c.id == run_id, _OPS.c.status == RUNNING)
                .values(error=error, updated_at=now, last_polled_at=now)
            )
            if token is not None:
                conn.execute(
                    update(_OPS)
                    .where(_OPS.c.id == run_id, _OPS.c.poll_claim == token)
                    .values(poll_claimed_until=None, poll_claim=None)
                )
            return self._get(conn, run_id)

    def finish(
        self, run_id: str, status: str, now: datetime | None = None, outputs: Any = None, error: str | None = None
    ) -> RunRecord:
        """End a running run and, in the same transaction, record it as an item of its batch (if the batch is
        still running). Exactly once whoever races on it: only the caller whose guarded UPDATE changed the row
        counts it in its batch. Returns the record (an ended run unchanged); OperationNotFound if it is unknown."""
        with write_connection(self.engine) as conn:
            current = self._get(conn, run_id)
            if current.is_terminal:
                return current
            now = now or db_now(conn)
            ended = end_running(
                conn, current, now, status,
                outputs=outputs, error=error, last_polled_at=now, poll_claimed_until=None, poll_claim=None,
            )
            if ended and current.parent_id is not None:
                self._append_to_batch(conn, current, status == COMPLETED, error, now)
            return self._get(conn, run_id)

    def store_found(self, values: dict[str, Any], viewer: Viewer = EVERYONE) -> RunRecord | None:
        """Keep a run first seen upstream (started elsewhere), as `values` say (their subject: the caller's). If
        another caller stored it first, theirs wins: returned if `viewer` may see it, else None (a run of another
        subject is not found)."""
        try:
            return self.create(values)
        except DuplicateRun:
            found = self.get_by_request_id(values["request_id"], viewer)
            if found is None and self.get_by_request_id(values["request_id"]) is None:
                raise  # it was not the request_id that clashed
            return found

    # -- batch ownership ----------------------------------------------------------------------------------------

    def claim_batch(self, batch: OperationRecord, owner: Process) -> bool:
        """Become the owner of a running batch, if its owner is still the one we judged dead (compare-and-set)."""
        owner_host = _OPS.c.owner_host.is_(None) if batch.owner_host is None else _OPS.c.owner_host == batch.owner_host
        owner_pid = _OPS.c.owner_pid.is_(None) if batch.owner_pid is None else _OPS.c.owner_pid == batch.owner_pid
        with write_connection(self.engine) as conn:
            now = db_now(conn)
            result = conn.execute(
                update(_OPS)
                .where(_OPS.c.id == batch.id, _OPS.c.status == RUNNING, owner_host, owner_pid)
                .values(
                    owner_host=owner.host,
                    owner_pid=owner.pid,
                    owner_process=owner.identity,
                    heartbeat_at=now,
                    updated_at=now,
                )
            )
            return result.rowcount == 1

    def heartbeat(self, batch_id: str, owner: Process) -> bool:
        """Refresh our lease on a batch (or a run we are submitting); False when it ended or another process took
        it over."""
        with write_connection(self.engine) as conn:
            result = conn.execute(
                update(_OPS)
                .where(
                    _OPS.c.id == batch_id,
                    _OPS.c.status == RUNNING,
                    _OPS.c.owner_host == owner.host,
                    _OPS.c.owner_pid == owner.pid,
                )
                .values(heartbeat_at=db_now(conn))
            )
            return result.rowcount == 1

    def reconcile_batch(self, batch_id: str) -> int:
        """Record ended runs of the batch that are missing from its items (ended by a process that did not know
        the batch, e.g. an orphan reaper). Returns how many were added. The batch row is locked first, so two
        reconcilers (or a reconciler and a run's finish) never count one run twice."""
        with write_connection(self.engine) as conn:
            now = db_now(conn)
            if not self._lock_running_batch(conn, batch_id):
                return 0
            return self._reconcile(conn, batch_id, now)

    def finish_batch_if_done(self, batch_id: str, total: int) -> RunRecord | None:
        """End the batch if every row is accounted for: all its runs have ended (those missing from its items are
        recorded first) and no row is left to submit. One transaction under the batch's row lock, so a run that
        finishes meanwhile is either counted before the batch ends or still running (and the batch waits).
        Returns the ended batch, else None."""
        with write_connection(self.engine) as conn:
            now = db_now(conn)
            batch = self._lock_running_batch(conn, batch_id)
            if batch is None:
                return None
            running = conn.execute(
                select(func.count()).where(_OPS.c.parent_id == batch_id, _OPS.c.status == RUNNING)
            ).scalar()
            if running:
                return None
            self._reconcile(conn, batch_id, now)
            counted = self._get(conn, batch_id)
            if counted.completed < total:
                log.error("batch %s: all runs ended, %d of %d rows counted", batch_id, counted.completed, total)
            return self._get(conn, batch_id) if end_running(conn, counted, now) else None

    # -- helpers ------------------------------------------------------------------------------------------------

    def _lock_running_batch(self, conn: Connection, batch_id: str) -> RunRecord | None:
        query = select(*_COLUMNS).where(_OPS.c.id == batch_id, _OPS.c.status == RUNNING)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        row = conn.execute(query).first()
        return _record(row) if row is not None else None

    def _reconcile(self, conn: Connection, batch_id: str, now: datetime) -> int:
        recorded = select(_ITEMS.c.row_number).where(
            _ITEMS.c.operation_id == batch_id, _ITEMS.c.row_number.is_not(None)
        )
        missing = conn.execute(
            select(*SUMMARY_COLUMNS).where(
                _OPS.c.parent_id == batch_id, _OPS.c.status != RUNNING, _OPS.c.row_number.not_in(recorded)
            )
        ).all()
        for row in missing:
            run = record_from_row(row, OperationRecord)
            self._append_to_batch(conn, run, run.status == COMPLETED, run.error or run.status, now)
        return len(missing)

    def _append_to_batch(self, conn: Connection, run: OperationRecord, ok: bool, error: str | None, now: datetime) -> None:
        result = conn.execute(
            update(_OPS)
            .where(_OPS.c.id == run.parent_id, _OPS.c.status == RUNNING)
            .values(
                succeeded_count=_OPS.c.succeeded_count + (1 if ok else 0),
                failed_count=_OPS.c.failed_count + (0 if ok else 1),
                updated_at=now,
            )
        )
        if result.rowcount != 1:
            return  # the batch ended (cancelled): it takes no more items
        conn.execute(
            insert(_ITEMS).values(
                operation_id=run.parent_id,
                ok=ok,
                item_id=run.request_id if not ok else run.item_id,
                row_number=run.row_number,
                error=None if ok else (error or FAILED)[:limits.ERROR_CHARS],
            )
        )

    def _one(self, condition: Any, viewer: Viewer = EVERYONE) -> RunRecord | None:
        query = where_visible(select(*_COLUMNS).where(condition), viewer.scope)
        with self.engine.connect() as conn:
            row = conn.execute(query, viewer_params(viewer)).first()
        return _record(row) if row is not None else None

    def _get_or_none(self, conn: Connection, run_id: str) -> RunRecord | None:
        row = conn.execute(select(*_COLUMNS).where(_OPS.c.id == run_id)).first()
        return _record(row) if row is not None else None

    def _get(self, conn: Connection, run_id: str) -> RunRecord:
        record = self._get_or_none(conn, run_id)
        if record is None:
            raise OperationNotFound(f"run {run_id!r} not found")
        return record


def _pollable(now: datetime, interval_s: float) -> list[Any]:
    """A running run that may be polled now: submitted, its last poll older than the interval, and no poll in
    flight holds it."""
    return [
        _OPS.c.request_id.is_not(None),
        or_(_OPS.c.last_polled_at.is_(None), _OPS.c.last_polled_at <= now - timedelta(seconds=interval_s)),
        or_(_OPS.c.poll_claimed_until.is_(None), _OPS.c.poll_claimed_until < now),
    ]


def _defaults(values: dict[str, Any], now: datetime) -> dict[str, Any]:
    return new_operation_row({name: now if value is FIRST_SEEN else value for name, value in values.items()}, now)


__all__ = ["RunRecord", "RunStore"]
