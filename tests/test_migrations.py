"""The schema comes from Alembic only: up, down, up again; models and migrations agree; first open is race-free."""

from __future__ import annotations

import ast
import subprocess
import time
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, inspect

from tracker import Settings
from tracker.db import current_revision, downgrade, head_revision, migrations_dir, open_engine, upgrade_to_head
from tracker.models import Base
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
