"""One upstream rate limit shared by every tracker process on a database.

Each request claims the next free slot of its workspace in a short write transaction (store/ratelimit.py) and
then waits, outside any transaction, until that slot. Slots are spaced 1/rate apart, plus a margin of 20%: an
upstream that counts requests in a sliding one-second window sees slot 1 and slot rate+1 arrive with jitter
(exact spacing would trip it about half the time), and on a loaded machine a request can reach the upstream
100 ms or more after it left its slot (measured in the multi-host simulation: 135 ms with 10% margin, which let 6
requests into one second). A 429 moves the shared next slot
past its Retry-After, so every process backs off, not only the one that was refused."""

from __future__ import annotations

import asyncio
import hashlib
import time

from sqlalchemy import Engine

from ..aio import off_loop
from ..db import database_errors, engine_location
from ..errors import InvalidInput
from ..limits import MAX_RETRY_AFTER_S
from ..store.ratelimit import Claim, RateLimitStore

SPACING_MARGIN = 1.2
MAX_QUEUED_CLAIMS = 256  # requests that may legitimately wait for slots at once, across processes


def workspace_key(base_url: str, api_key: str) -> str:
    """The workspace a rate limit applies to: one per API key (and base URL). A hash, so the key is never stored."""
    return hashlib.sha256(f"{base_url.rstrip('/')}\n{api_key}".encode()).hexdigest()[:32]


class SharedRateLimiter:
    """At most `rate_per_s` requests per second for one workspace, across processes sharing the database.
    Slots are the database's time; waits run on this process's monotonic clock, so no wall clock (ours skewed
    or stepped, or another process's) can make it wait for nothing or send early."""

    def __init__(self, engine: Engine, workspace: str, rate_per_s: float) -> None:
        if not rate_per_s > 0:
            raise InvalidInput("upstream_rate_per_s must be a positive number of requests per second")
        self.workspace = workspace
        self.rate_per_s = rate_per_s
        self.interval_s = SPACING_MARGIN / rate_per_s
        self._location = engine_location(engine)
        self._store = RateLimitStore(engine, max_ahead_s=MAX_RETRY_AFTER_S + MAX_QUEUED_CLAIMS * self.interval_s)
        # A quarter of the slack the margin leaves in a window of `rate` requests: the rest is for what happens
        # after the check (the request leaving, the network, the upstream's own clock).
        self.late_tolerance_s = (SPACING_MARGIN - 1.0) * rate_per_s * self.interval_s / 4
        self._deferred_until = 0.0  # this process's view of the latest Retry-After (database epoch seconds)

    async def acquire(self) -> Claim:
        """Return when this caller may send one request; the claim is a ticket for on_time()."""
        while True:
            claim = await self._db(self._store.claim, self.workspace, self.interval_s)
            delay = claim.due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            # A 429 that arrived while we waited invalidates slots claimed before it; a slot we reach too late
            # (a busy event loop or CPU, a slow commit of the claim) would crowd the next ones into the same
            # second: take a fresh one.
            if claim.slot >= self._deferred_until and self.on_time(claim):
                return claim

    def on_time(self, claim: Claim) -> bool:
        """Whether a request sent now is still within the slot of this claim (not so late that it would crowd
        the next slots into one second)."""
        return time.monotonic() - claim.due + claim.uncertainty_s <= self.late_tolerance_s

    async def defer(self, seconds: float) -> None:
        """The upstream said 429 Retry-After `seconds`: nobody on this database sends before then."""
        until = await self._db(self._store.defer, self.workspace, seconds)
        self._deferred_until = max(self._deferred_until, until)

    async def queue_s(self) -> float:
        """Seconds until the next free slot (0 when one is free now): how long a request claimed now would wait.
        A read; another process may claim the slot meanwhile."""
        next_slot, now = await self._db(self._store.queue, self.workspace)
        return 0.0 if next_slot is None else max(0.0, next_slot - now, self._deferred_until - now)

    async def _db(self, fn, *args):  # noqa: ANN001, ANN202
        with database_errors(self._location, "claiming an upstream rate-limit slot"):
            return await off_loop(fn, *args)
