"""The PostgreSQL engine's transactions (tracker/postgres.py): the driver is in autocommit, a write transaction
begins with an explicit BEGIN and is whole, and a read runs outside any transaction, so nothing makes psycopg drop
its prepared statements (the pool's ROLLBACK after every read used to)."""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy import text

from tracker import Settings, Tracker
from tracker.db import write_connection
from tracker.models import Operation
from tracker.status import StatusService

_names = itertools.count()
OPS = Operation.__table__


@pytest.fixture
def pg_tracker(postgres_server):
    url = postgres_server.create_database(f"engine_{next(_names)}")
    with Tracker(Settings.from_env({}, db=url, reap_interval_s=0)) as tracker:
        yield tracker


def test_a_write_transaction_is_whole(pg_tracker: Tracker) -> None:
    batch = pg_tracker.start_batch("import")
    with pytest.raises(RuntimeError), write_connection(pg_tracker.engine) as conn:
        assert conn.connection.driver_connection.info.transaction_status.name == "INTRANS"
        conn.execute(OPS.update().where(OPS.c.id == batch.id).values(total=7))
        raise RuntimeError("after the first statement")
    assert pg_tracker.get(batch.id).total == 0  # rolled back with the rest
    with write_connection(pg_tracker.engine) as conn:
        conn.execute(OPS.update().where(OPS.c.id == batch.id).values(total=7))
    assert pg_tracker.get(batch.id).total == 7


def test_status_reads_run_outside_a_transaction_and_stay_prepared(pg_tracker: Tracker) -> None:
    batch = pg_tracker.start_batch("import")
    for n in range(30):
        batch.record_success(f"item-{n}")
    batch.record_failure("bad", item_id="item-x", row_number=31)
    batch.finish()
    service = StatusService(pg_tracker)
    for _ in range(8):  # psycopg prepares a statement from its fifth execution on a connection
        answer = service.batch_status(batch.id)
        pg_tracker.get(batch.id)
    assert answer["operation"]["successful_ids"][:2] == ["item-0", "item-1"]
    assert answer["operation"]["failed_items"] == [{"id": "item-x", "row_number": 31, "error": "bad"}]
    with pg_tracker.engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw.autocommit and raw.info.transaction_status.name == "IDLE"
        prepared = conn.execute(text("SELECT statement FROM pg_prepared_statements")).scalars().all()
    assert any("json_agg" in statement for statement in prepared), prepared  # the one-statement status read
    assert any("FROM operations" in statement and "json_agg" not in statement for statement in prepared), prepared


def test_a_write_is_one_transaction_and_a_read_is_none(pg_tracker: Tracker) -> None:
    with write_connection(pg_tracker.engine) as conn:
        xid = conn.execute(text("SELECT txid_current()")).scalar()
        assert conn.execute(text("SELECT txid_current()")).scalar() == xid  # BEGIN ... COMMIT around both
    with pg_tracker.engine.connect() as conn:
        first = conn.execute(text("SELECT txid_current()")).scalar()
        assert conn.execute(text("SELECT txid_current()")).scalar() != first  # each statement on its own
