"""The schema comes from Alembic only: up, down, up again; models and migrations agree; first open is race-free."""

from __future__ import annotations

import ast
import subprocess
import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, delete, func, insert, inspect, select
from sqlalchemy.exc import IntegrityError

from tracker import Settings
from tracker.errors import DatabaseUnavailable
from tracker.db import (
    current_revision,
    downgrade,
    head_revision,
    migrations_dir,
    open_engine,
    upgrade_to_head,
    write_connection,
)
from tracker.models import Base
from tracker.timeutil import utcnow
from tracker.testing.env import child_env

from .conftest import PYTHON


def _diff(engine, metadata: MetaData) -> list:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)


def test_upgrade_downgrade_upgrade(backend_settings: Settings) -> None:
    engine = open_engine(backend_settings, migrate=False)
    assert current_revision(engine) is None
    upgrade_to_head(engine)
    assert current_revision(engine) == head_revision()
    assert {"operations", "operation_items"} <= set(inspect(engine).get_table_names())
    assert "operation_status" in inspect(engine).get_view_names()
    downgrade(engine, "base")
    assert current_revision(engine) is None
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    upgrade_to_head(engine)
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_models_match_migrations(backend_settings: Settings) -> None:
    engine = open_engine(backend_settings)
    assert _diff(engine, Base.metadata) == []
    # The check can fail: a model column the migrations lack is reported.
    drifted = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(drifted)
    drifted.tables["operations"].append_column(Column("not_migrated", Integer))
    assert any(d[0] == "add_column" and d[3].name == "not_migrated" for d in _diff(engine, drifted))
    engine.dispose()


def test_migrations_import_nothing_from_tracker() -> None:
    """A revision is frozen: it carries its own column types, so editing tracker/models.py cannot change it."""
    revisions = sorted((migrations_dir() / "versions").glob("[0-9]*.py"))
    assert revisions
    for path in revisions:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n.split(".")[0] == "tracker"], f"{path.name} imports {names}"


def test_processes_opening_a_new_file_at_once_all_succeed(tmp_path: Path) -> None:
    db = tmp_path / "fresh.db"
    start_at = time.time() + 1.5
    code = (
        "import time, tracker\n"
        f"time.sleep(max(0, {start_at} - time.time()))\n"
        "t = tracker.Tracker.open()\n"
        "b = t.start_batch('import', total=1); b.record_success('x'); b.finish(); t.close()\n"
    )
    procs = [
        subprocess.Popen([PYTHON, "-c", code], env=child_env(db), stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    engine = open_engine(Settings.from_env({}, db=str(db)), migrate=False)
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM operations").scalar() == 4
    engine.dispose()


def test_the_schema_head_constant_is_alembics_head(tmp_path: Path) -> None:
    """db.SCHEMA_HEAD lets an up-to-date database open without importing Alembic: it must name the newest revision."""
    from tracker.db import SCHEMA_HEAD

    assert SCHEMA_HEAD == head_revision()
    db = tmp_path / "t.db"
    opened = "import sys, tracker; tracker.Tracker.open(sys.argv[1]).close(); print('alembic' in sys.modules)"
    answers = [
        subprocess.run(
            [PYTHON, "-c", opened, str(db)], capture_output=True, text=True, timeout=60, env=child_env(db)
        ).stdout.strip()
        for _ in range(2)
    ]
    assert answers == ["True", "False"]  # the first open migrates the new file; the next one needs no Alembic


def test_the_subjects_revision_keeps_every_row_and_reference(backend_settings: Settings) -> None:
    """0005 rebuilds operations on SQLite (its UNIQUE on idempotency_key cannot be dropped in place): every row,
    every reference to it and the cascades survive, on both backends; keys become unique per subject. Down again,
    a key several subjects used stays with the oldest run."""
    ops, items = Base.metadata.tables["operations"], Base.metadata.tables["operation_items"]
    writers, rows = Base.metadata.tables["operation_writers"], Base.metadata.tables["run_batch_rows"]
    engine = open_engine(backend_settings, migrate=False)
    upgrade_to_head(engine, "0004")
    now = utcnow()
    common = {"operation_type": "grid_run", "status": "running", "total": 1, "succeeded_count": 0, "failed_count": 0,
              "started_at": now, "updated_at": now, "resumable": True}
    with write_connection(engine) as conn:
        conn.execute(insert(ops).values(id="batch_1", kind="batch", **common))
        conn.execute(insert(ops).values(id="run_1", kind="run", parent_id="batch_1", row_number=1, request_id="r1", **common))
        conn.execute(insert(ops).values(id="run_2", kind="run", idempotency_key="k", **common))
        conn.execute(insert(items).values(operation_id="batch_1", ok=True, item_id="r1"))
        conn.execute(insert(writers).values(operation_id="batch_1", writer_id="w", host="h", pid=1, heartbeat_at=now, last_group=3))
        conn.execute(insert(rows).values(batch_id="batch_1", row_number=1, inputs={"n": "1"}))
    upgrade_to_head(engine)
    assert current_revision(engine) == head_revision() and _diff(engine, Base.metadata) == []
    with engine.connect() as conn:
        assert conn.execute(select(ops.c.id, ops.c.subject).order_by(ops.c.id)).all() == [
            ("batch_1", None), ("run_1", None), ("run_2", None)
        ]
        assert conn.execute(select(ops.c.parent_id, ops.c.request_id).where(ops.c.id == "run_1")).one() == ("batch_1", "r1")
        view = conn.exec_driver_sql("SELECT id, subject, successful_ids FROM operation_status WHERE id = 'batch_1'").one()
        assert view[:2] == ("batch_1", None) and "r1" in str(view[2])
    with write_connection(engine) as conn:  # keys per subject: alice may use "k", another unbound run may not
        conn.execute(insert(ops).values(id="run_3", kind="run", idempotency_key="k", subject="alice", **common))
    with pytest.raises(IntegrityError), write_connection(engine) as conn:
        conn.execute(insert(ops).values(id="run_4", kind="run", idempotency_key="k", **common))
    with pytest.raises(IntegrityError), write_connection(engine) as conn:
        conn.execute(insert(ops).values(id="run_4", kind="run", idempotency_key="k", subject="alice", **common))
    with write_connection(engine) as conn:  # the references still hold: the cascades run
        conn.execute(delete(ops).where(ops.c.id == "batch_1"))
    with engine.connect() as conn:
        assert [conn.execute(select(func.count()).select_from(t)).scalar() for t in (items, writers, rows)] == [0, 0, 0]
        assert conn.execute(select(ops.c.parent_id).where(ops.c.id == "run_1")).scalar() is None
    downgrade(engine, "0004")
    with engine.connect() as conn:
        keys = conn.exec_driver_sql("SELECT id, idempotency_key FROM operations ORDER BY id").all()
        assert keys == [("run_1", None), ("run_2", "k"), ("run_3", None)]
        assert "subject" not in {c["name"] for c in inspect(conn).get_columns("operations")}
    with pytest.raises(IntegrityError), engine.connect() as conn, conn.begin():
        conn.exec_driver_sql("UPDATE operations SET idempotency_key = 'k' WHERE id = 'run_3'")
    engine.dispose()


def test_a_sqlite_migration_that_would_leave_a_broken_reference_changes_nothing(settings: Settings) -> None:
    """Migrations run on SQLite with foreign keys off (0005 rebuilds operations); the last step checks every
    reference before the commit. An item whose operation is gone (left by a tool that wrote with the checks off) makes
    the upgrade refuse in one line, and the database stays at 0004."""
    items = Base.metadata.tables["operation_items"]
    engine = open_engine(settings, migrate=False)
    upgrade_to_head(engine, "0004")
    with engine.connect() as conn:
        conn.connection.driver_connection.execute("PRAGMA foreign_keys = OFF")
        conn.execute(insert(items).values(operation_id="batch_gone", ok=True, item_id="x"))
        conn.commit()
        conn.connection.driver_connection.execute("PRAGMA foreign_keys = ON")
    with pytest.raises(DatabaseUnavailable, match="broken reference in table operation_items; nothing was changed"):
        upgrade_to_head(engine)
    assert current_revision(engine) == "0004"
    engine.dispose()
