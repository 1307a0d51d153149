"""Submitting one run: its row is written, then the POST leaves; the upstream's answer is stored through passing
database errors. The order makes the row the durable record that the run was (perhaps) sent:

- A single run's row is written before its rate-limit slot is even asked for; a repeated idempotency_key returns
  that row and sends nothing.
- A batch's run for input row n is written (row_number n, unique per batch) once its slot is granted, right
  before the POST; a crash while waiting for the slot leaves no row, so the row is submitted on resume. Once
  the row exists the input row is never submitted again.
- A run whose row exists but has neither request_id nor outcome was interrupted between the write and the
  answer; the upstream offers no lookup by input, so it is failed INTERRUPTED, never resubmitted (a duplicate
  would run and bill twice)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..errors import (
    DatabaseUnavailable,
    DuplicateRun,
    InvalidInput,
    NothingSent,
    OperationClosed,
    UpstreamError,
    UpstreamOutcomeUnknown,
)
from ..ids import new_operation_id
from ..models import FAILED
from ..store.runs import RunRecord
from .answers import INTERRUPTED, NOT_SENT
from .context import OPERATION_TYPE, RunContext
from .upstream import RunRequest

log = logging.getLogger(__name__)


def run_values(request: RunRequest, context: RunContext, **extra: Any) -> dict[str, Any]:
    return {
        "id": new_operation_id("run", OPERATION_TYPE),
        "kind": "run",
        "operation_type": OPERATION_TYPE,
        "inputs": request.params(),
        "grid_id": request.grid_id,
        "mode": request.mode,
        **context.owner_values(),
        **extra,
    }


class Submitter:
    def __init__(self, context: RunContext) -> None:
        self.context = context

    async def submit_single(self, record: RunRecord, request: RunRequest) -> RunRecord:
        """POST a run whose row exists, and store the answer. Until the upstream answers, the run is this process's
        alone; a sync POST can last 120 s, longer than the heartbeat lease by which reapers on other hosts judge
        its owner, so the heartbeat is kept fresh meanwhile."""
        c = self.context
        heartbeat = c.tasks.every(
            c.heartbeat_every_s, lambda: c.db(c.store.heartbeat, record.id, c.process), f"heartbeat of {record.id}"
        )
        sent = False
        try:
            slot = await c.upstream.reserve()
            sent = True  # from here the POST may have left
            answer = await c.upstream.submit_run(request, slot)
        except asyncio.CancelledError:
            # Stopped while waiting for its rate-limit slot, it was never sent: say so, not "unknown".
            c.finish_now(record.id, FAILED, error=INTERRUPTED if sent else NOT_SENT)
            raise
        except DatabaseUnavailable:  # a rate-limit slot could not be claimed, for the POST or a retry the upstream
            # had not acted on (429, 503, no connection): nothing runs upstream
            await c.persist(lambda: c.finish(record.id, FAILED, error=NOT_SENT))
            raise
        except UpstreamOutcomeUnknown as exc:
            unknown = f"unknown: {exc}"
            await c.persist(lambda: c.finish(record.id, FAILED, error=unknown))
            raise UpstreamOutcomeUnknown(
                f"run {record.id}: {exc}", status_code=exc.status_code, body_excerpt=exc.body_excerpt
            ) from None
        except UpstreamError as exc:
            refused = str(exc)
            await c.persist(lambda: c.finish(record.id, FAILED, error=refused))
            raise UpstreamError(
                f"run {record.id} was not accepted: {exc}", status_code=exc.status_code, body_excerpt=exc.body_excerpt
            ) from None
        except InvalidInput as exc:  # the upstream settings are unusable: nothing was sent
            unusable = str(exc)
            await c.persist(lambda: c.finish(record.id, FAILED, error=unusable))
            raise
        finally:
            heartbeat.cancel()
        return await c.persist(lambda: c.record_submission(record, answer))

    async def submit_row(self, batch_id: str, request: RunRequest, number: int) -> bool:
        """Submit input row `number` of a batch. True when the row is settled (submitted now, or already had a
        run); False when the batch takes no more rows. NothingSent when nothing was sent and the row can be
        tried again."""
        c = self.context
        values = run_values(request, c, row_number=number, resumable=True)  # its batch's resumer settles it
        try:
            try:
                slot = await c.upstream.reserve()
            except DatabaseUnavailable as exc:
                raise NothingSent(str(exc)) from None
            child = await self._write_row(batch_id, values)
        except OperationClosed:
            return False
        except DuplicateRun:
            return True  # this row already has a run: never submit it again
        except (UpstreamError, InvalidInput) as exc:  # no slot (no key, a bad base URL): nothing was sent
            return await self._record_unsent(batch_id, values, str(exc))
        if not c.upstream.on_time(slot):
            # Writing the row took long (a slow database): sent now, it would crowd the next slot's request into
            # the same second. Wait for a fresh slot; stopped meanwhile, the row was never sent, and says so.
            try:
                slot = await c.upstream.reserve()
            except BaseException:
                c.finish_now(child.id, FAILED, error=NOT_SENT)
                raise
        try:
            answer = await c.upstream.submit_run(request, slot)
        except asyncio.CancelledError:
            c.finish_now(child.id, FAILED, error=INTERRUPTED)
            raise
        except (UpstreamError, InvalidInput) as exc:
            error = f"unknown: {exc}" if isinstance(exc, UpstreamOutcomeUnknown) else str(exc)
            await c.persist(lambda: c.finish(child.id, FAILED, error=error))
            return True
        await c.persist(lambda: c.record_submission(child, answer))
        return True

    async def _record_unsent(self, batch_id: str, values: dict[str, Any], error: str) -> bool:
        """The row could not be sent at all: its run is recorded failed with the reason."""
        c = self.context
        try:
            child = await self._write_row(batch_id, values)
        except OperationClosed:
            return False
        except DuplicateRun:
            return True
        await c.persist(lambda: c.finish(child.id, FAILED, error=error))
        return True

    async def _write_row(self, batch_id: str, values: dict[str, Any]) -> RunRecord:
        c = self.context
        try:
            return await c.db(c.store.create_child, batch_id, values)
        except DatabaseUnavailable as exc:
            raise NothingSent(str(exc)) from None  # nothing was sent: the row can be tried again later
