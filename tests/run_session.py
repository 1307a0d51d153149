"""Helpers for the remote-run tests that speak MCP: a real stdio session against `python -m tracker serve`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from mcp.client.session import ClientSession

from .conftest import FakeUpstreamProcess
from .mcp_client import answer, call, mcp_session

__all__ = ["answer", "call", "tracker_session"]


@asynccontextmanager
async def tracker_session(
    db: Path, fake: FakeUpstreamProcess, errlog: Path, **env: str
) -> AsyncIterator[ClientSession]:
    """A client session with a fresh `tracker serve` on `db`, its upstream the fake; stderr goes to `errlog`."""
    async with mcp_session(db, errlog, **fake.env(), TRACKER_POLL_INTERVAL="0.3", **env) as session:
        yield session
