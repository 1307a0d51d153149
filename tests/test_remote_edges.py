"""Edges of the remote-runs service found by attacking it: a database error or a stop at each step of a
submission, a batch taken over mid-run, a service without an upstream. Each test states what the durability rules
(tracker/remote/submit.py) promise."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from tracker import Settings
from tracker.db import open_engine
from tracker.errors import DatabaseUnavailable, OperationNotFound, UpstreamError
from tracker.models import RUNNING
from tracker.remote import MemoryUpstream, RunRequest, RunsService
from tracker.remote.answers import INTERRUPTED, NO_UPSTREAM


def _service(settings: Settings, upstream: Any, **changes: Any) -> RunsService:
    settings = replace(settings, **{"upstream_key": "", "poll_interval_s": 0.05, **changes})
    return RunsService(settings, open_engine(settings), upstream)


async def _wait(predicate, timeout_s: float) -> bool:  # noqa: ANN001
    for _ in range(int(timeout_s / 0.02)):
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


class SlotClaimFails(MemoryUpstream):
    """The shared rate-limit slot cannot be claimed (SharedRateLimiter raises DatabaseUnavailable)."""

    async def reserve(self):  # noqa: ANN201
        raise DatabaseUnavailable("database x: claiming an upstream rate-limit slot failed: database is locked")


def test_a_single_run_whose_slot_claim_fails_is_not_left_running(settings: Settings) -> None:
    """submit.py submit_single: DatabaseUnavailable from reserve() is not caught; the run row (written before the
    slot) keeps status running with no request_id, and nothing (poller, adopter, reaper while we live) ends it."""
    upstream = SlotClaimFails()

    async def scenario() -> Any:
        runs = _service(settings, upstream)
        try:
            with pytest.raises(DatabaseUnavailable):
                await runs.run_grid("g1", {"n": "1"}, mode="async")
            from sqlalchemy import select

            from tracker.models import Operation

            with runs.engine.connect() as conn:
                run_id = conn.execute(select(Operation.id).where(Operation.kind == "run")).scalar_one()
            return runs.store.get(run_id)
        finally:
            await runs.aclose()

    record = asyncio.run(scenario())
    assert upstream.submitted == []  # nothing was sent
    assert record.status != RUNNING, "a run that was never sent stays running forever"


class LateThenNoSlot(MemoryUpstream):
    """The row's write took long (on_time False for the first slot) and the second reserve() fails on the
    database; later reserves work again."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.reserves = 0

    async def reserve(self):  # noqa: ANN201
        self.reserves += 1
        if self.reserves == 2:
            raise DatabaseUnavailable("database x: claiming an upstream rate-limit slot failed: timeout")
        return self.reserves

    def on_time(self, slot) -> bool:  # noqa: ANN001
        return slot != 1


def test_a_db_error_while_re_reserving_keeps_the_worker_and_does_not_call_an_unsent_row_unknown(
    settings: Settings,
) -> None:
    """submit.py submit_row: the re-reserve after a late write is outside every try. Its DatabaseUnavailable leaves
    the TaskGroup of batches.run as an ExceptionGroup, which _worker's `except DatabaseUnavailable` does not
    catch: the worker stops ("worker stopped; it will be resumed") instead of retrying after WORKER_RETRY_S, and
    the adopter later fails the row INTERRUPTED ("the upstream may have received it") though it was never sent."""
    upstream = LateThenNoSlot(polls_to_finish=1)

    async def scenario() -> tuple[bool, Any, list[Any]]:
        runs = _service(settings, upstream, heartbeat_lease_s=2.0)
        await runs.start()
        try:
            started = await runs.run_grid_batch("g1", [{"n": "1"}], concurrency=1)
            batch_id = started["batch_operation_id"]
            await asyncio.sleep(0.5)
            worker_alive = batch_id in runs.batches.workers
            await _wait(lambda: runs.store.get(batch_id).is_terminal, 9.0)
            return worker_alive, runs.store.get(batch_id), runs.store.children(batch_id)
        finally:
            await runs.aclose()

    worker_alive, batch, children = asyncio.run(scenario())
    assert upstream.submitted == []  # row 1 was never sent
    errors = [c.error for c in children]
    assert worker_alive and errors != [INTERRUPTED], (
        f"worker kept after a passing database error: {worker_alive}; the unsent row's error: {errors}"
    )


class SlowPosts(MemoryUpstream):
    """Row 1 hits the re-reserve database error; row 2's POST reaches the upstream and is answered after 1 s."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.received: list[str] = []
        self.slots = 0

    async def reserve(self):  # noqa: ANN201
        self.slots += 1
        return self.slots

    def on_time(self, slot) -> bool:  # noqa: ANN001
        return slot != 1

    async def submit_run(self, request: RunRequest, slot=None):  # noqa: ANN001, ANN201
        if slot == 3:  # row 1's fresh slot never comes: the claim fails on the database
            await asyncio.sleep(0.3)
            raise DatabaseUnavailable("database x: claiming an upstream rate-limit slot failed: timeout")
        self.received.append(request.inputs["n"])  # the upstream has it (and bills it) from here
        await asyncio.sleep(1.0)
        return await super().submit_run(request, slot)


class RowOneLosesItsSlot(SlowPosts):
    """The first slot is late; the reserve() that replaces it fails on the database."""

    late = False

    async def reserve(self):  # noqa: ANN201
        if self.late:
            self.late = False
            await asyncio.sleep(0.3)
            raise DatabaseUnavailable("database x: claiming an upstream rate-limit slot failed: timeout")
        self.slots += 1
        return self.slots

    def on_time(self, slot) -> bool:  # noqa: ANN001
        if slot == 1:
            self.late = True
            return False
        return True


def test_a_db_error_in_one_row_does_not_turn_a_sibling_post_in_flight_into_unknown(settings: Settings) -> None:
    """batches.py run(): submitters share one TaskGroup, so one row's DatabaseUnavailable cancels the siblings;
    a sibling whose POST is in flight is then failed INTERRUPTED (submit_row's CancelledError path): the upstream
    has the run and bills it, and tracker has lost its request_id."""
    upstream = RowOneLosesItsSlot(polls_to_finish=1)

    async def scenario() -> list[Any]:
        runs = _service(settings, upstream)
        try:
            started = await runs.run_grid_batch("g1", [{"n": "1"}, {"n": "2"}], concurrency=2)
            batch_id = started["batch_operation_id"]
            await asyncio.sleep(2.0)
            return runs.store.children(batch_id)
        finally:
            await runs.aclose()

    children = asyncio.run(scenario())
    assert len(upstream.received) == 1  # one row's POST reached the upstream, the other never left
    sent = next(c for c in children if c.row_number == int(upstream.received[0]))
    assert sent.error != INTERRUPTED and sent.request_id is not None, (
        f"a row that reached the upstream was failed {sent.error!r} when its sibling hit a database error"
    )


def test_a_service_without_a_key_keeps_answering_from_the_table_after_a_run_grid(settings: Settings) -> None:
    """context.py has_upstream: `bool(key) or self._upstream is not None`, and the upstream property builds an
    HttpUpstream on first use even without a key. After one run_grid (refused: no key) the service believes it has
    an upstream: get_run_status claims and "polls" (writing the key-not-set error and last_polled_at into the
    row) instead of the NO_UPSTREAM table answer, and an unknown id is an UpstreamError instead of not found."""
    from sqlalchemy import update

    from tracker.models import Operation

    async def scenario() -> tuple[dict, dict, Any, Any, BaseException | None]:
        runs = RunsService(replace(settings, upstream_key="", poll_interval_s=0.05), open_engine(settings))
        try:
            run = runs.store.create(
                {"id": "run_grid_run_x", "kind": "run", "operation_type": "grid_run", "grid_id": "g1",
                 "mode": "async", "request_id": "req-1", "inputs": {}}
            )
            with runs.engine.begin() as conn:
                conn.execute(update(Operation).where(Operation.id == run.id).values(last_polled_at=None))
            before = await runs.get_run_status("req-1")
            with pytest.raises(UpstreamError):
                await runs.run_grid("g1", {"n": "1"})
            await asyncio.sleep(0.1)
            after = await runs.get_run_status("req-1")
            unknown: BaseException | None = None
            try:
                await runs.get_run_status("never-seen")
            except (OperationNotFound, UpstreamError) as exc:
                unknown = exc
            return before, after, run, runs.store.get(run.id), unknown
        finally:
            await runs.aclose()

    before, after, _run, row, unknown = asyncio.run(scenario())
    assert before["stale"] is True and before["error"] == NO_UPSTREAM
    assert after.get("error") == NO_UPSTREAM, f"answer changed after a refused run_grid: {after.get('error')!r}"
    assert row.last_polled_at is None and row.error is None, "a status read without an upstream wrote the row"
    assert isinstance(unknown, OperationNotFound), f"unknown id gave {type(unknown).__name__}"


def test_a_worker_whose_batch_was_taken_over_stops_submitting(settings: Settings) -> None:
    """batches.py: the batch heartbeat (Supervisor.every) returns False once another process owns the batch (a
    takeover after our heartbeats failed for a lease), and just stops; the worker never checks and keeps
    submitting. The new owner's resume step meanwhile fails our written-but-unanswered rows INTERRUPTED, and our
    answer for them is then dropped (mark_submitted only updates running rows): a billed run without its id."""
    from tracker.liveness import Process

    upstream = MemoryUpstream(polls_to_finish=1, submit_delay_s=0.3)

    async def scenario() -> int:
        runs = _service(settings, upstream, heartbeat_lease_s=2.0)  # heartbeat every 0.5 s
        try:
            started = await runs.run_grid_batch("g1", [{"n": str(n)} for n in range(1, 7)], concurrency=1)
            batch_id = started["batch_operation_id"]
            await _wait(lambda: len(upstream.submitted) >= 1, 3.0)
            batch = runs.store.get(batch_id)
            assert runs.store.claim_batch(batch, Process("another-host", 4242, None))
            at_takeover = len(upstream.submitted)
            await asyncio.sleep(2.5)
            return len(upstream.submitted) - at_takeover
        finally:
            await runs.aclose()

    after_takeover = asyncio.run(scenario())
    assert after_takeover <= 1, f"{after_takeover} rows submitted by a worker that no longer owns its batch"


class SlotNeverComes(MemoryUpstream):
    async def reserve(self):  # noqa: ANN201
        await asyncio.sleep(3600)


def test_a_single_run_stopped_before_its_post_is_not_sent_and_during_it_unknown(settings: Settings) -> None:
    from tracker.remote.answers import NOT_SENT

    async def scenario(upstream: MemoryUpstream) -> Any:
        runs = _service(settings, upstream)
        call = asyncio.ensure_future(runs.run_grid("g1", {"n": "1"}, mode="async"))
        await asyncio.sleep(0.3)
        await runs.aclose()
        await asyncio.gather(call, return_exceptions=True)
        from sqlalchemy import select

        from tracker.models import Operation

        with runs.engine.connect() as conn:
            return {tuple(r) for r in conn.execute(select(Operation.status, Operation.error).where(Operation.kind == "run"))}

    assert asyncio.run(scenario(SlotNeverComes())) == {("failed", NOT_SENT)}
    assert asyncio.run(scenario(MemoryUpstream(submit_delay_s=3600))) == {("failed", NOT_SENT), ("failed", INTERRUPTED)}


class LateThenSlotNeverComes(MemoryUpstream):
    reserves = 0

    async def reserve(self):  # noqa: ANN201
        self.reserves += 1
        if self.reserves == 2:
            await asyncio.sleep(3600)
        return self.reserves

    def on_time(self, slot) -> bool:  # noqa: ANN001
        return slot != 1


def test_a_batch_row_cancelled_while_re_reserving_is_settled_as_not_sent(settings: Settings) -> None:
    """submit.py submit_row: a CancelledError in the re-reserve (after the row is written, before the POST) is not
    handled: the row stays running without request_id (the old code failed it INTERRUPTED at once), and the next
    resumer fails it INTERRUPTED, "the upstream may have received it", though it was never sent (NOT_SENT)."""
    upstream = LateThenSlotNeverComes()

    async def scenario() -> list[Any]:
        runs = _service(settings, upstream)
        started = await runs.run_grid_batch("g1", [{"n": "1"}], concurrency=1)
        await _wait(lambda: upstream.reserves == 2, 3.0)
        await runs.aclose()
        return runs.store.children(started["batch_operation_id"])

    [child] = asyncio.run(scenario())
    assert upstream.submitted == []
    assert child.status != RUNNING, f"left {child.status} with request_id {child.request_id}"
