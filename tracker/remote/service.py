"""RunsService: the service behind run_grid, run_grid_batch and get_run_status. It wires the parts (submit, poll,
batches) over one RunContext and schedules the background loops; each loop's pass is a tick() of its part."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import Engine

from ..errors import DuplicateRun, InvalidInput, TrackerError
from ..settings import Settings
from ..store.runs import RunRecord
from .batches import ADOPT_EVERY_S, Adopter, Batches
from .context import RunContext
from .grids import GridReads
from .poll import Poller
from .requests import check_batch, check_idempotency_key, check_run, text
from .submit import Submitter, run_values
from .upstream import Upstream

log = logging.getLogger(__name__)


class RunsService:
    """Runs and run batches over one database. Call start() inside the event loop that serves tools to poll
    running runs and resume orphaned batches in the background, and aclose() at shutdown (run_lifespan does both). `upstream`
    defaults to the HTTP grid API of the settings; pass a MemoryUpstream (or any Upstream) to run without it."""

    def __init__(self, settings: Settings, engine: Engine, upstream: Upstream | None = None) -> None:
        self.context = RunContext(settings, engine, upstream)
        self.settings, self.engine = settings, engine
        self.store = self.context.store
        self.submitter = Submitter(self.context)
        self.poller = Poller(self.context)
        self.batches = Batches(self.context, self.submitter)
        self.adopter = Adopter(self.context, self.batches)
        self.grids = GridReads(self.context)  # get_workspace_details, list_grids, get_grid_details, get_grid_curl
        self._started = False

    async def run_grid(
        self,
        grid_id: str,
        inputs: dict[str, str],
        mode: str = "sync",
        output_columns: list[str] | None = None,
        source_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Submit one run. sync: wait (without blocking other work) up to the upstream's window and return its
        outputs, else its request_id. async: return the request_id at once. A repeated idempotency_key returns
        the run already recorded for it and submits nothing."""
        request = check_run(grid_id, inputs, mode, output_columns, source_id)
        key = check_idempotency_key(idempotency_key)
        c = self.context
        if key is not None:
            existing = await c.db(self.store.get_by_idempotency_key, key)
            if existing is not None:
                return await self._replay(existing, request.grid_id, request.inputs)
        try:
            record = await c.db(self.store.create, run_values(request, c, idempotency_key=key))
        except DuplicateRun:
            existing = await c.db(self.store.get_by_idempotency_key, key or "")
            if existing is None:
                raise
            return await self._replay(existing, request.grid_id, request.inputs)
        # The submission runs in the service's own task: a client that gives up on the call (or cancels it)
        # does not cut the POST short, and the outcome is still recorded.
        task = c.tasks.spawn(self.submitter.submit_single(record, request))
        return self.poller.answer(await asyncio.shield(task))

    async def _replay(self, existing: RunRecord, grid_id: str, inputs: dict[str, str]) -> dict[str, Any]:
        recorded = existing.inputs.get("inputs") if isinstance(existing.inputs, dict) else None
        if existing.grid_id != grid_id or recorded != inputs:
            raise InvalidInput(
                "idempotency_key was already used for a different run (another grid_id or inputs); use a new key"
            )
        if not existing.is_terminal and existing.request_id is not None:
            return {**await self.poller.status_of(existing), "replayed": True}
        return {**self.poller.answer(existing), "replayed": True}

    async def get_run_status(self, request_id: str) -> dict[str, Any]:
        """The run's status. Ended runs come from the table (no upstream request); a running one is re-polled
        when its last poll is older than the poll interval; when the upstream cannot be reached (or none is
        configured) the last known status comes back with stale: true and the error. An id tracker never saw is
        asked upstream once. OperationNotFound when nobody knows it."""
        request_id = text(request_id, "request_id")
        c = self.context
        record = await c.db(self.store.get_by_request_id, request_id)
        if record is None and request_id.startswith("run_"):
            record = await c.db(self.store.get, request_id)  # tracker's own run id works too
        if record is None:
            return await self.poller.look_up(request_id)
        return await self.poller.status_of(record)

    async def run_grid_batch(
        self,
        grid_id: str,
        rows: list[dict[str, str]],
        mode: str = "async",
        output_columns: list[str] | None = None,
        source_id: str | None = None,
        concurrency: int = 4,
    ) -> dict[str, Any]:
        """Record a batch of runs and return its batch_operation_id at once; a background worker submits each row
        (as a run linked to the batch) and polls the runs until each has ended."""
        return await self.batches.create(check_batch(grid_id, rows, mode, output_columns, source_id, concurrency))

    async def adopt_orphans(self) -> list[str]:
        """One adoption pass now; returns the ids of the batches taken over."""
        return await self.adopter.tick()

    # -- background -----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin polling running runs and resuming orphaned batches (call once, inside the serving loop).
        Without an upstream there is nothing to poll with, and a resumed batch could only fail its rows: both wait
        for a server that has one."""
        if self._started:
            return
        self._started = True
        if not self.context.has_upstream:
            log.info("remote runs: BITSCALE_API_KEY is not set; no polling, no batch resumption in this server")
            return
        s = self.settings
        idle = max(0.05, min(0.5, s.poll_interval_s / 4))
        # The loops first: a database error in the first adoption pass must not leave this server without them.
        self.context.tasks.spawn(self._loop("background poll", self.poller.tick, idle, s.poll_interval_s))
        # The adopt loop's first pass waits: the one below runs now, and two at once could both resume a batch of
        # this process's own (a compare-and-set on the owner cannot tell them apart).
        adopt = self._loop("looking for orphaned batches", self.adopter.tick, ADOPT_EVERY_S, wait_first=True)
        self.context.tasks.spawn(adopt)
        try:
            await self.adopter.tick()
        except TrackerError as exc:
            log.warning("could not look for orphaned batches yet (the adopt loop retries): %s", exc)

    @staticmethod
    async def _loop(
        what: str, tick: Callable[[], Awaitable[Any]], idle_s: float, error_pause_s: float = 0, wait_first: bool = False
    ) -> None:
        """Run `tick` forever: again at once while it finds work, after idle_s when it finds none, and after a
        pause when it fails (the database or upstream may come back)."""
        if wait_first:
            await asyncio.sleep(idle_s)
        while True:
            try:
                busy = await tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep going; log what failed
                log.warning("%s failed: %s", what, exc)
                await asyncio.sleep(error_pause_s or idle_s)
                continue
            if not busy:
                await asyncio.sleep(idle_s)

    async def aclose(self) -> None:
        """Stop background work. Runs in flight are marked interrupted; batches stay resumable."""
        await self.context.aclose()
