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
from ..shapes import BatchStarted, Run
from ..store.runs import RunRecord
from .batches import ADOPT_EVERY_S, Adopter, Batches
from .context import RunContext
from .grids import GridReads
from .poll import Poller
from .requests import check_batch, check_idempotency_key, check_run, text
from .submit import Submitter, run_values
from .upstream import Upstream

log = logging.getLogger(__name__)

Progress = Callable[[float, str], Awaitable[None]]  # (seconds waited, message): a progress notification
SYNC_PROGRESS_EVERY_S = 5.0  # well under any client's request timeout, which progress may reset


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
        progress: Progress | None = None,
        subject: str | None = None,
    ) -> Run:
        """Submit one run and answer within settings.sync_wait_s: the upstream's answer (sync: outputs when it
        finished in time, else its request_id; async: the request_id), or, if the upstream has not answered by
        then, the run as recorded (running, with its operation_id to poll). `progress(seconds_waited, message)` is
        called every SYNC_PROGRESS_EVERY_S meanwhile. A repeated idempotency_key returns the run already recorded
        for it and submits nothing. The run carries `subject` (the caller's); keys are unique per subject, so
        another subject's key is a new key here and its run is never returned."""
        request = check_run(grid_id, inputs, mode, output_columns, source_id)
        key = check_idempotency_key(idempotency_key)
        c = self.context
        subject = c.viewer(subject).subject
        if key is not None:
            existing = await c.db(self.store.get_by_idempotency_key, key, subject)
            if existing is not None:
                return await self._replay(existing, request.grid_id, request.inputs)
        try:
            record = await c.db(self.store.create, run_values(request, c, idempotency_key=key, subject=subject))
        except DuplicateRun:
            existing = await c.db(self.store.get_by_idempotency_key, key or "", subject)
            if existing is None:
                raise
            return await self._replay(existing, request.grid_id, request.inputs)
        # The submission runs in the service's own task: a client that gives up on the call (or cancels it), or
        # this call answering at its bound, does not cut the POST short, and the outcome is still recorded.
        task = c.tasks.spawn(self.submitter.submit_single(record, request))
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + max(0.0, self.settings.sync_wait_s)
        while (remaining := deadline - loop.time()) > 0:
            done, _ = await asyncio.wait({task}, timeout=min(SYNC_PROGRESS_EVERY_S, remaining))
            if done:
                return self.poller.answer(task.result())
            if progress is not None and deadline - loop.time() > 0:
                waited = loop.time() - started
                await progress(waited, f"run {record.id}: waiting for the upstream ({waited:.0f} s)")
        if task.done():
            return self.poller.answer(task.result())
        # Past the bound: answer as the upstream does past its window. The POST goes on; its answer is recorded.
        return self.poller.answer(await c.db(self.store.get, record.id) or record)

    async def _replay(self, existing: RunRecord, grid_id: str, inputs: dict[str, str]) -> Run:
        recorded = existing.inputs.get("inputs") if isinstance(existing.inputs, dict) else None
        if existing.grid_id != grid_id or recorded != inputs:
            raise InvalidInput(
                "idempotency_key was already used for a different run (another grid_id or inputs); use a new key"
            )
        if not existing.is_terminal and existing.request_id is not None:
            return {**await self.poller.status_of(existing), "replayed": True}
        return {**self.poller.answer(existing), "replayed": True}

    async def get_run_status(self, request_id: str, subject: str | None = None) -> Run:
        """The run's status. Ended runs come from the table (no upstream request); a running one is re-polled
        when its last poll is older than the poll interval; when the upstream cannot be reached (or none is
        configured) the last known status comes back with stale: true and the error. An id tracker never saw is
        asked upstream once. OperationNotFound when nobody knows it. A run the caller with `subject` may not see
        (records.Viewer) goes the way of an id tracker never saw, to the same answer."""
        request_id = text(request_id, "request_id")
        c = self.context
        viewer = c.viewer(subject)
        record = await c.db(self.store.get_by_request_id, request_id, viewer)
        if record is None and request_id.startswith("run_"):
            record = await c.db(self.store.get, request_id, viewer)  # tracker's own run id works too
        if record is None:
            return await self.poller.look_up(request_id, viewer)
        return await self.poller.status_of(record)

    async def run_grid_batch(
        self,
        grid_id: str,
        rows: list[dict[str, str]],
        mode: str = "async",
        output_columns: list[str] | None = None,
        source_id: str | None = None,
        concurrency: int = 4,
        subject: str | None = None,
    ) -> BatchStarted:
        """Record a batch of runs and return its batch_operation_id at once; a background worker submits each row
        (as a run linked to the batch) and polls the runs until each has ended. The batch and its runs carry
        `subject` (the caller's), also when another server resumes it."""
        request = check_batch(grid_id, rows, mode, output_columns, source_id, concurrency)
        return await self.batches.create(request, self.context.viewer(subject).subject)

    async def run_to_end(self, run: Run, subject: str | None = None) -> Run:
        """`run` followed until it ends, polled every poll interval (the answer of run_grid as a task)."""
        while run["status"] == "running":
            await asyncio.sleep(self.settings.poll_interval_s)
            run = await self.get_run_status(run["operation_id"], subject)
        return run

    async def batch_to_end(self, started: BatchStarted) -> BatchStarted:
        """The batch, once it ended: its status and a summary (the answer of run_grid_batch as a task)."""
        c = self.context
        batch_id = started["batch_operation_id"]
        while True:
            record = await c.db(self.store.get, batch_id)
            if record is None or record.is_terminal:
                break
            await asyncio.sleep(self.settings.poll_interval_s)
        if record is None:
            return {**started, "message": "the batch is no longer recorded (purged after its retention)"}
        return {
            **started,
            "status": record.status,
            "message": f"{record.succeeded_count} of {record.total} runs succeeded and {record.failed_count} failed; "
            "get_operation_items lists their request_ids and failures",
        }

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
