"""All SQL lives here. Each public method is one short transaction; writes start with the write lock
(BEGIN IMMEDIATE on SQLite, row locks on PostgreSQL) so concurrent processes never see SQLITE_BUSY mid-way."""

from __future__ import annotations

import functools
import operator
from dataclasses import fields
from datetime import datetime, timezone
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Connection,
    Engine,
    Integer,
    Select,
    and_,
    bindparam,
    delete,
    exists,
    false,
    func,
    insert,
    or_,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.exc import DBAPIError

from .. import limits
from ..db import engine_location, reads_at_once, sqlite_read, write_connection
from ..errors import OperationCancelled, OperationClosed, OperationNotFound
from ..models import CANCELLED, RUNNING, Operation, OperationItem, OperationWriter, UTCTimestamp
from ..records import (
    EVERYONE,
    ItemRecord,
    NewItem,
    OperationDetail,
    OperationRecord,
    RunRecord,
    StatusRecord,
    Viewer,
    Writer,
)
from ..timeutil import elapsed_ms, parse_iso
from .clock import db_now, engine_now

_OPS = Operation.__table__
_ITEMS = OperationItem.__table__
_WRITERS = OperationWriter.__table__
R = TypeVar("R", bound=OperationRecord)
Q = TypeVar("Q", bound=Select[Any])

# -- who may see what -----------------------------------------------------------------------------------------------

SCOPES = ("all", "own", "own_and_unbound")  # records.Viewer.scope
_VIEWER_SUBJECT = bindparam("viewer_subject")


def visible(scope: str) -> tuple[ColumnElement[bool], ...]:
    """The visibility rule of records.Viewer in SQL, the one place it is written: disjoint conditions on
    operations whose union a viewer of `scope` may see; () when it sees everything. Their parameter comes from
    viewer_params(). Disjoint, so list_operations can read each newest first from its own index range."""
    if scope == "all":
        return ()
    own = _OPS.c.subject == _VIEWER_SUBJECT
    return (own,) if scope == "own" else (own, _OPS.c.subject.is_(None))


def viewer_params(viewer: Viewer) -> dict[str, Any]:
    """The parameters of visible()'s conditions, for any statement built with where_visible()."""
    return {} if viewer.subject is None else {"viewer_subject": viewer.subject}


def where_visible(query: Q, scope: str) -> Q:
    """`query` (over operations) keeping only what a viewer of `scope` may see."""
    parts = visible(scope)
    return query.where(or_(*parts)) if parts else query


def per_scope(query: Q) -> dict[str, Q]:
    """where_visible(query) for every scope, built once: building a select per call costs more than SQLite's own
    lookup, and a viewer who sees everything runs exactly `query`."""
    return {scope: where_visible(query, scope) for scope in SCOPES}


def per_part(query: Q, scope: str) -> list[Q]:
    """`query` once for each disjoint part a viewer of `scope` sees (visible()): one query when it sees everything."""
    return [query.where(part) for part in visible(scope)] or [query]


def same_subject(subject: str | None) -> ColumnElement[bool]:
    """Operations started by exactly this subject (None: recorded without one): the scope of an idempotency key,
    which is unique per subject (models.Operation)."""
    return _OPS.c.subject.is_(None) if subject is None else _OPS.c.subject == subject



def columns_of(record_type: type[OperationRecord] | type[StatusRecord]) -> list[Column[Any]]:
    """The columns a read selects to build `record_type`: its fields, no more (inputs only for a detail)."""
    return [_OPS.c[f.name] for f in fields(record_type)]


SUMMARY_COLUMNS = columns_of(OperationRecord)
RUN_COLUMNS = columns_of(RunRecord)
DETAIL_COLUMNS = columns_of(OperationDetail)
STATUS_COLUMNS = columns_of(StatusRecord)
_GET_SUMMARY_BY_ID = per_scope(select(*SUMMARY_COLUMNS).where(_OPS.c.id == bindparam("operation_id")))
_GET_BY_ID = per_scope(select(*DETAIL_COLUMNS).where(_OPS.c.id == bindparam("operation_id")))

# The status read path (get_with_first_items), built once: constructing a select per call cost more than SQLite's
# own lookup. The columns the answer shows, no more: a success shows its id, a failure its id, row and error.
_STATUS_BY_ID = per_scope(select(*STATUS_COLUMNS).where(_OPS.c.id == bindparam("operation_id")))
_FIRST_SUCCESSES = (
    select(_ITEMS.c.seq, _ITEMS.c.item_id)
    .where(_ITEMS.c.operation_id == bindparam("operation_id"), _ITEMS.c.ok == true())
    .order_by(_ITEMS.c.seq)
    .limit(bindparam("limit"))
)
_FIRST_FAILURES = (
    select(_ITEMS.c.seq, _ITEMS.c.item_id, _ITEMS.c.row_number, _ITEMS.c.error)
    .where(_ITEMS.c.operation_id == bindparam("operation_id"), _ITEMS.c.ok == false())
    .order_by(_ITEMS.c.seq)
    .limit(bindparam("limit"))
)


class SQLiteText:
    """A statement compiled once for SQLite: its SQL text, and its positional parameters from a call's values (a
    parameter the call does not give keeps its compiled value, such as the OFFSET 0 SQLite renders with LIMIT)."""

    def __init__(self, statement: Select[Any]) -> None:
        compiled = statement.compile(dialect=sqlite.dialect())
        self.sql = compiled.string
        self._names = tuple(compiled.positiontup or ())
        self._defaults = {name: bind.value for name, bind in compiled.binds.items()}

    def params(self, values: dict[str, Any]) -> tuple[Any, ...]:
        return tuple([values[name] if name in values else self._defaults[name] for name in self._names])


# The same statements as SQL text, which a status read on SQLite runs on the DBAPI connection (db.sqlite_read).
# Public for scripts/bench_status.py, whose baseline runs exactly these with plain sqlite3.
SQLITE_STATUS_BY_ID = {scope: SQLiteText(query) for scope, query in _STATUS_BY_ID.items()}
SQLITE_FIRST_SUCCESSES = SQLiteText(_FIRST_SUCCESSES)
SQLITE_FIRST_FAILURES = SQLiteText(_FIRST_FAILURES)


def _first_items_json(ok: bool, limit: str) -> Any:
    """PostgreSQL: the first items of one outcome as one JSON array of [seq, item_id, row_number, error]."""
    page = (
        select(_ITEMS.c.seq, _ITEMS.c.item_id, _ITEMS.c.row_number, _ITEMS.c.error)
        .where(_ITEMS.c.operation_id == bindparam("operation_id"), _ITEMS.c.ok == ok)
        .order_by(_ITEMS.c.seq)
        .limit(bindparam(limit))
        .subquery()
    )
    return select(func.json_agg(aggregate_order_by(func.json_build_array(*page.c), page.c.seq))).scalar_subquery()


# PostgreSQL's status read: the operation and the first items of each outcome in one statement, so one snapshot
# (under READ COMMITTED each statement has its own) and one round trip instead of three. Public for
# scripts/bench_postgres.py, whose baseline runs exactly this with plain psycopg.
POSTGRES_STATUS_BY_ID = per_scope(
    select(*STATUS_COLUMNS, _first_items_json(True, "succeeded_limit"), _first_items_json(False, "failed_limit"))
    .where(_OPS.c.id == bindparam("operation_id"))
)


@functools.cache
def _list_statement(scope: str, kind: bool, status: bool, operation_type: bool, before: bool) -> Select[Any]:
    """list_operations' statement for a viewer of `scope` with these filters given (their values are parameters).
    A viewer who sees two disjoint parts (its own, and those without a subject) gets the newest of both: each
    part's newest :limit rows, each read from its own range of ix_operations_subject_started_at_id, then merged.
    The size of either part then costs nothing; an OR of both would scan every row newer than the page, or read
    and sort all of both (SQLite's choice once that index exists). Built once: building this union per call cost
    more than running it."""
    query = select(*SUMMARY_COLUMNS)
    for given, column in ((kind, _OPS.c.kind), (status, _OPS.c.status), (operation_type, _OPS.c.operation_type)):
        if given:
            query = query.where(column == bindparam(column.name))
    if before:
        at, last_id = bindparam("before_at"), bindparam("before_id")
        query = query.where(or_(_OPS.c.started_at < at, and_(_OPS.c.started_at == at, _OPS.c.id < last_id)))
    newest_first = (_OPS.c.started_at.desc(), _OPS.c.id.desc())
    pages = [part.order_by(*newest_first).limit(bindparam("limit")) for part in per_part(query, scope)]
    if len(pages) == 1:
        return pages[0]
    merged = union_all(*(select(page.subquery()) for page in pages)).subquery()
    return select(merged).order_by(merged.c.started_at.desc(), merged.c.id.desc()).limit(bindparam("limit"))


def record_from_row(row: Any, record_type: type[R]) -> R:
    """A row selected with columns_of(record_type) as that record."""
    return record_type(**row._mapping)


def new_operation_row(values: dict[str, Any], now: datetime) -> dict[str, Any]:
    """A new running operation's row: counters at zero, started (and last seen) now unless values say."""
    row = {
        "status": RUNNING,
        "total": 0,
        "succeeded_count": 0,
        "failed_count": 0,
        "resumable": False,
        "started_at": now,
        **values,
    }
    row.setdefault("updated_at", row["started_at"])
    row.setdefault("heartbeat_at", row["started_at"])
    return row


def end_running(
    conn: Connection, current: OperationRecord, now: datetime, status: str | None = None, **values: Any
) -> bool:
    """The terminal transition: `current` (read in this transaction) to `status` (default its natural end) at
    `now`, with `values` besides, guarded by status = 'running'. True when this call ended it: the rowcount decides
    whoever races on it, on PostgreSQL's READ COMMITTED as on SQLite."""
    result = conn.execute(
        update(_OPS)
        .where(_OPS.c.id == current.id, _OPS.c.status == RUNNING)
        .values(
            status=status or current.natural_end,
            completed_at=now,
            updated_at=now,
            execution_time_ms=max(0, elapsed_ms(current.started_at, now)),
            **values,
        )
    )
    return result.rowcount == 1


_OK = operator.itemgetter(1)  # a NewItem's flag
# append_items' two guarded updates, built once (building them per flush was a tenth of its cost besides the insert).
# Their parameters are not named after columns, which an UPDATE reserves for its SET clause.
_NOW = bindparam("now", type_=UTCTimestamp())
_GROUP = bindparam("group", type_=BigInteger())
_COUNT_ITEMS = (
    update(_OPS)
    .where(_OPS.c.id == bindparam("op"), _OPS.c.status == RUNNING)
    .values(
        succeeded_count=_OPS.c.succeeded_count + bindparam("succeeded", type_=Integer()),
        failed_count=_OPS.c.failed_count + bindparam("failed", type_=Integer()),
        updated_at=_NOW,
        heartbeat_at=_NOW,
    )
)
_CLAIM_GROUP = (
    update(_WRITERS)
    .where(
        _WRITERS.c.operation_id == bindparam("op"),
        _WRITERS.c.writer_id == bindparam("writer"),
        _WRITERS.c.last_group < _GROUP,
    )
    .values(last_group=_GROUP, heartbeat_at=_NOW)
)


_ITEM_COLUMNS = "operation_items (operation_id, ok, item_id, row_number, error)"
# On PostgreSQL a group of this many items or more goes in with COPY (tracker.postgres.copy_from_stdin runs it with
# the rows given as parameters). A flush group's transaction took, with COPY, 0.68-0.97x the time of executemany at
# 20 items and 0.36-0.71x at 5,000 (MAX_BUFFER); at 1-10 items 0.77-1.11x, as COPY's start costs a round trip
# (scripts/bench.py --backend postgresql, figure 1; six runs, quiet to busy, on a 2-core machine).
COPY_FROM_ITEMS = 20


def _insert_items_sql(conn: Connection, count: int) -> str:
    if conn.dialect.name == "postgresql" and count >= COPY_FROM_ITEMS:
        return f"COPY {_ITEM_COLUMNS} FROM STDIN"
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    return f"INSERT INTO {_ITEM_COLUMNS} VALUES ({', '.join([mark] * 5)})"


class _AlreadyApplied(Exception):
    """Raised inside a group's transaction to roll it back: the group was applied by an earlier attempt."""


class Store:
    """The operation table and its items, over one engine (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.location = engine_location(engine)  # for error messages
        self._postgres_sql: dict[str, str] = {}  # POSTGRES_STATUS_BY_ID compiled, by viewer scope

    # -- writes -------------------------------------------------------------------------------------------------

    def create_operation(self, values: dict[str, Any], writer: Writer | None = None) -> OperationDetail:
        """Insert a running operation (started_at defaults to the database's clock); with `writer`, register the
        process that records into it in the same transaction."""
        try:
            with write_connection(self.engine) as conn:
                now = db_now(conn)
                row = new_operation_row(values, now)
                conn.execute(insert(_OPS).values(**row))
                if writer is not None:
                    self._insert_writer(conn, row["id"], writer, now)
                return self._get(conn, row["id"])
        except DBAPIError as exc:
            return self.found_after_lost_reply(exc, values["id"])

    def found_after_lost_reply(self, exc: DBAPIError, operation_id: str) -> OperationDetail:
        """An insert whose connection broke may still have committed (its reply was lost): if the row is there, it
        did, and the caller goes on with it instead of failing (and a retry creating a second operation). Else the
        error stands."""
        if exc.connection_invalidated:
            found = self.get(operation_id)
            if found is not None:
                return found
        raise exc

    def add_writer(self, operation_id: str, writer: Writer) -> OperationDetail:
        """Register another process recording into a running operation (attach): while it lives (or, seen from
        another host, heartbeats), the operation is not an orphan. Returns the operation as it is."""
        with write_connection(self.engine) as conn:
            now = db_now(conn)
            # A sign of life on the operation too: a reaper that judged it an orphan a moment ago (its mark is
            # guarded by the heartbeat it judged by) then leaves it alone.
            conn.execute(
                update(_OPS).where(_OPS.c.id == operation_id, _OPS.c.status == RUNNING).values(heartbeat_at=now)
            )
            record = self._get(conn, operation_id)
            if record.status == RUNNING:
                self._insert_writer(conn, operation_id, writer, now)
            return record

    def append_items(self, operation_id: str, items: list[NewItem], writer_id: str, group: int) -> bool:
        """Apply group number `group` of one writer: add its items (rows of this operation: records.NewItem) and
        bump the counters in one transaction, refused whole if the operation is terminal. Idempotent: a group
        already applied (a retry after a lost COMMIT reply) changes nothing and returns False; True when applied
        now."""
        succeeded = sum(map(_OK, items))
        try:
            # The items' one reference (operation_id) is proved by the guarded UPDATE below, under the write lock:
            # SQLite's own check of it per row (a b-tree search each) is skipped.
            with write_connection(self.engine, check_references=False) as conn:
                now = db_now(conn)
                # The operation row first, as on every write path (one lock order: no deadlock with a purge or a
                # finish): the terminal guard, and the counters.
                result = conn.execute(
                    _COUNT_ITEMS,
                    {"op": operation_id, "succeeded": succeeded, "failed": len(items) - succeeded, "now": now},
                )
                if result.rowcount != 1:
                    if self._group_applied(conn, operation_id, writer_id, group):
                        return False  # applied before the operation ended; this is the retry of a lost reply
                    self._raise_not_running(conn, operation_id)
                # The group's identity check. On PostgreSQL a COMMIT of the same group still in flight holds the
                # operation row, so the UPDATE above waited for it and this sees it.
                claimed = conn.execute(
                    _CLAIM_GROUP, {"op": operation_id, "writer": writer_id, "group": group, "now": now}
                )
                if claimed.rowcount != 1:
                    if self._group_applied(conn, operation_id, writer_id, group):
                        raise _AlreadyApplied()  # rolls the counter bump back
                    raise OperationClosed(f"operation {operation_id!r}: this writer is not registered")
                if items:
                    # The hot path: plain DBAPI executemany of the buffered rows as they are (SQLAlchemy's per-row
                    # parameter processing cost as much as SQLite's own insert here), or COPY on PostgreSQL; in this
                    # transaction either way. SQLite binds the int flags a handle buffers without the adapter lookup a
                    # bool costs; PostgreSQL's boolean column needs bools.
                    if conn.dialect.name != "sqlite":
                        items = [(op, bool(ok), *rest) for op, ok, *rest in items]
                    conn.exec_driver_sql(_insert_items_sql(conn, len(items)), items)
                return True
        except _AlreadyApplied:
            return False

    def heartbeat(self, operation_id: str, writer_id: str) -> None:
        """A quiet writer is still alive: refresh the operation's heartbeat and its writer row; refused once
        terminal."""
        with write_connection(self.engine) as conn:
            now = db_now(conn)
            result = conn.execute(
                update(_OPS).where(_OPS.c.id == operation_id, _OPS.c.status == RUNNING).values(heartbeat_at=now)
            )
            if result.rowcount != 1:
                self._raise_not_running(conn, operation_id)
            conn.execute(
                update(_WRITERS)
                .where(_WRITERS.c.operation_id == operation_id, _WRITERS.c.writer_id == writer_id)
                .values(heartbeat_at=now)
            )

    def remove_writer(self, operation_id: str, writer_id: str) -> None:
        """This writer records no more (detach): it no longer keeps the operation alive."""
        with write_connection(self.engine) as conn:
            conn.execute(
                delete(_WRITERS).where(_WRITERS.c.operation_id == operation_id, _WRITERS.c.writer_id == writer_id)
            )

    def update_running(self, operation_id: str, values: dict[str, Any]) -> OperationDetail:
        """Change fields of a running operation (total, outputs...); refused once terminal. updated_at is the
        database's time."""
        with write_connection(self.engine) as conn:
            result = conn.execute(
                update(_OPS)
                .where(_OPS.c.id == operation_id, _OPS.c.status == RUNNING)
                .values(**{"updated_at": db_now(conn), **values})
            )
            if result.rowcount != 1:
                self._raise_not_running(conn, operation_id)
            return self._get(conn, operation_id)

    def finish(
        self,
        operation_id: str,
        now: datetime | None = None,
        status: str | None = None,
        error: str | None = None,
        outputs: Any = None,
        set_outputs: bool = False,
        by: str | None = None,
        viewer: Viewer = EVERYONE,
    ) -> OperationDetail:
        """Move a running operation to a terminal state, exactly once whoever races on it (the row is locked, and
        the guarded UPDATE's rowcount decides). status None applies the rule: failed when every processed item
        failed (at least one failure, no success), else completed. now defaults to the database's clock.
        `by` (a writer id) is recorded: the same writer finishing again (a retry after a lost COMMIT reply) gets
        the end it made back instead of OperationClosed. An operation `viewer` may not see is OperationNotFound."""
        with write_connection(self.engine) as conn:
            current = self._get_for_update(conn, operation_id, viewer)
            if current.status != RUNNING:
                if by is not None and current.ended_by == by:
                    return current
                self._raise_not_running(conn, operation_id)
            values: dict[str, Any] = {"error": error if error is not None else current.error, "ended_by": by}
            if set_outputs:
                values["outputs"] = outputs
            if not end_running(conn, current, now or db_now(conn), status, **values):
                self._raise_not_running(conn, operation_id)
            return self._get(conn, operation_id)

    def cancel(self, operation_id: str, reason: str = "cancelled", viewer: Viewer = EVERYONE) -> OperationDetail:
        """Cancel a running operation `viewer` may see; one it may not is OperationNotFound, and stays as it was."""
        return self.finish(operation_id, status=CANCELLED, error=reason, viewer=viewer)

    # -- reads --------------------------------------------------------------------------------------------------

    # Every read takes the viewer (records.Viewer; default: one who sees everything) and finds nothing it may not
    # see: None, or no rows, exactly as for an id that never existed.

    def get(self, operation_id: str, viewer: Viewer = EVERYONE) -> OperationDetail | None:
        """Every field, inputs and outputs too (the library's get, `tracker show`)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                _GET_BY_ID[viewer.scope], {"operation_id": operation_id, **viewer_params(viewer)}
            ).first()
        return record_from_row(row, OperationDetail) if row is not None else None

    def get_summary(self, operation_id: str, viewer: Viewer = EVERYONE) -> OperationRecord | None:
        """Every field but inputs and outputs (which may be large): what status, items and cancel answers show."""
        with self.engine.connect() as conn:
            row = conn.execute(
                _GET_SUMMARY_BY_ID[viewer.scope], {"operation_id": operation_id, **viewer_params(viewer)}
            ).first()
        return record_from_row(row, OperationRecord) if row is not None else None

    def get_with_first_items(
        self, operation_id: str, succeeded_limit: int, failed_limit: int, viewer: Viewer = EVERYONE
    ) -> tuple[StatusRecord, list[ItemRecord], list[ItemRecord]] | None:
        """An operation as its status shows it and the first items of each outcome (a success's row_number and
        error are not read: a success has none), in one transaction (one snapshot, so the lists agree with the
        counts; and one connection instead of three, which halves a status read's cost). On SQLite the hot path
        of every status poll: SQL text compiled once, on the DBAPI connection; on PostgreSQL one statement
        (_postgres_status)."""
        if self.engine.dialect.name == "sqlite":
            params = {"operation_id": operation_id, **viewer_params(viewer)}
            return self._sqlite_status(params, succeeded_limit, failed_limit, viewer.scope)
        return self._postgres_status(operation_id, succeeded_limit, failed_limit, viewer)

    def _sqlite_status(
        self, params: dict[str, Any], succeeded_limit: int, failed_limit: int, scope: str
    ) -> tuple[StatusRecord, list[ItemRecord], list[ItemRecord]] | None:
        """get_with_first_items on SQLite: the same statements as SQL text on the DBAPI connection, and the rows
        converted as the columns' types would (UTCTimestamp's text to datetimes)."""
        statement = SQLITE_STATUS_BY_ID[scope]
        successes: list[Any] = []
        failures: list[Any] = []
        with sqlite_read(self.engine) as raw:
            row = raw.execute(statement.sql, statement.params(params)).fetchone()
            if row is None:
                return None
            op_id, kind, op_type, status, total, succeeded, failed, started_at, completed_at, ms, error = row
            record = StatusRecord(
                op_id, kind, op_type, status, total, succeeded, failed,
                parse_iso(started_at), None if completed_at is None else parse_iso(completed_at), ms, error,
            )
            if succeeded:
                successes = raw.execute(
                    SQLITE_FIRST_SUCCESSES.sql, SQLITE_FIRST_SUCCESSES.params({**params, "limit": succeeded_limit})
                ).fetchall()
            if failed:
                failures = raw.execute(
                    SQLITE_FIRST_FAILURES.sql, SQLITE_FIRST_FAILURES.params({**params, "limit": failed_limit})
                ).fetchall()
        return (
            record,
            [ItemRecord(seq, True, item_id, None, None) for seq, item_id in successes],
            [ItemRecord(seq, False, *rest) for seq, *rest in failures],
        )

    def status_read_at_once(self) -> bool:
        """Whether get_with_first_items would run now without waiting for a connection, a lock or the network
        (db.reads_at_once): then it is bounded by its own work, one primary-key row and two index ranges of at most
        the limits' rows."""
        return reads_at_once(self.engine)

    def _postgres_status(
        self, operation_id: str, succeeded_limit: int, failed_limit: int, viewer: Viewer
    ) -> tuple[StatusRecord, list[ItemRecord], list[ItemRecord]] | None:
        """get_with_first_items on PostgreSQL: one statement (POSTGRES_STATUS_BY_ID), compiled once, run on the
        driver connection (SQLAlchemy's execute and result processing cost more than the statement: the status read
        went from 3.7x to 2.1x a raw primary-key lookup, p50 measured interleaved), its timestamps in UTC as
        UTCTimestamp reads them."""
        from ..postgres import driver_connection  # psycopg is optional: imported only for PostgreSQL

        sql = self._postgres_sql.get(viewer.scope)
        if sql is None:
            sql = self._postgres_sql[viewer.scope] = str(
                POSTGRES_STATUS_BY_ID[viewer.scope].compile(dialect=self.engine.dialect)
            )
        params = {
            "operation_id": operation_id, "succeeded_limit": succeeded_limit, "failed_limit": failed_limit,
            **viewer_params(viewer),
        }
        with driver_connection(self.engine) as raw:
            row = raw.execute(sql, params).fetchone()
        if row is None:
            return None
        *summary, successes, failures = row
        return (
            StatusRecord(*(v.astimezone(timezone.utc) if isinstance(v, datetime) else v for v in summary)),
            [ItemRecord(seq, True, *rest) for seq, *rest in successes or ()],
            [ItemRecord(seq, False, *rest) for seq, *rest in failures or ()],
        )

    def get_by_request_id(self, request_id: str, viewer: Viewer = EVERYONE) -> RunRecord | None:
        """A run by its upstream request_id, with the outputs its status shows (not its inputs)."""
        query = where_visible(select(*RUN_COLUMNS).where(_OPS.c.request_id == request_id), viewer.scope)
        with self.engine.connect() as conn:
            row = conn.execute(query, viewer_params(viewer)).first()
        return record_from_row(row, RunRecord) if row is not None else None

    def items(
        self,
        operation_id: str,
        ok: bool,
        after_seq: int = 0,
        limit: int = limits.ITEMS_LIMIT_DEFAULT,
        viewer: Viewer = EVERYONE,
    ) -> list[ItemRecord]:
        """Items of one outcome in completion order, after a seq (exclusive)."""
        query = (
            select(_ITEMS.c.seq, _ITEMS.c.ok, _ITEMS.c.item_id, _ITEMS.c.row_number, _ITEMS.c.error)
            .where(_ITEMS.c.operation_id == operation_id, _ITEMS.c.ok == ok, _ITEMS.c.seq > after_seq)
            .order_by(_ITEMS.c.seq)
            .limit(limit)
        )
        if viewer.scope != "all":
            operation = where_visible(select(_OPS.c.id).where(_OPS.c.id == operation_id), viewer.scope)
            query = query.where(exists(operation))
        with self.engine.connect() as conn:
            return [ItemRecord(*row) for row in conn.execute(query, viewer_params(viewer))]

    def list_operations(
        self,
        kind: str | None = None,
        status: str | None = None,
        operation_type: str | None = None,
        before: tuple[datetime, str] | None = None,
        limit: int = limits.LIST_LIMIT_DEFAULT,
        viewer: Viewer = EVERYONE,
    ) -> list[OperationRecord]:
        """Newest first by (started_at, id); `before` is the last row of the previous page, so pages never overlap.
        The statement is built once for each combination of filters given and viewer's scope (_list_statement)."""
        params: dict[str, Any] = {"limit": limit, **viewer_params(viewer)}
        for name, value in (("kind", kind), ("status", status), ("operation_type", operation_type)):
            if value:
                params[name] = value
        if before is not None:
            params["before_at"], params["before_id"] = before
        query = _list_statement(
            viewer.scope, bool(kind), bool(status), bool(operation_type), before is not None
        )
        with self.engine.connect() as conn:
            return [record_from_row(row, OperationRecord) for row in conn.execute(query, params)]

    def count_items(self, operation_id: str) -> tuple[int, int]:
        """(succeeded, failed) counted from the item rows themselves, for checks against the counters."""
        query = (
            select(_ITEMS.c.ok, func.count())
            .where(_ITEMS.c.operation_id == operation_id)
            .group_by(_ITEMS.c.ok)
        )
        with self.engine.connect() as conn:
            counts = {bool(ok): n for ok, n in conn.execute(query)}
        return counts.get(True, 0), counts.get(False, 0)

    # -- helpers ------------------------------------------------------------------------------------------------

    def now(self) -> datetime:
        """The database's clock (tracker.store.clock)."""
        return engine_now(self.engine)

    def _group_applied(self, conn: Connection, operation_id: str, writer_id: str, group: int) -> bool:
        last = conn.execute(
            select(_WRITERS.c.last_group).where(
                _WRITERS.c.operation_id == operation_id, _WRITERS.c.writer_id == writer_id
            )
        ).scalar()
        return last is not None and last >= group

    def _insert_writer(self, conn: Connection, operation_id: str, writer: Writer, now: datetime) -> None:
        conn.execute(
            insert(_WRITERS).values(
                operation_id=operation_id,
                writer_id=writer.writer_id,
                host=writer.process.host,
                pid=writer.process.pid,
                process=writer.process.identity,
                heartbeat_at=now,
                last_group=0,
            )
        )

    def _get(self, conn: Connection, operation_id: str) -> OperationDetail:
        row = conn.execute(select(*DETAIL_COLUMNS).where(_OPS.c.id == operation_id)).first()
        if row is None:
            raise OperationNotFound(f"operation {operation_id!r} not found")
        return record_from_row(row, OperationDetail)

    def _get_for_update(self, conn: Connection, operation_id: str, viewer: Viewer = EVERYONE) -> OperationRecord:
        query = where_visible(select(*SUMMARY_COLUMNS).where(_OPS.c.id == operation_id), viewer.scope)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        row = conn.execute(query, viewer_params(viewer)).first()
        if row is None:
            raise OperationNotFound(f"operation {operation_id!r} not found")
        return record_from_row(row, OperationRecord)

    def _raise_not_running(self, conn: Connection, operation_id: str) -> None:
        status = conn.execute(select(_OPS.c.status).where(_OPS.c.id == operation_id)).scalar()
        if status is None:
            raise OperationNotFound(f"operation {operation_id!r} not found")
        if status == CANCELLED:
            raise OperationCancelled(f"operation {operation_id!r} was cancelled; the write was refused")
        raise OperationClosed(f"operation {operation_id!r} is already {status}; the write was refused")
