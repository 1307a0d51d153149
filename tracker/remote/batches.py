"""run_grid_batch: the batch row, the worker that submits its rows and waits for their runs, and the adopter
that resumes batches whose owner process is gone.

Finishing a run and counting it in its batch is one transaction (store/runs.py), so batch counts are exact
whichever process polls a run to its end. A batch is `resumable`: a server on the database adopts a running batch
whose owner is gone, fails its interrupted runs (submit.py), and submits the rows that have no run."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from datetime import datetime
from typing import Any

from .. import liveness
from ..errors import DatabaseUnavailable, NothingSent, OperationClosed
from ..ids import new_operation_id
from ..models import FAILED
from ..records import OperationRecord
from ..shapes import BatchStarted
from ..timeutil import iso
from .answers import INTERRUPTED
from .context import OPERATION_TYPE, RunContext
from .requests import BatchParams, BatchRequest
from .submit import Submitter

log = logging.getLogger(__name__)

ADOPT_EVERY_S = 5.0
WORKER_RETRY_S = 1.0  # a batch worker (or row) that hit a database error is tried again after this pause


class Batches:
    def __init__(self, context: RunContext, submitter: Submitter) -> None:
        self.context = context
        self.submitter = submitter
        self.workers: dict[str, asyncio.Task[Any]] = {}

    async def create(self, request: BatchRequest, subject: str | None = None) -> BatchStarted:
        """Record the batch and start its worker; returns the answer of run_grid_batch. The batch carries
        `subject`, and each of its runs takes it from the batch's row when it is written (store.create_child),
        whichever worker writes it: this one, or a resumer's."""
        c = self.context
        record = await c.db(
            c.store.create_batch,
            {
                "id": new_operation_id("batch", OPERATION_TYPE),
                "kind": "batch",
                "operation_type": OPERATION_TYPE,
                "total": len(request.rows),
                "inputs": request.params(),
                "grid_id": request.grid_id,
                "mode": request.mode,
                **c.owner_values(),
                "resumable": True,
                "subject": subject,
            },
            request.rows,  # stored apart (run_batch_rows): a status read never reads them
        )
        self.start_worker(record.id, resumed=False)
        return {
            "batch_operation_id": record.id,
            "status": record.status,
            "total": record.total,
            "started_at": iso(record.started_at),
            "message": "Submitting in the background; poll get_batch_status with this id every few seconds.",
        }

    def start_worker(self, batch_id: str, resumed: bool) -> None:
        task = self.context.tasks.spawn(self._worker(batch_id, resumed))
        self.workers[batch_id] = task
        task.add_done_callback(lambda _t: self.workers.pop(batch_id, None))

    async def _worker(self, batch_id: str, resumed: bool) -> None:
        while True:
            try:
                await self.run(batch_id, resumed)
                return
            except asyncio.CancelledError:
                raise
            except OperationClosed:
                return  # cancelled or ended elsewhere
            except DatabaseUnavailable as exc:
                # A passing database error (a cut connection, a timeout): pick the batch up again from the table
                # after a pause, as an adopter would, instead of leaving it idle until the lease runs out.
                log.warning("batch %s worker hit a database error, resuming it in %gs: %s", batch_id, WORKER_RETRY_S, exc)
                await asyncio.sleep(WORKER_RETRY_S)
                resumed = True
            except Exception:  # noqa: BLE001 - the adopter restarts it (it still names this process as owner)
                log.exception("batch %s worker stopped; it will be resumed", batch_id)
                return

    async def run(self, batch_id: str, resumed: bool) -> None:
        """Submit every row that has no run yet, then wait for the runs and end the batch."""
        c = self.context
        batch = await c.db(c.store.get_detail, batch_id)
        if batch is None or batch.is_terminal:
            return
        params = batch.inputs
        row_count: int = params["row_count"]  # the rows themselves are read one at a time, as they are submitted
        request = BatchParams.from_params(params)
        if resumed:
            for child in await c.db(c.store.children, batch_id, True, False):
                log.warning("batch %s row %s was interrupted during submit: marked failed", batch_id, child.row_number)
                await c.finish(child.id, FAILED, error=INTERRUPTED)
            await c.db(c.store.reconcile_batch, batch_id)
        written = await c.db(c.store.submitted_rows, batch_id)
        pending = deque(n for n in range(1, row_count + 1) if n not in written)
        if pending:
            log.info("batch %s: %d of %d rows to submit", batch_id, len(pending), row_count)
        owned = asyncio.Event()
        owned.set()

        async def beat() -> bool:
            if await c.db(c.store.heartbeat, batch_id, c.process):
                return True
            log.warning("batch %s ended or was taken over by another process: this worker stops", batch_id)
            owned.clear()  # our rows would race the new owner's resume step: submit no more
            return False

        heartbeat = c.tasks.every(c.heartbeat_every_s, beat, f"heartbeat of {batch_id}")
        failures: list[Exception] = []
        try:

            async def submit_pending() -> None:
                """One submitter: rows until none is left. A row's error stops this submitter only: a sibling's POST
                in flight must finish and be recorded, not be cancelled into "unknown"."""
                while pending and owned.is_set() and not failures:
                    number = pending.popleft()
                    try:
                        row = await self._row(batch_id, number)
                        if not await self.submitter.submit_row(batch_id, request.run(row), number):
                            pending.clear()
                    except NothingSent as exc:  # a passing database error before anything was sent
                        log.warning("batch %s row %d: %s; trying it again later", batch_id, number, exc)
                        pending.append(number)
                        await asyncio.sleep(WORKER_RETRY_S)
                    except Exception as exc:  # noqa: BLE001 - raised below, once every submitter has stopped
                        failures.append(exc)

            await asyncio.gather(*(submit_pending() for _ in range(min(request.concurrency, max(1, len(pending))))))
            if failures:
                raise failures[0]  # the worker resumes the batch (a database error) or the adopter will
            if owned.is_set():
                await self._await_runs(batch_id, row_count)
        finally:
            heartbeat.cancel()

    async def _row(self, batch_id: str, number: int) -> dict[str, str]:
        c = self.context
        try:
            return await c.db(c.store.batch_row, batch_id, number)
        except DatabaseUnavailable as exc:
            raise NothingSent(str(exc)) from None  # nothing was sent: the row can be tried again later

    async def _await_runs(self, batch_id: str, total: int) -> None:
        """Every row has been submitted (or settled): wait until every run has ended (the poller drives them),
        then end the batch. Ending it is one transaction under the batch's row lock that first counts ended runs
        missing from its items, so no run is dropped by a batch that ends while answers are still arriving."""
        c = self.context
        while True:
            batch = await c.db(c.store.get, batch_id)
            if batch is None or batch.is_terminal:
                return
            if await c.db(c.store.running_children, batch_id) == 0:
                if await c.db(c.store.finish_batch_if_done, batch_id, total) is not None:
                    return
            await asyncio.sleep(min(1.0, c.settings.poll_interval_s / 2))


class Adopter:
    """Takes over running batches whose owner process is gone: one pass per tick()."""

    def __init__(self, context: RunContext, batches: Batches) -> None:
        self.context = context
        self.batches = batches

    async def tick(self, now: datetime | None = None) -> list[str]:
        """Adopt the orphaned batches as of `now` (the database's time when None; leases are judged by the
        database's clock, one read per pass). Returns their ids. Never without an upstream."""
        c = self.context
        adopted: list[str] = []
        if not c.has_upstream:
            return adopted
        batches = await c.db(c.store.running_batches, OPERATION_TYPE)
        if not batches:
            return adopted
        if now is None:
            now = await c.db(c.store.now)
        for batch in batches:
            if batch.id in self.batches.workers or self.owner_alive(batch, now):
                continue
            if await c.db(c.store.claim_batch, batch, c.process):
                log.warning("resuming batch %s (its owner %s/%s is gone)", batch.id, batch.owner_host, batch.owner_pid)
                self.batches.start_worker(batch.id, resumed=True)
                adopted.append(batch.id)
        return adopted

    def owner_alive(self, batch: OperationRecord, now: datetime) -> bool:
        """Whether the batch's owner still runs; now is the database's time. The owner's worker must heartbeat:
        a quiet lease means gone, on any host."""
        c = self.context
        if batch.owner_host == c.process.host and batch.owner_pid == c.process.pid and (
            batch.owner_process in (None, c.process.identity)
        ):
            # Our own process but not our worker: another service in this process (its heartbeat is fresh), or a
            # worker here that crashed (heartbeat quiet).
            quiet_s = (now - batch.heartbeat_at).total_seconds() if batch.heartbeat_at is not None else float("inf")
            return quiet_s <= min(c.settings.heartbeat_lease_s, 3 * c.heartbeat_every_s)
        return liveness.holder_alive(
            batch.owner_host, batch.owner_pid, batch.owner_process, batch.heartbeat_at, now,
            c.settings.heartbeat_lease_s, here=c.process.host, lease_binds_here=True,
        )
