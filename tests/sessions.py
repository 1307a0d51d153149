"""MCP sessions for the tests, over tracker.testing.client: in process over a tmp_path database (most tests), or a
real `python -m tracker ...` stdio subprocess on this checkout where the transport or the process is the point."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from tracker import Settings
from tracker.testing.client import SyncToolClient, ToolAnswer, ToolClient, served, stdio, sync_served, sync_stdio
from tracker.testing.env import child_env

from .conftest import REPO, FakeUpstreamProcess

__all__ = [
    "SyncToolClient", "ToolAnswer", "ToolClient", "mcp_session", "run_settings", "served", "sync_served", "sync_session",
    "tracker_session",
]


def _env(db: Path | str, env: dict[str, str | None]) -> dict[str, str]:
    """The child environment on `db` with extra variables (None removes one)."""
    child = child_env(db, **{name: value for name, value in env.items() if value is not None})
    for name, value in env.items():
        if value is None:
            child.pop(name, None)
    return child


@asynccontextmanager
async def mcp_session(
    db: Path | str, errlog: Path, args: Sequence[str] = ("-m", "tracker", "serve"), **env: str | None
) -> AsyncIterator[ToolClient]:
    """A session on a fresh `python <args>` subprocess on `db` (a path or URL); stderr appended to `errlog`."""
    with errlog.open("a") as log:
        async with stdio(_env(db, env), log, args, cwd=REPO) as session:
            yield session


@contextmanager
def sync_session(
    db: Path | str, errlog: Path, args: Sequence[str] = ("serve",), **env: str | None
) -> Iterator[SyncToolClient]:
    """mcp_session() from plain code, on `python -m tracker <args>`."""
    with errlog.open("a") as log, sync_stdio(_env(db, env), log, ("-m", "tracker", *args), cwd=REPO) as session:
        yield session


# -- remote runs: the upstream is the fake grid API (tests/conftest.py FakeUpstreamProcess) --------------------------

RUN_POLL_INTERVAL = "0.3"  # poll runs faster than the 2 s default


def run_settings(db: Path, fake: FakeUpstreamProcess, **env: str) -> Settings:
    """Settings for an in-process `tracker serve` on `db` whose upstream is the fake."""
    return Settings.from_env({**fake.env(), "TRACKER_POLL_INTERVAL": RUN_POLL_INTERVAL, **env}, db=str(db))


def tracker_session(db: Path, fake: FakeUpstreamProcess, errlog: Path, **env: str) -> Any:
    """A stdio session with a fresh `tracker serve` subprocess on `db`, its upstream the fake."""
    return mcp_session(db, errlog, **fake.env(), TRACKER_POLL_INTERVAL=RUN_POLL_INTERVAL, **env)
