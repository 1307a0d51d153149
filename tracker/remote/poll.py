"""Polling runs: at most one GET of a run at a time across every process (the poll claim), at most once per poll
interval, within the shared rate limit. get_run_status polls in the foreground when a slot is near, else answers
from the table and lets the poll go on in the background; the poll loop's tick() polls whatever is due."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

from ..errors import InvalidInput, OperationNotFound, TrackerError, UpstreamError
from ..ids import new_operation_id
from ..limits import ID_CHARS
from ..models import COMPLETED, FAILED, RUNNING
from ..records import EVERYONE, Viewer
from ..shapes import Run
from ..store.runs import FIRST_SEEN, RunRecord
from .answers import NO_UPSTREAM, run_answer, upstream_failure
from .context import OPERATION_TYPE, RunContext
from .requests import MODES

log = logging.getLogger(__name__)

POLLERS = 2  # concurrent background polls: leaves most of the shared rate to submissions
# A get_run_status whose poll would wait longer than this for a rate-limit slot (many runs polled at once) does
# not wait: the poll goes on in the background and the call answers at once from the table, saying so.
FOREGROUND_QUEUE_S = 0.5
MAX_QUEUED_POLLS = 4  # such background polls per process; past it a call answers from the table without one
# A claimed poll holds its run for this long, renewed while its GET is in flight: no other poll of the run goes out
# until its answer is written, even when the GET outlasts the poll interval; a poller killed mid-GET frees it soon.
POLL_CLAIM_S = 5.0
UNKNOWN_UPSTREAM = "tracker has no record of it and the upstream does not know it"


class Poller:
    def __init__(self, context: RunContext) -> None:
        self.context = context
        self._queued: set[str] = set()  # runs whose poll waits for its rate-limit slot in the background
        self._slots = asyncio.Semaphore(POLLERS)

    def answer(self, record: RunRecord, **shown: Any) -> Run:
        return run_answer(record, self.context.settings, **shown)

    async def status_of(self, record: RunRecord) -> Run:
        """get_run_status of a recorded run: from the table when it has ended (or was never accepted), else after
        a poll if one is due and this caller wins its claim."""
        c = self.context
        if record.is_terminal or record.request_id is None:
            return self.answer(record)
        if not c.has_upstream:
            return self.answer(record, stale=True, error=NO_UPSTREAM)
        try:
            queue_s = await c.upstream.queue_s()
        except TrackerError:
            queue_s = 0.0  # the poll itself will report what is wrong
        # With the rate limit booked ahead (many runs polled at once) the call answers now from the table. The poll
        # then goes out at its slot in the background, if the claim covers the whole wait (else another process
        # could claim the run meanwhile and poll it twice) and this process has few such polls waiting; otherwise
        # the background poll loop gets to the run in its turn.
        booked = queue_s > FOREGROUND_QUEUE_S
        too_many = len(self._queued) >= MAX_QUEUED_POLLS or c.tasks.closing
        if booked and (queue_s > c.settings.poll_interval_s or too_many):
            return self.answer(record, stale=record.error is not None, queued_s=queue_s)
        if booked:
            self._queued.add(record.id)  # before any await, so concurrent calls count it
        claim: str | None = None
        try:
            claim = await self._claim(record)
        finally:
            if booked and claim is None:
                self._queued.discard(record.id)
        if claim is None:
            fresh = await c.db(c.store.get, record.id) or record
            return self.answer(fresh, stale=fresh.status == RUNNING and fresh.error is not None)
        if not booked:
            return await self.poll(record, claim)
        c.tasks.spawn(self._queued_poll(record, claim))
        return self.answer(record, stale=record.error is not None, queued_s=queue_s)

    async def tick(self, now: datetime | None = None) -> int:
        """One pass of the poll loop: claim and poll the runs due at `now` (the database's time when None), at
        most POLLERS at once. Returns how many were polled."""
        c = self.context
        due = await c.db(c.store.due_for_poll, c.settings.poll_interval_s, 4 * POLLERS, now)

        async def poll_one(record: RunRecord) -> bool:
            async with self._slots:
                claim = await self._claim(record, now)
                if claim is None:
                    return False
                await self.poll(record, claim)
                return True

        polled = 0
        # Every poll runs to its end even when another fails (none is left running unsupervised); failures are
        # logged and the runs are due again at the next pass.
        for outcome in await asyncio.gather(*(poll_one(r) for r in due), return_exceptions=True):
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
            if isinstance(outcome, BaseException):
                log.warning("background poll failed: %s", outcome)
            else:
                polled += outcome
        return polled

    async def poll(self, record: RunRecord, claim: str) -> Run:
        """One GET of a run whose poll claim we hold, and its answer written (which releases the claim)."""
        c = self.context
        assert record.request_id is not None
        renewal = c.tasks.every(
            POLL_CLAIM_S / 2,
            lambda: c.db(c.store.renew_poll_claim, record.id, claim, POLL_CLAIM_S),
            f"renewing the poll claim of {record.id}",
        )
        try:
            answer = await c.upstream.run_status(record.request_id)
        except (UpstreamError, InvalidInput) as exc:
            error = str(exc)
            updated = await c.db(c.store.note_poll, record.id, error, claim)
            if updated.is_terminal:
                return self.answer(updated)
            return self.answer(updated, stale=True, error=error)
        finally:
            renewal.cancel()
        if answer is None:
            updated = await c.finish(
                record.id, FAILED, error=f"upstream no longer knows request_id {record.request_id} (HTTP 404)"
            )
        elif answer["status"] == "running":
            updated = await c.db(c.store.note_poll, record.id, None, claim)
        else:
            updated = await c.record_end(record.id, answer)
        return self.answer(updated)

    async def look_up(self, request_id: str, viewer: Viewer = EVERYONE) -> Run:
        """A request_id tracker never saw (started elsewhere): ask the upstream once and keep what it says, as the
        run of the viewer's subject. One tracker has recorded for a subject the viewer may not see is answered
        as one the upstream does not know, after the same request upstream: the same answer as for an id that
        never existed."""
        c = self.context
        if not c.has_upstream:
            raise OperationNotFound(
                "tracker has no record of it, and no upstream is configured to ask (BITSCALE_API_KEY is not set)"
            )
        try:
            answer = await c.upstream.run_status(request_id)
        except UpstreamError as exc:
            raise UpstreamError(
                f"request_id is not in tracker and the upstream could not be asked: {exc}",
                status_code=exc.status_code,
                body_excerpt=exc.body_excerpt,
            ) from None
        if answer is None:
            raise OperationNotFound(UNKNOWN_UPSTREAM)
        terminal = answer["status"] != "running"
        grid_id = answer.get("grid_id")
        values = {
            "id": new_operation_id("run", OPERATION_TYPE),
            "kind": "run",
            "operation_type": OPERATION_TYPE,
            "status": {"running": RUNNING, "completed": COMPLETED}.get(answer["status"], FAILED),
            # started_at (first seen now: it was started elsewhere) and last_polled_at are the database's now
            "completed_at": FIRST_SEEN if terminal else None,
            "request_id": request_id,
            "grid_id": grid_id[:ID_CHARS] if isinstance(grid_id, str) and grid_id else None,
            "mode": answer.get("mode") if answer.get("mode") in MODES else None,
            "outputs": answer.get("outputs") if answer["status"] == "completed" else None,
            "error": upstream_failure(answer) if answer["status"] == "failed" else None,
            "last_polled_at": FIRST_SEEN,
            "resumable": True,
        }
        found = await c.db(c.store.store_found, {**c.scrub(values), "subject": viewer.subject}, viewer)
        if found is None:
            raise OperationNotFound(UNKNOWN_UPSTREAM)
        return self.answer(found)

    async def _claim(self, record: RunRecord, now: datetime | None = None) -> str | None:
        c = self.context
        return await c.db(c.store.claim_poll, record.id, c.settings.poll_interval_s, POLL_CLAIM_S, now)

    async def _queued_poll(self, record: RunRecord, claim: str) -> None:
        try:
            await self.poll(record, claim)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - nobody awaits it: say what failed; the poll loop retries later
            log.warning("background poll of run %s failed: %s", record.id, exc)
        finally:
            self._queued.discard(record.id)
