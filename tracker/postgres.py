"""PostgreSQL engines whose every wait is bounded by one setting (Settings.db_timeout_s, TRACKER_DB_TIMEOUT): a
server that is slow, silent or partitioned away costs about that long, then an error, never a hang. The only
module that imports psycopg.

Each layer covers what the others miss:

- Server side (`options`): statement_timeout and lock_timeout end a slow statement or a lock wait on a live
  server, which answers with an error and keeps the connection usable; idle_in_transaction_session_timeout frees
  the locks of a client that vanished mid-transaction.
- TCP: keepalives and tcp_user_timeout make the kernel drop a connection whose peer is gone (packets lost).
- Client side: neither of those bounds a peer that accepts and ACKs at the TCP level but never answers (a hung
  server, a proxy that stopped forwarding: the kernel answers the keepalive probes for it). psycopg runs every
  network exchange of a connection (execute, fetch, commit, rollback, COPY) through Connection.wait(gen,
  timeout=...), so BoundedConnection.wait passes the deadline to all of them. We chose this over a watchdog
  thread that shuts the socket down: wait() is psycopg's own seam, it runs in the caller's thread and cannot
  race with the next statement. After a deadline the connection's protocol state is unknown, so it is closed;
  SQLAlchemy's psycopg dialect then sees a disconnect (`closed`) and the connection leaves the pool.
- Connecting: connect_timeout, enforced by psycopg around libpq's non-blocking connect (whole seconds, >= 2).
- Transactions: the driver is in autocommit, and a write transaction (tracker.db.write_connection, marked
  write=True) starts with an explicit BEGIN. A read runs each statement on its own: under READ COMMITTED each
  statement of a transaction had its own snapshot anyway, and the implicit BEGIN and the pool's ROLLBACK cost a
  read two round trips; the ROLLBACK also made psycopg drop its prepared statements, so no read was ever prepared
  (the status read, then three statements: p50 1.32 -> 0.89 ms, measured interleaved under load). A transaction
  begun without write=True is therefore no transaction on PostgreSQL: every write goes through write_connection.
- Checkout: a pooled connection the server or the network ended (a restart, a cut) is replaced before use, and
  without a round trip: an idle connection has nothing to read, so a readable socket is the server's goodbye (its
  FATAL message) or the end of the stream. SQLAlchemy's pool_pre_ping sends an empty query instead, one more
  round trip per checkout (measured: 0.16x of a primary-key lookup on every status read), and reconnects
  after any failed ping, so a silent server would cost its deadline plus the connect's. A silent peer is
  found by the first statement's deadline, as by a ping's: NoAnswer, then a new connection next time.
"""

from __future__ import annotations

import inspect
import math
import select
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, InvalidatePoolError

from .errors import DatabaseUnavailable

# The one timeout a wait on a connection hits (not psycopg's public API, hence the fallback to nothing).
_WAIT_TIMEOUT = getattr(psycopg.errors, "_WaitTimeout", ())
IDLE_IN_TRANSACTION_FACTOR = 6  # a transaction idle this many timeouts long has lost its client


class NoAnswer(psycopg.OperationalError):
    """The server did not answer within the deadline; the connection was closed."""


class BoundedConnection(psycopg.Connection):
    """A psycopg connection whose every wait for the server ends after `deadline_s`."""

    deadline_s: float = 10.0

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        ours = timeout is None or timeout >= self.deadline_s
        try:
            return super().wait(gen, interval=interval, timeout=self.deadline_s if ours else timeout)
        except _WAIT_TIMEOUT:
            if not ours:
                raise  # the caller's own, shorter timeout (psycopg's notifies): not a dead server
            self.close()
            raise NoAnswer(f"no answer from the server within {self.deadline_s:g}s (TRACKER_DB_TIMEOUT)") from None


def _connect(timeout_s: float, cargs: list[Any], cparams: dict[str, Any]) -> BoundedConnection:
    try:
        # Driver autocommit: the engine's begin event starts write transactions (module docstring).
        conn = BoundedConnection.connect(*cargs, autocommit=True, **cparams)
    except psycopg.errors.ConnectionTimeout:
        raise NoAnswer(
            f"no answer from the server within {cparams['connect_timeout']}s of connecting (TRACKER_DB_TIMEOUT)"
        ) from None
    conn.deadline_s = timeout_s
    return conn


def create_bounded_engine(url: URL, timeout_s: float) -> Engine:
    """An engine on `url` whose connects, statements, commits and lock waits each end within about timeout_s."""
    if url.drivername not in ("postgresql", "postgresql+psycopg"):
        raise DatabaseUnavailable(f"unsupported PostgreSQL driver {url.drivername}: use postgresql+psycopg://")
    if "timeout" not in inspect.signature(psycopg.Connection.wait).parameters:
        raise DatabaseUnavailable(f"psycopg {psycopg.__version__} cannot bound its waits: install psycopg 3.3 or newer")
    ms = max(1, int(timeout_s * 1000))
    connect_args = {
        "options": f"-c timezone=UTC -c statement_timeout={ms} -c lock_timeout={ms}"
        f" -c idle_in_transaction_session_timeout={ms * IDLE_IN_TRANSACTION_FACTOR}",
        "connect_timeout": max(2, math.ceil(timeout_s)),
        "keepalives": 1,
        "keepalives_idle": max(1, round(timeout_s / 2)),
        "keepalives_interval": max(1, round(timeout_s / 6)),
        "keepalives_count": 3,
        "tcp_user_timeout": ms,
    }
    engine = create_engine(url.set(drivername="postgresql+psycopg"), connect_args=connect_args)

    @event.listens_for(engine, "do_connect")
    def do_connect(_dialect, _record, cargs, cparams):  # noqa: ANN001, ANN202
        return _connect(timeout_s, cargs, cparams)

    event.listen(engine, "do_executemany", copy_from_stdin)

    @event.listens_for(engine, "begin")
    def begin(conn: Connection) -> None:
        if conn.get_execution_options().get("write"):
            conn.exec_driver_sql("BEGIN")

    @event.listens_for(engine, "connect")
    def on_connect(_dbapi_conn, record) -> None:  # noqa: ANN001
        record.info["fresh"] = True  # just connected: no need to check it on its first checkout

    @event.listens_for(engine, "checkout")
    def replace_ended(dbapi_conn, record, _proxy) -> None:  # noqa: ANN001
        if not record.info.pop("fresh", False) and _ended(dbapi_conn):
            raise InvalidatePoolError("pooled connection ended by the server or the network")  # the pool reconnects

    return engine


def _ended(conn: psycopg.Connection) -> bool:
    """Whether an idle connection was ended by the server or the network (module docstring: Checkout)."""
    if conn.closed or conn.broken:
        return True
    poller = select.poll()
    poller.register(conn.pgconn.socket, select.POLLIN)
    return bool(poller.poll(0))


def copy_from_stdin(cursor: psycopg.Cursor, statement: str, rows: Any, _context: Any) -> bool:
    """Run a `COPY ... FROM STDIN` statement given to SQLAlchemy with two rows or more as its parameters
    (exec_driver_sql's executemany; tracker.store.operations.COPY_FROM_ITEMS): they go through the COPY protocol.
    In SQLAlchemy's execute, so its errors are handled as any statement's (wrapped, and a broken connection
    invalidated). False for any other statement: SQLAlchemy runs it as usual."""
    if not statement.startswith("COPY ") or not statement.endswith(" FROM STDIN"):
        return False
    with cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)
    return True


@contextmanager
def driver_connection(engine: Engine) -> Iterator[psycopg.Connection]:
    """The psycopg connection of a pooled connection (checked out as any), for a hot read that runs SQL
    text compiled once: without a SQLAlchemy Connection, whose events, compiled-cache lookup and result processing
    cost more than PostgreSQL's own lookup (the status read, figure 2 of scripts/bench.py). Outside a transaction
    (driver autocommit). A driver error is raised as SQLAlchemy's DBAPIError, as from any statement, and a broken
    connection leaves the pool."""
    try:
        pooled = engine.raw_connection()
    except psycopg.Error as exc:  # opening a new connection
        raise DBAPIError.instance(None, None, exc, psycopg.Error) from None
    try:
        yield pooled.driver_connection
    except psycopg.Error as exc:
        broken = pooled.driver_connection.closed or pooled.driver_connection.broken
        if broken:
            pooled.invalidate(exc)
        raise DBAPIError.instance(None, None, exc, psycopg.Error, connection_invalidated=broken) from None
    finally:
        pooled.close()


@contextmanager
def long_statements(conn: Connection, seconds: float) -> Iterator[None]:
    """For work that legitimately takes long (a migration building an index on a big table): this transaction's
    statements and lock waits, and the client's deadline, may last `seconds` instead of the usual timeout."""
    raw = conn.connection.driver_connection
    ms = int(seconds * 1000)
    conn.exec_driver_sql(f"SET LOCAL statement_timeout = {ms}")
    conn.exec_driver_sql(f"SET LOCAL lock_timeout = {ms}")
    usual, raw.deadline_s = raw.deadline_s, seconds
    try:
        yield
    finally:
        raw.deadline_s = usual
