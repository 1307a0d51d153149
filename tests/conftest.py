"""Shared fixtures: every test gets its own real SQLite file under tmp_path, migrated to head."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tracker import Settings, Tracker
from tracker.testing.fake_upstream import FakeUpstreamProcess as _Launcher

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable  # for child processes; tracker.testing.env.child_env(db) makes them import this checkout

# Every field of a batch OPERATION in ../shared/CONTRACTS.md section 1 that is always present in a status answer;
# completed_at and execution_time_ms are there once known (left out while running, never null).
OPERATION_FIELDS = {
    "batch_operation_id",
    "operation_type",
    "status",
    "progress",
    "successful_ids",
    "failed_items",
    "started_at",
}
ENDED_FIELDS = {"completed_at", "execution_time_ms"}


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


# -- PostgreSQL: the same contract tests run on both backends ------------------------------------------------------

import itertools  # noqa: E402

from tracker.testing.postgres import PostgresServer, find_bindir  # noqa: E402

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


# -- the fake upstream grid API: tracker.testing.fake_upstream, a real HTTP server on 127.0.0.1 --------------------

FAKE_UPSTREAM_KEY = "test-key-0123456789"


class FakeUpstreamProcess(_Launcher):
    """tracker.testing.fake_upstream in a child process with the tests' key; options are its command-line flags."""

    def __init__(self, key: str = FAKE_UPSTREAM_KEY, **options: object) -> None:
        super().__init__(key, **options)


@pytest.fixture
def fake_upstream():
    server = FakeUpstreamProcess(run_seconds="0.3", seed=1)
    yield server
    server.stop()


@pytest.fixture
def upstream_settings(db_path: Path, fake_upstream: FakeUpstreamProcess) -> Settings:
    """Settings for a fresh database whose upstream is the fake server (poll interval shortened for tests)."""
    return Settings.from_env(fake_upstream.env(), db=str(db_path), poll_interval_s=0.3)


# The longest tests start first: under pytest-xdist (the suite runs with -n 4) they overlap the many short ones
# instead of ending the run alone. The sort is stable, so the order within each group stays as collected.
STARTS_FIRST = ("test_multihost.py", "test_ts_sync_run.py", "test_tasks_conformance.py", "test_tasks_restart.py", "test_packaging.py", "test_crash.py", "test_clocks.py", "test_database_files.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name not in STARTS_FIRST)


def value_schema(prop: dict) -> dict:
    """An argument's schema for its value: the non-null branch of an optional argument that also takes null
    (`{"anyOf": [VALUE, {"type": "null"}]}`, tracker/server/strict.py nullable), else the schema itself."""
    if "anyOf" not in prop:
        return prop
    value, null = prop["anyOf"]
    assert null == {"type": "null"}, prop
    return value
