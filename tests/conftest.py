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
