"""Read-only looks at the database from outside the server (a checksum of what a tool could write, integrity,
counters vs item rows), and a port that refuses connections."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


from tracker.db import sqlite_module


@contextmanager
def refused_port() -> Iterator[int]:
    """A 127.0.0.1 port that is bound but never listens: every connection to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# -- the database, seen from outside ------------------------------------------------------------------------------

CHECKSUM_QUERIES = ("SELECT * FROM operations ORDER BY id", "SELECT * FROM operation_items ORDER BY seq")


def _rows(db: str, queries: tuple[str, ...]) -> list[list[tuple]]:
    if "://" in db and not db.startswith("sqlite"):
        import psycopg

        url = db.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(url, autocommit=True) as conn:
            return [conn.execute(q).fetchall() for q in queries]
    path = db.removeprefix("sqlite:///")
    conn = sqlite_module().connect(path)
    try:
        return [conn.execute(q).fetchall() for q in queries]
    finally:
        conn.close()


def checksum(db: str | Path) -> str:
    """sha256 over every row of operations and operation_items, through a separate read connection."""
    digest = hashlib.sha256()
    for rows in _rows(str(db), CHECKSUM_QUERIES):
        for row in rows:
            digest.update(repr(tuple(row)).encode("utf-8", "backslashreplace"))
        digest.update(b"|")
    return digest.hexdigest()


def counters_and_items(db: str | Path) -> tuple[list[tuple], list[tuple]]:
    """(id, kind, status, succeeded_count, failed_count) of every operation, and (operation_id, ok, count) of
    its item rows, for checking that the counters equal the rows."""
    operations, items = _rows(
        str(db),
        (
            "SELECT id, kind, status, succeeded_count, failed_count FROM operations ORDER BY id",
            "SELECT operation_id, ok, count(*) FROM operation_items GROUP BY operation_id, ok",
        ),
    )
    return operations, items


def assert_counters_match_items(db: str | Path) -> None:
    operations, items = counters_and_items(db)
    counted = {(op_id, bool(ok)): n for op_id, ok, n in items}
    for op_id, kind, _status, succeeded, failed in operations:
        assert (succeeded, failed) == (counted.get((op_id, True), 0), counted.get((op_id, False), 0)), op_id


def integrity_check(path: str | Path) -> str:
    conn = sqlite_module().connect(str(path))
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
