"""The one clock for shared decisions: the database's. Leases, heartbeats, retention, poll claims and timestamps
are written and judged by it, so a process whose own clock is skewed or stepped cannot move them.

PostgreSQL: clock_timestamp(), read inside the transaction that uses it. SQLite: every writer shares the host's
clock (the file is local), so the host's UTC time is the database's."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, Engine

from ..timeutil import to_ms, utcnow


def db_now(conn: Connection) -> datetime:
    """The database's current time (UTC, milliseconds), on this connection."""
    if conn.dialect.name == "postgresql":
        return to_ms(conn.exec_driver_sql("SELECT clock_timestamp()").scalar_one())
    return utcnow()


def engine_now(engine: Engine) -> datetime:
    """The database's current time, outside any transaction (SQLite: no query)."""
    if engine.dialect.name != "postgresql":
        return utcnow()
    with engine.connect() as conn:
        return db_now(conn)
