"""Shared fixtures: every test gets its own real SQLite file under tmp_path, migrated to head."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tracker import Settings, Tracker

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "tracker.db"


@pytest.fixture
def settings(db_path: Path) -> Settings:
    return Settings.from_env({}, db=str(db_path))


@pytest.fixture
def tracker(settings: Settings):
    with Tracker(settings) as opened:
        yield opened


def subprocess_env(db: Path | str, **extra: str) -> dict[str, str]:
    """Environment for a child `python -m tracker ...` or script: this checkout importable, the test's database."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env["TRACKER_DB"] = str(db)
    env.update(extra)
    return env


PYTHON = sys.executable


# -- PostgreSQL: the same contract tests run on both backends ------------------------------------------------------

import itertools  # noqa: E402

from .postgres_server import PostgresServer, find_bindir  # noqa: E402

_database_numbers = itertools.count()


@pytest.fixture(scope="session")
def postgres_server():
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's postgresql package")
    server = PostgresServer(bindir)
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_settings(request, tmp_path: Path) -> Settings:
    """Settings for a fresh database on each backend: a SQLite file under tmp_path, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return Settings.from_env({}, db=str(tmp_path / "tracker.db"))
    server = request.getfixturevalue("postgres_server")
    return Settings.from_env({}, db=server.create_database(f"t{os.getpid()}_{next(_database_numbers)}"))


@pytest.fixture
def backend_tracker(backend_settings: Settings):
    with Tracker(backend_settings) as opened:
        yield opened
