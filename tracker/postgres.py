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
  network exchange of a connection (execute, fetch, commit, rollback, the ping) through Connection.wait(gen,
  timeout=...), so BoundedConnection.wait passes the deadline to all of them. We chose this over a watchdog
  thread that shuts the socket down: wait() is psycopg's own seam, it runs in the caller's thread and cannot
  race with the next statement. After a deadline the connection's protocol state is unknown, so it is closed;
  SQLAlchemy's psycopg dialect then sees a disconnect (`closed`) and the connection leaves the pool.
- Connecting: connect_timeout, enforced by psycopg around libpq's non-blocking connect (whole seconds, >= 2).
- Checkout: SQLAlchemy's pool_pre_ping reconnects after any failed ping, so a silent server would cost the
  ping's deadline plus the connect's. Our ping reconnects only when the connection is broken (the server
  restarted: every pooled connection goes); a ping that got no answer raises at once.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL
from sqlalchemy.exc import InvalidatePoolError

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
        conn = BoundedConnection.connect(*cargs, **cparams)
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

    @event.listens_for(engine, "connect")
    def on_connect(_dbapi_conn, record) -> None:  # noqa: ANN001
        record.info["fresh"] = True  # just connected: no need to ping it on its first checkout

    @event.listens_for(engine, "checkout")
    def ping(dbapi_conn, record, _proxy) -> None:  # noqa: ANN001
        if record.info.pop("fresh", False):
            return
        try:
            with dbapi_conn.cursor() as cursor:
                cursor.execute(";")  # what SQLAlchemy's pre-ping sends: an empty query
        except NoAnswer:
            raise  # a new connection would wait as long for nothing
        except psycopg.Error as exc:
            raise InvalidatePoolError(f"pooled connection broken: {exc}") from None

    return engine


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
