"""What every part of the remote-runs service shares: settings, the stores, this process, the upstream, the task
supervisor, and the writes of a run's end (each goes through here, so scrubbing and retries are one rule)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import Engine

from .. import liveness
from ..aio import off_loop
from ..db import database_errors, engine_location
from ..errors import DatabaseUnavailable, TrackerError
from ..models import COMPLETED, FAILED
from ..records import Viewer
from ..settings import Settings
from ..store.runs import RunRecord, RunStore
from .answers import scrub, upstream_failure
from .http import HttpUpstream
from .ratelimit import SharedRateLimiter, workspace_key
from .tasks import Supervisor
from .upstream import Answer, Upstream

log = logging.getLogger(__name__)

T = TypeVar("T")

OPERATION_TYPE = "grid_run"
PERSIST_ATTEMPTS = 6  # tries to record an upstream answer through database errors (about 10 s of pauses)


class RunContext:
    def __init__(self, settings: Settings, engine: Engine, upstream: Upstream | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.store = RunStore(engine)
        self.process = liveness.current()
        self.tasks = Supervisor()
        self.location = engine_location(engine)
        self._upstream = upstream
        self._given = upstream is not None

    @property
    def upstream(self) -> Upstream:
        """The configured upstream, built on first use (InvalidInput when its settings are unusable)."""
        if self._upstream is None:
            s = self.settings
            limiter = SharedRateLimiter(self.engine, workspace_key(s.upstream_base, s.upstream_key), s.upstream_rate_per_s)
            self._upstream = HttpUpstream(s.upstream_base, s.upstream_key, limiter)
        return self._upstream

    @property
    def has_upstream(self) -> bool:
        """An upstream was given, or the settings name one (an API key): without, nothing is polled or sent."""
        return self._given or bool(self.settings.upstream_key)

    def viewer(self, subject: str | None) -> Viewer:
        """The caller with this subject (None: one who sees every run), under these settings."""
        return Viewer.of(subject, self.settings)

    def owner_values(self) -> dict[str, Any]:
        return {"owner_host": self.process.host, "owner_pid": self.process.pid, "owner_process": self.process.identity}

    @property
    def heartbeat_every_s(self) -> float:
        return max(0.5, min(5.0, self.settings.heartbeat_lease_s / 4))

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking store call off the event loop; a driver error becomes DatabaseUnavailable."""
        with database_errors(self.location):
            return await off_loop(fn, *args)

    async def persist(self, write: Callable[[], Awaitable[T]]) -> T:
        """Write what the upstream answered, through a passing database error: the answer (a request_id, outputs)
        exists only in memory, and losing it would leave a run that was sent but can never be polled."""
        for attempt in range(PERSIST_ATTEMPTS):
            try:
                return await write()
            except DatabaseUnavailable as exc:
                if attempt == PERSIST_ATTEMPTS - 1:
                    raise
                log.warning("could not record an upstream answer, retrying: %s", exc)
                await asyncio.sleep(min(4.0, 0.25 * 2**attempt))
        raise AssertionError("unreachable")

    async def record_submission(self, record: RunRecord, answer: Answer) -> RunRecord:
        """Store what a submission answered: accepted (its request_id; from here any process may poll it), or
        already ended (a sync run)."""
        if answer["status"] == "running":
            return await self.db(self.store.mark_submitted, record.id, answer["request_id"])
        return await self.record_end(record.id, answer)

    async def record_end(self, run_id: str, answer: Answer) -> RunRecord:
        if answer["status"] == "completed":
            return await self.finish(run_id, COMPLETED, outputs=answer.get("outputs"))
        return await self.finish(run_id, FAILED, error=upstream_failure(answer))

    async def finish(self, run_id: str, status: str, outputs: Any = None, error: str | None = None) -> RunRecord:
        key = self.settings.upstream_key
        return await self.db(self.store.finish, run_id, status, None, scrub(outputs, key), scrub(error, key))

    def finish_now(self, run_id: str, status: str, error: str) -> None:
        """Blocking finish for cancellation paths, where awaiting again would be cancelled too."""
        try:
            with database_errors(self.location, "marking the run interrupted"):
                self.store.finish(run_id, status, None, None, error)
        except TrackerError as exc:  # the database failed, or the run is gone
            log.warning("run %s: %s", run_id, exc)

    def scrub(self, value: Any) -> Any:
        return scrub(value, self.settings.upstream_key)

    async def aclose(self) -> None:
        await self.tasks.aclose()
        if self._upstream is not None:
            await self._upstream.aclose()
