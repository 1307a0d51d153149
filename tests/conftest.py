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


# -- the fake upstream grid API: scripts/fake_upstream.py, a real HTTP server on 127.0.0.1 -------------------------

import json  # noqa: E402
import subprocess  # noqa: E402
import urllib.request  # noqa: E402

FAKE_UPSTREAM_KEY = "test-key-0123456789"


class FakeUpstreamProcess:
    """scripts/fake_upstream.py in a child process; options are its command-line flags (run_seconds='0.3')."""

    def __init__(self, **options: object) -> None:
        args = [PYTHON, str(REPO / "scripts" / "fake_upstream.py"), "--key", FAKE_UPSTREAM_KEY]
        for name, value in options.items():
            args += [f"--{name.replace('_', '-')}", str(value)]
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        ready = json.loads(self.process.stdout.readline())
        self.base_url: str = ready["base_url"]
        self.port: int = ready["port"]
        self.key = FAKE_UPSTREAM_KEY

    def _call(self, path: str, body: object = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", data=data, timeout=10) as response:
            return json.loads(response.read())

    def stats(self) -> dict:
        return self._call("/_fake/stats")

    def configure(self, **options: object) -> dict:
        return self._call("/_fake/config", options)

    def reset(self) -> None:
        self._call("/_fake/reset", {})

    def env(self) -> dict[str, str]:
        """BITSCALE_* variables pointing a tracker process at this server."""
        return {"BITSCALE_API_BASE": self.base_url, "BITSCALE_API_KEY": self.key}

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def fake_upstream():
    server = FakeUpstreamProcess(run_seconds="0.3", seed=1)
    yield server
    server.stop()


@pytest.fixture
def upstream_settings(db_path: Path, fake_upstream: FakeUpstreamProcess) -> Settings:
    """Settings for a fresh database whose upstream is the fake server (poll interval shortened for tests)."""
    return Settings.from_env(fake_upstream.env(), db=str(db_path), poll_interval_s=0.3)
