"""SQL of the shared upstream rate limit: one row per workspace holding its next free request slot."""

from __future__ import annotations

from sqlalchemy import Engine, case, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..db import write_connection
from ..models import UpstreamRateLimit

_SLOTS = UpstreamRateLimit.__table__


class RateLimitStore:
    """Claims request slots in short write transactions, so every process on the database shares one schedule."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def claim(self, workspace: str, now: float, interval: float) -> float:
        """Take the next free slot (>= now) and move the shared next slot `interval` seconds past it.
        Returns the claimed slot, an epoch time at which the caller may send."""
        for attempt in range(2):
            try:
                with write_connection(self.engine) as conn:
                    start = case((_SLOTS.c.next_slot_at > now, _SLOTS.c.next_slot_at), else_=now)
                    claimed = conn.execute(
                        update(_SLOTS)
                        .where(_SLOTS.c.workspace == workspace)
                        .values(next_slot_at=start + interval)
                        .returning(_SLOTS.c.next_slot_at)
                    ).scalar()
                    if claimed is not None:
                        return float(claimed) - interval
                    conn.execute(insert(_SLOTS).values(workspace=workspace, next_slot_at=now + interval))
                    return now
            except IntegrityError:
                if attempt:
                    raise  # pragma: no cover - lost the creation race twice
                # another process created the row first (PostgreSQL; SQLite's BEGIN IMMEDIATE has no such race)
        raise AssertionError("unreachable")  # pragma: no cover

    def defer(self, workspace: str, until: float) -> None:
        """Nobody sends before `until` (after a 429 with Retry-After); never moves the slot backwards."""
        with write_connection(self.engine) as conn:
            result = conn.execute(
                update(_SLOTS)
                .where(_SLOTS.c.workspace == workspace, _SLOTS.c.next_slot_at < until)
                .values(next_slot_at=until)
            )
            if result.rowcount == 0:
                exists = conn.execute(select(_SLOTS.c.workspace).where(_SLOTS.c.workspace == workspace)).first()
                if exists is None:
                    conn.execute(insert(_SLOTS).values(workspace=workspace, next_slot_at=until))

    def next_slot(self, workspace: str) -> float | None:
        with self.engine.connect() as conn:
            value = conn.execute(select(_SLOTS.c.next_slot_at).where(_SLOTS.c.workspace == workspace)).scalar()
        return None if value is None else float(value)
