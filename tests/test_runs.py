"""run_grid and get_run_status: the service against the fake grid API over loopback, on a real SQLite file."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from tracker import InvalidInput, OperationNotFound, Settings, UpstreamError
from tracker.db import open_engine
from tracker.errors import UpstreamOutcomeUnknown
from tracker.remote.ratelimit import SharedRateLimiter, workspace_key
from tracker.reaper import find_orphans, recover_orphans
from tracker.remote import RunsService
from tracker.remote.poll import MAX_QUEUED_POLLS
from tracker.timeutil import iso, utcnow
from tracker.remote import RunRequest
from tracker.remote.http import HttpUpstream

from .conftest import FakeUpstreamProcess


@asynccontextmanager
async def running_service(settings: Settings, start: bool = False, **client_options: Any):
    engine = open_engine(settings)
    client = None
    if client_options:
        limiter = SharedRateLimiter(
            engine, workspace_key(settings.upstream_base, settings.upstream_key), settings.upstream_rate_per_s
        )
        client = HttpUpstream(settings.upstream_base, settings.upstream_key, limiter, **client_options)
    service = RunsService(settings, engine, client)
    if start:
        await service.start()
    try:
        yield service
    finally:
        await service.aclose()
        engine.dispose()


def _count_runs(settings: Settings) -> int:
    engine = open_engine(settings)
    with engine.connect() as conn:
        count = conn.exec_driver_sql("SELECT count(*) FROM operations").scalar()
    engine.dispose()
    return int(count)


def test_sync_run_returns_outputs_and_is_recorded(upstream_settings: Settings, fake_upstream: FakeUpstreamProcess) -> None:
    async def scenario():
        async with running_service(upstream_settings) as runs:
            answer = await runs.run_grid("g1", {"email": "a@x.io"}, mode="sync", output_columns=["enriched"])
            again = await runs.get_run_status(answer["operation_id"])
            return answer, again

    answer, again = asyncio.run(scenario())
    assert answer["mode"] == "sync" and answer["status"] == "completed" and answer["grid_id"] == "g1"
    assert answer["outputs"] == {"enriched": {"value": "g1:email=a@x.io", "name": "Enriched"}}
    assert again["outputs"] == answer["outputs"] and again["completed_at"] is not None
    assert fake_upstream.stats()["requests"] == 1  # the status came from the table


def test_run_row_is_written_before_the_upstream_answers_and_the_loop_stays_free(
    upstream_settings: Settings, fake_upstream: FakeUpstreamProcess
) -> None:
    fake_upstream.configure(run_seconds="1.2")

    async def scenario():
        async with running_service(upstream_settings) as runs:
            sync_call = asyncio.create_task(runs.run_grid("g1", {"n": "1"}, mode="sync"))
            ticks = 0
            seen = None
            while not sync_call.done():  # the event loop keeps running other work meanwhile
                ticks += 1
                if seen is None and ticks > 5:
                    with runs.engine.connect() as conn:
                        seen = conn.exec_driver_sql("SELECT status, request_id, grid_id FROM operations").all()
                await asyncio.sleep(0.02)
            return await sync_call, seen, ticks

    answer, seen_while_waiting, ticks = asyncio.run(scenario())
    assert [tuple(row) for row in seen_while_waiting] == [("running", None, "g1")]
    assert ticks > 20
    assert answer["status"] == "completed"


def _make_due(runs: RunsService) -> None:
    """As if every running run had last been polled a minute ago."""
    with runs.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE operations SET last_polled_at = ? WHERE status = 'running'",
            (iso(utcnow() - timedelta(minutes=1)),),
        )


def test_a_poll_that_would_wait_long_for_the_rate_limit_answers_from_the_table_and_polls_later(
    upstream_settings: Settings, fake_upstream: FakeUpstreamProcess
) -> None:
    """With the shared rate limit booked ahead (other processes' requests), get_run_status does not wait for a
    slot: it answers from the table at once, and the poll it claimed goes out at its slot in the background."""
    fake_upstream.configure(run_seconds="0.2")
    settings = replace(upstream_settings, poll_interval_s=3.0)  # the claim covers the wait: the poll is queued
    workspace = workspace_key(settings.upstream_base, settings.upstream_key)

    async def scenario():
        async with running_service(settings) as runs:
            started = await runs.run_grid("g1", {"n": "1"}, mode="async")
            _make_due(runs)
            booked = SharedRateLimiter(runs.engine, workspace, settings.upstream_rate_per_s)
            await booked.defer(2.0)  # as if other processes had booked the next 2 s of slots
            gets_before = fake_upstream.stats()["gets"]
            queued = await runs.get_run_status(started["request_id"])
            gets_at_answer = fake_upstream.stats()["gets"]
            again = await runs.get_run_status(started["request_id"])  # claimed already: from the table too
            await asyncio.sleep(2.6)  # the slot comes; the background poll records the end
            later = await runs.get_run_status(started["request_id"])
            return queued, gets_before, gets_at_answer, again, later, fake_upstream.stats()["gets"]

    queued, gets_before, gets_at_answer, again, later, gets_after = asyncio.run(scenario())
    assert queued["status"] == "running" and queued["stale"] is False
    assert "from tracker's table" in queued["message"] and "s ahead" in queued["message"]
    assert gets_at_answer == gets_before  # nothing sent before its slot
    assert again["status"] == "running"
    assert later["status"] == "completed" and later["outputs"]["enriched"]["value"] == "g1:n=1"
    assert gets_after == gets_before + 1  # exactly the one poll, sent in the background


def test_queued_polls_are_capped_and_a_longer_queue_is_left_to_the_poll_loop(
    upstream_settings: Settings, fake_upstream: FakeUpstreamProcess
) -> None:
    """Six concurrent calls about six due runs while the rate limit is booked 1.5 s ahead: four polls are queued
    (MAX_QUEUED_POLLS), the other two calls answer from the table without claiming a poll. With the rate limit
    booked further ahead than the poll interval, nothing is queued at all."""
    fake_upstream.configure(run_seconds="0.2")
    settings = replace(upstream_settings, poll_interval_s=3.0)
    workspace = workspace_key(settings.upstream_base, settings.upstream_key)

    async def scenario():
        async with running_service(settings) as runs:
            started = [await runs.run_grid("g1", {"n": str(n)}, mode="async") for n in range(6)]
            _make_due(runs)
            booked = SharedRateLimiter(runs.engine, workspace, settings.upstream_rate_per_s)
            await booked.defer(1.5)
            gets_before = fake_upstream.stats()["gets"]
            answers = await asyncio.gather(*(runs.get_run_status(s["request_id"]) for s in started))
            await asyncio.sleep(1.5 + 4 * 0.25)  # the four queued polls, spaced by the rate limit
            queued_gets = fake_upstream.stats()["gets"] - gets_before
            _make_due(runs)
            await booked.defer(10.0)  # longer than the poll interval
            gets_before = fake_upstream.stats()["gets"]
            late = await asyncio.gather(*(runs.get_run_status(s["request_id"]) for s in started))
            await asyncio.sleep(0.5)
            return answers, queued_gets, late, fake_upstream.stats()["gets"] - gets_before

    answers, queued_gets, late, late_gets = asyncio.run(scenario())
    assert all(a["status"] == "running" and "from tracker's table" in a["message"] for a in answers)
    assert queued_gets == MAX_QUEUED_POLLS == 4
    assert all("from tracker's table" in a["message"] for a in late if a["status"] == "running")
    assert late_gets == 0


def test_a_sync_post_longer_than_the_lease_is_not_failed_by_another_hosts_reaper(
    upstream_settings: Settings, fake_upstream: FakeUpstreamProcess
) -> None:
    """While the POST of a run is in flight the run is only its submitter's, and a reaper on another host judges
    the submitter by the row's heartbeat: the submitter keeps it fresh, so a POST longer than the lease survives."""
    fake_upstream.configure(run_seconds="2.5", sync_window=10)
    settings = replace(upstream_settings, heartbeat_lease_s=1.0)

    async def scenario():
        async with running_service(settings) as runs:
            call = asyncio.create_task(runs.run_grid("g1", {"n": "1"}, mode="sync"))
            marked = 0
            while not call.done():  # a reaper on another host, looking every 0.2 s
                await asyncio.sleep(0.2)
                orphans = find_orphans(runs.engine, settings.heartbeat_lease_s, host="another-host")
                marked += recover_orphans(runs.engine, settings.heartbeat_lease_s, orphans=orphans)
            return await call, marked

    answer, marked = asyncio.run(scenario())
    assert marked == 0
    assert answer["status"] == "completed" and answer["outputs"]["enriched"]["value"] == "g1:n=1"


def test_sync_run_beyond_the_window_returns_the_request_id(upstream_settings: Settings, fake_upstream: FakeUpstreamProcess) -> None:
    fake_upstream.configure(run_seconds="0.8", sync_window=0.2)

    async def scenario():
        async with running_service(upstream_settings) as runs:
            first = await runs.run_grid("g1", {"n": "1"}, mode="sync")
            await asyncio.sleep(0.9)
            return first, await runs.get_run_status(first["request_id"])

    first, later = asyncio.run(scenario())
    assert first["status"] == "running" and first["request_id"] and first["poll_url"].endswith(first["request_id"])
    assert later["status"] == "completed" and later["outputs"]


def test_async_run_is_polled_within_the_interval_and_terminal_runs_cost_nothing(
    upstream_settings: Settings, fake_upstream: FakeUpstreamProcess
) -> None:
    fake_upstream.configure(run_seconds="0.7")

    async def scenario():
        async with running_service(upstream_settings) as runs:
            started = await runs.run_grid("g1", {"n": "1"}, mode="async")
            request_id = started["request_id"]
            fast = [await runs.get_run_status(request_id) for _ in range(5)]  # all within one poll interval
            gets_after_fast = fake_upstream.stats()["gets"]
            while (answer := await runs.get_run_status(request_id))["status"] == "running":
                await asyncio.sleep(0.05)
            before = fake_upstream.stats()["requests"]
            ended = [await runs.get_run_status(request_id) for _ in range(5)]
            return started, fast, gets_after_fast, answer, before, ended

    started, fast, gets_after_fast, answer, before, ended = asyncio.run(scenario())
    assert started["status"] == "running" and started["mode"] == "async"
    assert all(a["status"] == "running" and a["stale"] is False for a in fast)
    assert gets_after_fast == 0  # submitted just now: the POST's answer counts as the latest poll
    assert answer["status"] == "completed" and answer["outputs"]["enriched"]["value"] == "g1:n=1"
    assert all(e == answer for e in ended)
    assert fake_upstream.stats()["requests"] == before  # zero upstream requests for an ended run
    # Polls were spaced by the interval (0.3 s) over a 0.7 s run: a handful, not one per call.
    assert 1 <= fake_upstream.stats()["gets"] <= 4


def test_idempotency_key_returns_the_existing_run_and_submits_nothing(
    upstream_settings: Settings, fake_upstream: FakeUpstreamProcess
) -> None:
    async def scenario():
        async with running_service(upstream_settings) as runs:
            together = await asyncio.gather(
                *(runs.run_grid("g1", {"n": "1"}, mode="async", idempotency_key="order-42") for _ in range(3))
            )
            later = await runs.run_grid("g1", {"n": "1"}, mode="async", idempotency_key="order-42")
            with pytest.raises(InvalidInput, match="idempotency_key was already used for a different run"):
                await runs.run_grid("g1", {"n": "2"}, mode="async", idempotency_key="order-42")
            return together, later

    together, later = asyncio.run(scenario())
    assert len({a["operation_id"] for a in together + [later]}) == 1
    assert later["replayed"] is True
    stats = fake_upstream.stats()
    assert stats["runs"] == 1 and stats["max_submissions_per_input"] == 1


BAD_RUNS = [
    ({"grid_id": ""}, "grid_id must not be empty"),
    ({"grid_id": 7}, "grid_id must be a string, not integer"),
    ({"grid_id": "g\x001"}, "grid_id contains a NUL character"),
    ({"inputs": {}}, "inputs must be a non-empty object"),
    ({"inputs": ["a"]}, "inputs must be a non-empty object"),
    ({"inputs": {"email": 5}}, r"inputs\['email'\] must be a string"),
    ({"inputs": {"email": "a\x00"}}, r"inputs\['email'\] contains a NUL character"),
    ({"mode": "fast"}, "mode must be 'sync' or 'async'"),
    ({"output_columns": "enriched"}, "output_columns must be a list"),
    ({"source_id": ""}, "source_id must not be empty"),
    ({"idempotency_key": "k" * 300}, "idempotency_key is longer than 256"),
]


def test_bad_input_is_refused_before_anything_is_written_or_sent(
    upstream_settings: Settings, fake_upstream: FakeUpstreamProcess
) -> None:
    async def scenario():
        async with running_service(upstream_settings) as runs:
            for kwargs, message in BAD_RUNS:
                with pytest.raises(InvalidInput, match=message):
                    await runs.run_grid(**{"grid_id": "g1", "inputs": {"email": "a@x.io"}, **kwargs})

    asyncio.run(scenario())
    assert _count_runs(upstream_settings) == 0
    assert fake_upstream.stats()["requests"] == 0


def test_upstream_down_gives_the_last_known_status_marked_stale(
    upstream_settings: Settings, fake_upstream: FakeUpstreamProcess
) -> None:
    fake_upstream.configure(run_seconds="30")

    async def scenario():
        async with running_service(upstream_settings, max_attempts=2, backoff_base_s=0.01) as runs:
            started = await runs.run_grid("g1", {"n": "1"}, mode="async")
            fake_upstream.configure(failure_rate=1.0, failure_status=503)
            await asyncio.sleep(upstream_settings.poll_interval_s)
            down = await runs.get_run_status(started["request_id"])
            again = await runs.get_run_status(started["request_id"])  # within the interval: from the table
            fake_upstream.configure(failure_rate=0.0, run_seconds="0")
            await asyncio.sleep(upstream_settings.poll_interval_s)
            back = await runs.get_run_status(started["request_id"])
            return down, again, back

    down, again, back = asyncio.run(scenario())
    assert down["status"] == "running" and down["stale"] is True
    assert "HTTP 503" in down["error"] and down["request_id"]
    assert again["stale"] is True and "HTTP 503" in again["error"]
    assert back["stale"] is False and "error" not in back


def test_a_request_id_started_elsewhere_is_looked_up_once_and_stored(
    upstream_settings: Settings, fake_upstream: FakeUpstreamProcess
) -> None:
    async def scenario():
        client = HttpUpstream(fake_upstream.base_url, fake_upstream.key)
        started = await client.submit_run(RunRequest("g9", {"n": "elsewhere"}, mode="async"))
        await client.aclose()
        await asyncio.sleep(0.4)  # it has completed upstream
        async with running_service(upstream_settings) as runs:
            first = await runs.get_run_status(started["request_id"])
            requests_after_first = fake_upstream.stats()["requests"]
            second = await runs.get_run_status(started["request_id"])
            with pytest.raises(OperationNotFound, match="the upstream does not know it"):
                await runs.get_run_status("no-such-request")
            return first, requests_after_first, second

    first, requests_after_first, second = asyncio.run(scenario())
    assert first["status"] == "completed" and first["grid_id"] == "g9" and first["outputs"]
    assert second == first
    assert requests_after_first == 2  # the POST elsewhere and one lookup
    assert _count_runs(upstream_settings) == 1


def test_a_lost_answer_fails_the_run_as_unknown_and_never_resubmits(
    upstream_settings: Settings, fake_upstream: FakeUpstreamProcess
) -> None:
    fake_upstream.configure(post_hang_s=1.0)

    async def scenario():
        async with running_service(upstream_settings, read_timeout_s=0.3, sync_read_timeout_s=0.3) as runs:
            with pytest.raises(UpstreamOutcomeUnknown, match="not resubmitted") as info:
                await runs.run_grid("g1", {"n": "1"}, mode="async")
            run_id = str(info.value).split(":")[0].removeprefix("run ")
            return await runs.get_run_status(run_id)

    answer = asyncio.run(scenario())
    assert answer["status"] == "failed" and answer["error"].startswith("unknown:")
    assert fake_upstream.stats()["runs"] == 1


def test_an_upstream_refusal_fails_the_run_with_status_and_excerpt(
    upstream_settings: Settings, fake_upstream: FakeUpstreamProcess
) -> None:
    settings = Settings.from_env(
        {"BITSCALE_API_BASE": fake_upstream.base_url, "BITSCALE_API_KEY": "wrong-key-123"}, db=upstream_settings.db
    )

    async def scenario():
        async with running_service(settings) as runs:
            with pytest.raises(UpstreamError) as info:
                await runs.run_grid("g1", {"n": "1"})
            return info.value

    error = asyncio.run(scenario())
    assert error.status_code == 401 and "HTTP 401" in str(error) and "wrong-key-123" not in str(error)
    assert _count_runs(settings) == 1  # the run row exists, failed, with the reason


def test_running_runs_are_polled_again_after_a_restart(upstream_settings: Settings, fake_upstream: FakeUpstreamProcess) -> None:
    fake_upstream.configure(run_seconds="0.5")

    async def first_life():
        async with running_service(upstream_settings) as runs:
            return await runs.run_grid("g1", {"n": "1"}, mode="async")

    async def second_life(request_id: str):
        async with running_service(upstream_settings, start=True) as runs:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                record = await asyncio.to_thread(runs.store.get_by_request_id, request_id)
                if record is not None and record.is_terminal:
                    return record
                await asyncio.sleep(0.1)
            return None

    started = asyncio.run(first_life())
    gets_before = fake_upstream.stats()["gets"]
    record = asyncio.run(second_life(started["request_id"]))  # nobody calls get_run_status: the poller does
    assert record is not None and record.status == "completed" and record.outputs
    assert fake_upstream.stats()["gets"] > gets_before


def test_an_upstream_that_echoes_the_key_in_a_run_error_cannot_make_tracker_keep_it(
    upstream_settings: Settings, fake_upstream: FakeUpstreamProcess
) -> None:
    fake_upstream.configure(run_failure_rate=1.0, echo_key=True, run_seconds="0.1")

    async def scenario():
        async with running_service(upstream_settings) as runs:
            started = await runs.run_grid("g1", {"n": "1"}, mode="async")
            await asyncio.sleep(upstream_settings.poll_interval_s)
            return await runs.get_run_status(started["request_id"])

    answer = asyncio.run(scenario())
    assert answer["status"] == "failed" and "(key ***)" in answer["error"]
    assert fake_upstream.key not in str(answer)
    files = [Path(upstream_settings.db), Path(upstream_settings.db + "-wal")]
    stored = b"".join(f.read_bytes() for f in files if f.exists())
    assert b"enrichment provider returned no data (key ***)" in stored
    assert fake_upstream.key.encode() not in stored
