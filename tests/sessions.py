"""MCP sessions for the tests, over tracker.testing.client: in process over a tmp_path database (most tests), or a
real `python -m tracker ...` stdio subprocess on this checkout where the transport or the process is the point."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from tracker.testing.client import SyncToolClient, ToolAnswer, ToolClient, stdio, sync_stdio

from .conftest import REPO, subprocess_env

__all__ = ["ToolAnswer", "ToolClient", "SyncToolClient", "mcp_session", "sync_session"]


def _env(db: Path | str, env: dict[str, str | None]) -> dict[str, str]:
    """The child environment on `db` with extra variables (None removes one)."""
    child = subprocess_env(db, **{name: value for name, value in env.items() if value is not None})
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
