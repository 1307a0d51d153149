"""Nothing counted twice, nothing lost, when processes race or a reply is lost: idempotent group writes (a COMMIT
whose reply a real TCP proxy drops), exactly-once run finishes and reconciles on PostgreSQL's default isolation as
on SQLite, poll claims that hold while a GET outlasts the poll interval, and orphan recovery in chunks."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import event, select, update

from tracker import DatabaseUnavailable, Settings, Tracker
from tracker.db import open_engine, write_connection
from tracker.errors import OperationClosed, OperationNotFound
from tracker.remote.ratelimit import SharedRateLimiter, workspace_key
from tracker.reaper import find_orphans, purge, recover_orphans
from tracker.remote import RunRequest, RunsService
from tracker.store import Store
from tracker.store.operations import COPY_FROM_ITEMS
from tracker.store.reaping import ReapingStore
from tracker.store.runs import RunStore
from tracker.timeutil import utcnow
from tracker.remote.http import HttpUpstream

from .reap_helpers import ITEMS, OPS, set_times
from .tcp_proxy import TcpProxy

pytestmark = pytest.mark.timeout(120)

_names = itertools.count()


@contextmanager
def _through_proxy(postgres_server, name: str):  # noqa: ANN001, ANN202
    """A migrated PostgreSQL database and a Tracker on it through a TcpProxy that can cut its connections, with no
    time-based flush or heartbeat (every write of the test is its own): (proxy, tracker)."""
    url = postgres_server.create_database(f"{name}_{next(_names)}")
    Tracker(Settings.from_env({}, db=url)).close()  # migrated directly, not through the proxy
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with TcpProxy("127.0.0.1", port) as proxy:
        through = url.replace(f":{port}/", f":{proxy.port}/")
        with Tracker(Settings.from_env({}, db=through, flush_interval_s=3600.0, heartbeat_lease_s=3600.0)) as tracker:
            yield proxy, tracker


def _mock_settings(settings: Settings, **overrides: Any) -> Settings:
    """The test's database with an upstream configured (key "k"); requests go to _mock_service's handler."""
    return Settings.from_env(
        {"BITSCALE_API_KEY": "k", "BITSCALE_API_BASE": "http://127.0.0.1:9/api"}, db=settings.db, **overrides
    )


@asynccontextmanager
async def _mock_service(settings: Settings, handler: Any, rate_per_s: float = 50.0):
    """A RunsService on the test's database whose upstream is an httpx.MockTransport handler (key "k")."""
    engine = open_engine(settings)
    limiter = SharedRateLimiter(engine, workspace_key(settings.upstream_base, "k"), rate_per_s)
    client = HttpUpstream(settings.upstream_base, "k", limiter, transport=httpx.MockTransport(handler))
    runs = RunsService(settings, engine, client)
    try:
        yield runs
    finally:
        await runs.aclose()
        engine.dispose()


def _counts(engine, operation_id: str) -> tuple[int, int, int]:
    """(succeeded_count, failed_count, item rows) of one operation, read back from the database."""
    with engine.connect() as conn:
        succeeded, failed = conn.execute(
            select(OPS.c.succeeded_count, OPS.c.failed_count).where(OPS.c.id == operation_id)
        ).one()
        rows = conn.execute(select(ITEMS.c.seq).where(ITEMS.c.operation_id == operation_id)).all()
    return succeeded, failed, len(rows)


# -- idempotent group writes ------------------------------------------------------------------------------------


def test_a_commit_whose_reply_is_lost_is_applied_once(postgres_server) -> None:
    """The proxy lets the flush's COMMIT reach PostgreSQL and drops the reply: the flush raises and keeps its
    group; the retry must find it applied instead of writing it again (the old code wrote 400 rows for 300)."""
    with _through_proxy(postgres_server, "lost_commit") as (proxy, tracker):
        batch = tracker.start_batch("import", total=300)
        for group in range(3):
            for n in range(100):
                batch.record_success(f"item-{group}-{n}")
            if group == 1:
                proxy.cut_after_commit()
                with pytest.raises(DatabaseUnavailable):
                    batch.flush()
                assert proxy.commits_cut == 1
            batch.flush()  # the retry (group 1) or the plain flush
        assert batch.durable_count == 300
        batch.finish()
        assert _counts(tracker.engine, batch.id) == (300, 0, 300)
        assert tracker.get(batch.id).status == "completed"


def test_a_start_whose_commit_reply_is_lost_goes_on_with_the_operation_it_made(postgres_server) -> None:
    """start_batch's COMMIT reaches PostgreSQL and its reply is lost: the operation exists, so the call returns it
    (raising would make a caller that retries start a second operation: a batch tool answering an error for a
    batch that runs)."""
    with _through_proxy(postgres_server, "lost_create") as (proxy, tracker):
        tracker.get("warm-up")  # the pool's connection is open before the cut is armed
        proxy.cut_after_commit()
        batch = tracker.start_batch("import", total=1)
        assert proxy.commits_cut == 1
        batch.record_success("a")
        batch.finish()
        assert [r.id for r in tracker.list()] == [batch.id]
        assert _counts(tracker.engine, batch.id) == (1, 0, 1)


def test_a_finish_whose_commit_reply_is_lost_is_given_back_on_retry(postgres_server) -> None:
    """finish()'s COMMIT is applied and its reply lost: it raises, and the retry gets the end it made, not
    'already completed' (the simulation's recorder on the lossy host saw that)."""
    with _through_proxy(postgres_server, "lost_finish") as (proxy, tracker):
        batch = tracker.start_batch("import", total=2)
        batch.record_success("a")
        batch.flush()
        other = tracker.attach(batch.id)
        proxy.cut_after_commit()
        with pytest.raises(DatabaseUnavailable):
            batch.finish()
        assert proxy.commits_cut == 1
        record = batch.finish()  # the retry
        assert (record.status, record.completed) == ("completed", 1)
        with pytest.raises(OperationClosed):  # another writer's finish is still refused
            other.finish()


def test_a_group_applied_twice_changes_nothing_the_second_time(backend_tracker: Tracker) -> None:
    """The same check on both backends at the store: a group number already applied for its writer is skipped."""
    batch = backend_tracker.start_batch("import", total=4)
    store: Store = backend_tracker.store
    items = [(batch.id, True, "a", None, None), (batch.id, False, "b", 2, "bad")]
    assert store.append_items(batch.id, items, batch.writer_id, 1) is True
    assert store.append_items(batch.id, items, batch.writer_id, 1) is False  # the retry after a lost reply
    assert _counts(backend_tracker.engine, batch.id) == (1, 1, 2)
    assert store.append_items(batch.id, items, batch.writer_id, 2) is True  # the next group goes in
    assert _counts(backend_tracker.engine, batch.id) == (2, 2, 4)


def test_a_group_large_enough_for_copy_is_applied_once_too(backend_tracker: Tracker) -> None:
    """From COPY_FROM_ITEMS items a group goes in with COPY on PostgreSQL: the same guards, in the same transaction."""
    batch = backend_tracker.start_batch("import")
    store: Store = backend_tracker.store
    items = [  # records.NewItem rows, as a handle buffers them
        (batch.id, int(n % 3 != 0), f"item-{n}", None if n % 3 else n + 1, None if n % 3 else "bad")
        for n in range(COPY_FROM_ITEMS)
    ]
    failed = sum(1 for item in items if not item[1])
    assert store.append_items(batch.id, items, batch.writer_id, 1) is True
    assert store.append_items(batch.id, items, batch.writer_id, 1) is False
    assert _counts(backend_tracker.engine, batch.id) == (len(items) - failed, failed, len(items))
    assert [i.item_id for i in store.items(batch.id, False)] == [i[2] for i in items if not i[1]]
    backend_tracker.cancel(batch.id)
    with pytest.raises(OperationClosed):  # terminal: the group is refused whole, COPY or not
        store.append_items(batch.id, items, batch.writer_id, 2)
    assert _counts(backend_tracker.engine, batch.id)[2] == len(items)


def test_a_copy_on_a_cut_connection_keeps_its_group_for_the_retry(postgres_server) -> None:
    """The connection dies as a flush's COPY starts: the error is the usual DatabaseUnavailable (SQLAlchemy saw
    the disconnect, the connection left the pool), the group stays, and the retry writes it once."""
    with _through_proxy(postgres_server, "cut_copy") as (proxy, tracker):
        batch = tracker.start_batch("import", total=200)
        for n in range(200):
            batch.record_success(f"item-{n}")
        armed = [True]

        @event.listens_for(tracker.engine, "before_cursor_execute")
        def cut(_conn, _cursor, statement, *_args) -> None:  # noqa: ANN001
            if statement.startswith("COPY ") and armed:  # then tracker runs the COPY on the dead connection
                armed.clear()
                assert proxy.cut_all() == 1

        with pytest.raises(DatabaseUnavailable):
            batch.flush()
        assert not armed and batch.durable_count == 0
        assert batch.flush() == 200  # the same group, on a new connection
        batch.finish()
        assert _counts(tracker.engine, batch.id) == (200, 0, 200)


# -- exactly-once run finishes ----------------------------------------------------------------------------------


def _batch_with_runs(engine, runs: int) -> tuple[str, list[str]]:
    store = Store(engine)
    batch = store.create_operation(
        {"id": f"batch_race_{next(_names)}", "kind": "batch", "operation_type": "grid_run", "total": runs,
         "started_at": utcnow(), "resumable": True}
    )
    run_store = RunStore(engine)
    ids = []
    for n in range(1, runs + 1):
        child = run_store.create_child(
            batch.id,
            {"id": f"run_race_{next(_names)}", "kind": "run", "operation_type": "grid_run", "started_at": utcnow(),
             "row_number": n, "resumable": True},
        )
        ids.append(child.id)
    return batch.id, ids


def _race(*calls: Any) -> None:
    barrier = threading.Barrier(len(calls))
    errors: list[BaseException] = []

    def run(call: Any) -> None:
        barrier.wait()
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors


def test_a_run_finished_by_two_pollers_at_once_is_counted_once(backend_settings: Settings) -> None:
    """Two processes polling one run to its end at the same moment: one end, one item in its batch. On
    PostgreSQL's READ COMMITTED the old read-then-update counted it twice in most trials."""
    engine = open_engine(backend_settings)
    run_store = RunStore(engine)
    trials = 40
    batch_id, runs = _batch_with_runs(engine, trials)
    for run_id in runs:
        _race(*(lambda: run_store.finish(run_id, "completed", utcnow(), {"out": {"value": 1}}) for _ in range(2)))
    assert _counts(engine, batch_id) == (trials, 0, trials)
    engine.dispose()


def test_two_reconcilers_count_an_uncounted_run_once(backend_settings: Settings) -> None:
    """Runs ended by a process that did not know their batch (an orphan reaper) are counted by whichever batch
    worker reconciles first; two at once must not both count them."""
    engine = open_engine(backend_settings)
    run_store = RunStore(engine)
    batch_id, runs = _batch_with_runs(engine, 10)
    with write_connection(engine) as conn:  # ended without being counted in the batch
        conn.execute(update(OPS).where(OPS.c.id.in_(runs)).values(status="failed", error="interrupted"))
    _race(*(lambda: run_store.reconcile_batch(batch_id) for _ in range(3)))
    assert _counts(engine, batch_id) == (0, 10, 10)
    engine.dispose()


def test_a_batch_ends_only_with_every_run_counted(backend_settings: Settings) -> None:
    """The batch's end races with its last runs' ends: whichever order, the batch that ends has counted them."""
    engine = open_engine(backend_settings)
    run_store = RunStore(engine)
    for _ in range(10):
        batch_id, (first, last) = _batch_with_runs(engine, 2)
        run_store.finish(first, "completed", None, {"v": 1})
        _race(
            lambda: run_store.finish(last, "completed", None, {"v": 2}),
            lambda: run_store.finish_batch_if_done(batch_id, 2),
        )
        run_store.finish_batch_if_done(batch_id, 2)  # the worker's next look, if the race left it running
        batch = run_store.get(batch_id)
        assert batch.status == "completed" and _counts(engine, batch_id) == (2, 0, 2)
    engine.dispose()


# -- poll claims ----------------------------------------------------------------------------------------------


def test_a_claimed_poll_holds_while_its_get_outlasts_the_poll_interval(settings: Settings) -> None:
    """A status GET that takes longer than the poll interval: a second get_run_status meanwhile must not poll
    the same run again (the old claim lapsed after the interval, and the run was polled twice)."""
    settings = _mock_settings(settings, poll_interval_s=0.2)
    gets = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal gets
        if request.method == "POST":
            return httpx.Response(200, json={"mode": "async", "status": "running", "request_id": "r-1"})
        gets += 1
        await asyncio.sleep(1.5)  # outlasts the poll interval several times over
        return httpx.Response(200, json={"mode": "async", "status": "running", "grid_id": "g"})

    async def scenario() -> tuple[dict, dict]:
        async with _mock_service(settings, handler) as runs:
            await runs.run_grid("g", {"email": "a@x.io"}, mode="async")
            await asyncio.sleep(0.3)
            slow = asyncio.create_task(runs.get_run_status("r-1"))
            await asyncio.sleep(0.6)  # past the poll interval, while the first GET is still in flight
            second = await runs.get_run_status("r-1")
            return await slow, second

    first, second = asyncio.run(scenario())
    assert first["status"] == second["status"] == "running"
    assert gets == 1


# -- orphan recovery in chunks -----------------------------------------------------------------------------------


def test_orphan_recovery_works_in_short_transactions(tracker: Tracker) -> None:
    """2,500 orphans are failed in transactions of at most 500 (the old code held the write lock for one
    transaction over all of them: ~8 s for 40,000)."""
    ids = []
    with write_connection(tracker.engine) as conn:
        now = utcnow()
        rows = [
            {"id": f"batch_orphan_{n:05d}", "kind": "batch", "operation_type": "import", "status": "running",
             "total": 0, "succeeded_count": 0, "failed_count": 0, "started_at": now, "updated_at": now,
             "heartbeat_at": now, "owner_host": "gone-host", "owner_pid": 1, "resumable": False}
            for n in range(2500)
        ]
        conn.execute(OPS.insert(), rows)
        ids = [row["id"] for row in rows]
    for operation_id in ids[:1]:
        set_times(tracker.engine, operation_id, heartbeat_at=now)
    commits = 0

    def count(_conn: Any) -> None:
        nonlocal commits
        commits += 1

    event.listen(tracker.engine, "commit", count)
    try:
        later = now.replace(year=now.year + 1)
        assert recover_orphans(tracker.engine, lease_s=60, now=later) == 2500
    finally:
        event.remove(tracker.engine, "commit", count)
    assert commits >= 5
    with tracker.engine.connect() as conn:
        statuses = {s for (s,) in conn.execute(select(OPS.c.status).where(OPS.c.id.in_(ids)))}
    assert statuses == {"failed"}


def test_a_run_stopped_before_its_slot_came_is_not_called_unknown(settings: Settings) -> None:
    """A server stopped while a run waits for its rate-limit slot (booked far ahead by a 429) never sent it: the
    run says it was not submitted, not 'unknown: the upstream may have received it'."""
    settings = _mock_settings(settings)
    posts = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal posts
        posts += 1
        return httpx.Response(200, json={"mode": "sync", "status": "completed", "outputs": {}})

    async def scenario() -> str:
        engine = open_engine(settings)
        limiter = SharedRateLimiter(engine, workspace_key(settings.upstream_base, "k"), 5.0)
        await limiter.defer(60)  # the upstream said Retry-After: 60
        client = HttpUpstream(settings.upstream_base, "k", limiter, transport=httpx.MockTransport(handler))
        runs = RunsService(settings, engine, client)
        call = asyncio.create_task(runs.run_grid("g", {"email": "a@x.io"}, mode="sync"))
        await asyncio.sleep(0.5)
        await runs.aclose()
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
        with engine.connect() as conn:
            error = conn.execute(select(OPS.c.error).where(OPS.c.kind == "run")).scalar_one()
        engine.dispose()
        return error

    error = asyncio.run(scenario())
    assert posts == 0
    assert error.startswith("not submitted") and "unknown" not in error


# -- review findings: lock order, claim tokens, writers that come and go ------------------------------------------


def test_flushes_racing_a_cancel_and_a_purge_never_deadlock(postgres_server) -> None:
    """Every write path locks the operation row before its writer rows: flushes of two writers, a cancel from a
    third process and a purge with retention 0 from a fourth, raced over many batches, end without a deadlock
    (the first version locked the writer row first and deadlocked with the purge)."""
    url = postgres_server.create_database(f"lock_order_{next(_names)}")
    settings = Settings.from_env({}, db=url, flush_interval_s=3600.0, heartbeat_lease_s=3600.0)
    trackers = [Tracker(settings) for _ in range(4)]
    starter, attacher, canceller, reaper = trackers
    failures: list[str] = []

    def record(handle: Any, tag: str) -> None:
        for n in range(100_000):
            try:
                handle.record_success(f"{tag}{n}")
                handle.flush()
            except (OperationClosed, OperationNotFound):
                return
            except Exception as exc:  # noqa: BLE001 - a deadlock or anything else is the failure
                failures.append(str(exc)[:120])
                return

    try:
        for _ in range(40):
            batch = starter.start_batch("import")
            other = attacher.attach(batch.id)
            writers = [threading.Thread(target=record, args=(h, t)) for h, t in ((batch, "a"), (other, "b"))]
            for thread in writers:
                thread.start()
            stop = threading.Event()

            def purging() -> None:
                while not stop.is_set():
                    try:
                        purge(reaper.engine, 0.0)
                    except Exception as exc:  # noqa: BLE001
                        failures.append(str(exc)[:120])
                        return

            purger = threading.Thread(target=purging)
            purger.start()
            canceller.cancel(batch.id)
            for thread in writers:
                thread.join(timeout=60)
            stop.set()
            purger.join(timeout=60)
    finally:
        for opened in trackers:
            opened.close()
    assert failures == []


def test_a_poll_claim_is_released_and_renewed_only_by_its_holder(backend_settings: Settings) -> None:
    """A claim that lapsed (its holder's renewal was late) and was taken by another poller is not renewed or
    released by the first holder, so a third poller cannot claim while the second's GET is in flight."""
    engine = open_engine(backend_settings)
    run_store = RunStore(engine)
    _, (run_id,) = _batch_with_runs(engine, 1)
    with write_connection(engine) as conn:
        conn.execute(update(OPS).where(OPS.c.id == run_id).values(request_id=f"r-{run_id}"))
    first = run_store.claim_poll(run_id, 0.0, hold_s=0.2)
    assert first is not None and run_store.claim_poll(run_id, 0.0, hold_s=5) is None
    time.sleep(0.3)  # the first holder's claim lapses
    second = run_store.claim_poll(run_id, 0.0, hold_s=5)
    assert second is not None
    assert run_store.renew_poll_claim(run_id, first, 5) is False
    run_store.note_poll(run_id, None, first)  # the first GET's answer arrives: it releases nothing of the second's
    assert run_store.claim_poll(run_id, 0.0, hold_s=5) is None
    assert run_store.renew_poll_claim(run_id, second, 5) is True
    run_store.note_poll(run_id, None, second)
    assert run_store.claim_poll(run_id, 0.0, hold_s=5) is not None
    engine.dispose()


def test_attaching_just_after_a_reaper_judged_the_batch_keeps_it(backend_tracker: Tracker) -> None:
    """The reaper judged the batch an orphan (its starter gone elsewhere); a worker attaches before the mark: the
    mark is refused, since attaching is a sign of life."""
    batch = backend_tracker.start_batch("import")
    past = utcnow().replace(year=2000)
    set_times(backend_tracker.engine, batch.id, owner_host="gone-host", owner_pid=1, heartbeat_at=past)
    judged = [o.operation for o in find_orphans(backend_tracker.engine, 60)]
    assert [o.id for o in judged] == [batch.id]
    worker = backend_tracker.attach(batch.id)
    assert ReapingStore(backend_tracker.engine).mark_failed(judged, "interrupted: owner process exited") == 0
    worker.record_success("a")
    worker.finish()
    assert backend_tracker.get(batch.id).status == "completed"


def test_a_detached_writer_no_longer_keeps_the_batch_alive(tracker: Tracker) -> None:
    """A live process that attached, recorded its share and detached does not pin the batch: once the starter is
    gone too, the batch is an orphan. Tracker.close() detaches the same way."""
    batch = tracker.start_batch("import")
    worker = tracker.attach(batch.id)
    worker.record_success("its share")
    worker.detach()
    with pytest.raises(Exception):
        worker.record_success("after detaching")
    set_times(tracker.engine, batch.id, owner_host="gone-host", owner_pid=1)  # the starter's process is gone
    later = utcnow().replace(year=utcnow().year + 1)
    assert recover_orphans(tracker.engine, lease_s=60, now=later) == 1
    assert _counts(tracker.engine, batch.id) == (1, 0, 1)


def test_a_handle_whose_operation_was_purged_closes_instead_of_retrying(tracker: Tracker) -> None:
    """Its pending group can never land: the handle closes with OperationNotFound, and the flusher stops."""
    batch = tracker.start_batch("import")
    other = tracker.attach(batch.id)
    other.record_success("x")
    batch.cancel()
    with write_connection(tracker.engine) as conn:
        conn.execute(OPS.delete().where(OPS.c.id == batch.id))
    with pytest.raises(OperationNotFound):
        other.flush()
    assert other.closed
    with pytest.raises(OperationNotFound):
        other.record_success("y")


def test_a_post_made_late_by_a_slow_row_write_waits_for_a_fresh_slot(settings: Settings) -> None:
    """A batch row is written right before its POST leaves; when that write is slow (a far or lossy database), the
    POST would leave past its slot and crowd the next request into the same second: it takes a fresh slot."""
    settings = _mock_settings(settings)

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"mode": "async", "status": "running", "request_id": "r-" + json.loads(request.content)["inputs"]["n"]})

    class Counting(SharedRateLimiter):
        claims = 0

        async def acquire(self):  # noqa: ANN201
            Counting.claims += 1
            return await super().acquire()

    async def scenario() -> None:
        engine = open_engine(settings)
        limiter = Counting(engine, workspace_key(settings.upstream_base, "k"), 5.0)
        client = HttpUpstream(settings.upstream_base, "k", limiter, transport=httpx.MockTransport(handler))

        runs = RunsService(settings, engine, client)
        batch = Store(runs.engine).create_operation(
            {"id": "batch_grid_run_late", "kind": "batch", "operation_type": "grid_run", "total": 2, "inputs": {}}
        )
        quick_write = runs.store.create_child

        def slow_write(*args):  # noqa: ANN001, ANN202
            time.sleep(0.3)  # longer than the slot's tolerance
            return quick_write(*args)

        try:
            assert await runs.submitter.submit_row(batch.id, RunRequest("g", {"n": "1"}, "async"), 1)
            # One claim on a quiet machine; a loaded one can make even the quick write miss the 60 ms tolerance.
            quick_claims = Counting.claims
            runs.store.create_child = slow_write
            assert await runs.submitter.submit_row(batch.id, RunRequest("g", {"n": "2"}, "async"), 2)
            assert Counting.claims - quick_claims >= 2  # the late slot was given up for a fresh one
        finally:
            await runs.aclose()
            engine.dispose()

    asyncio.run(scenario())


def test_a_database_error_in_the_first_adoption_pass_leaves_the_loops_running(settings: Settings) -> None:
    """RunsService.start() on a database that fails for a moment: the poll and adopt loops still run (a server
    that hit it once used to poll and resume nothing for the rest of its life)."""
    from sqlalchemy.exc import OperationalError

    settings = _mock_settings(settings, poll_interval_s=0.2)
    gets = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal gets
        if request.method == "POST":
            return httpx.Response(200, json={"mode": "async", "status": "running", "request_id": "r-9"})
        gets += 1
        return httpx.Response(200, json={"mode": "async", "status": "completed", "grid_id": "g", "outputs": {}})

    async def scenario() -> str:
        async with _mock_service(settings, handler) as runs:
            real = runs.store.running_batches

            def failing_once(operation_type: str):  # noqa: ANN202
                runs.store.running_batches = real
                raise OperationalError("SELECT", {}, Exception("server closed the connection unexpectedly"))

            runs.store.running_batches = failing_once
            await runs.run_grid("g", {"email": "a@x.io"}, mode="async")
            await runs.start()  # must not raise, must start the loops
            for _ in range(100):  # only the background poll loop polls it: nobody calls get_run_status
                record = await asyncio.to_thread(runs.store.get_by_request_id, "r-9")
                if record.status == "completed":
                    break
                await asyncio.sleep(0.1)
            return record.status

    assert asyncio.run(scenario()) == "completed"
    assert gets >= 1


def test_passing_database_errors_around_a_rows_post_lose_no_row(settings: Settings) -> None:
    """A database error while writing a row's run (before its POST) puts the row back in the queue; one while
    recording the upstream's answer (after it) is retried: every row ends completed, none 'unknown' (the worker
    used to stop, failing the rows in flight as 'unknown: interrupted during submit')."""
    from sqlalchemy.exc import OperationalError

    settings = _mock_settings(settings, poll_interval_s=0.2)
    posts = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal posts
        if request.method == "POST":
            posts += 1
            return httpx.Response(200, json={"mode": "async", "status": "running", "request_id": f"r-{posts}"})
        return httpx.Response(200, json={"mode": "async", "status": "completed", "grid_id": "g", "outputs": {}})

    def fail_once(real):  # noqa: ANN001, ANN202
        state = {"calls": 0}

        def wrapper(*args):  # noqa: ANN002, ANN202
            state["calls"] += 1
            if state["calls"] == 2:
                raise OperationalError("INSERT", {}, Exception("server closed the connection unexpectedly"))
            return real(*args)

        return wrapper

    async def scenario() -> tuple[Any, list[Any]]:
        async with _mock_service(settings, handler) as runs:
            runs.store.create_child = fail_once(runs.store.create_child)
            runs.store.mark_submitted = fail_once(runs.store.mark_submitted)
            await runs.start()
            started = await runs.run_grid_batch("g", [{"n": str(n)} for n in range(5)], concurrency=1)
            batch_id = started["batch_operation_id"]
            for _ in range(150):
                batch = await asyncio.to_thread(runs.store.get, batch_id)
                if batch.is_terminal:
                    break
                await asyncio.sleep(0.1)
            children = await asyncio.to_thread(runs.store.children, batch_id)
            return batch, children

    batch, children = asyncio.run(scenario())
    assert (batch.status, batch.succeeded_count, batch.failed_count) == ("completed", 5, 0)
    assert sorted(c.row_number for c in children) == [1, 2, 3, 4, 5]
    assert all(c.status == "completed" for c in children) and posts == 5
