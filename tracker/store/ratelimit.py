"""SQL of the shared upstream rate limit: one row per workspace holding its next free request slot.

Slots are epoch seconds by the database's clock (tracker.store.clock), read inside the same transaction, so no
process's own clock can book them ahead or behind. A slot further ahead than anything the limit can explain (the
longest Retry-After honoured plus a long queue of waiting requests) was booked by a skewed clock (an old row, or a
SQLite host whose clock was stepped back): it is treated as stale and re-based to now, never waited for."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..db import write_connection
from ..models import UpstreamRateLimit
from .clock import db_now

_SLOTS = UpstreamRateLimit.__table__


@dataclass(frozen=True)
class Claim:
    slot: float  # epoch seconds, the database's clock
    due: float  # the same moment on this process's time.monotonic()
    uncertainty_s: float  # how much later than `due` the slot may really be


class RateLimitStore:
    """Claims request slots in short write transactions, so every process on the database shares one schedule."""

    def __init__(self, engine: Engine, max_ahead_s: float) -> None:
        self.engine = engine
        self.max_ahead_s = max_ahead_s

    def claim(self, workspace: str, interval: float) -> Claim:
        """Take the next free slot (>= now) and move the shared next slot `interval` seconds past it."""
        for attempt in range(2):
            try:
                with write_connection(self.engine) as conn:
                    current = conn.execute(
                        select(_SLOTS.c.next_slot_at).where(_SLOTS.c.workspace == workspace).with_for_update()
                    ).scalar()
                    asked = time.monotonic()
                    now = _epoch(conn)  # after the row lock: a wait for it must not make the slot look earlier
                    read = time.monotonic()
                    if current is None:
                        conn.execute(insert(_SLOTS).values(workspace=workspace, next_slot_at=now + interval))
                        slot = now
                    else:
                        slot = self._start(float(current), now)
                        conn.execute(
                            update(_SLOTS).where(_SLOTS.c.workspace == workspace).values(next_slot_at=slot + interval)
                        )
                # Mapped onto this process's monotonic clock at the end of the clock read, so never early; the read's
                # own duration is how late it may be.
                return Claim(slot, read + (slot - now), read - asked)
            except IntegrityError:
                if attempt:
                    raise  # pragma: no cover - lost the creation race twice
                # another process created the row first (PostgreSQL; SQLite's BEGIN IMMEDIATE has no such race)
        raise AssertionError("unreachable")  # pragma: no cover

    def defer(self, workspace: str, seconds: float) -> float:
        """Nobody sends before now + seconds (after a 429 with Retry-After); never moves the slot backwards, except
        a stale one. Returns that time (epoch seconds, the database's clock)."""
        with write_connection(self.engine) as conn:
            current = conn.execute(
                select(_SLOTS.c.next_slot_at).where(_SLOTS.c.workspace == workspace).with_for_update()
            ).scalar()
            now = _epoch(conn)
            until = now + max(0.0, seconds)
            if current is None:
                conn.execute(insert(_SLOTS).values(workspace=workspace, next_slot_at=until))
            elif self._start(float(current), now) < until:
                conn.execute(update(_SLOTS).where(_SLOTS.c.workspace == workspace).values(next_slot_at=until))
            return until

    def queue(self, workspace: str) -> tuple[float | None, float]:
        """(next free slot or None, now), epoch seconds by the database's clock; a stale slot reads as now."""
        with self.engine.connect() as conn:
            now = _epoch(conn)
            value = conn.execute(select(_SLOTS.c.next_slot_at).where(_SLOTS.c.workspace == workspace)).scalar()
        return (None if value is None else self._start(float(value), now)), now

    def _start(self, next_slot: float, now: float) -> float:
        if next_slot > now + self.max_ahead_s:
            return now  # booked by a skewed clock: re-based
        return max(next_slot, now)


def _epoch(conn: Connection) -> float:
    return db_now(conn).timestamp()
