"""The upstream client and the shared rate limit, against the fake grid API over loopback."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tracker import InvalidInput, Settings, UpstreamError
from tracker.db import open_engine
from tracker.errors import UpstreamOutcomeUnknown
from tracker.remote import RunRequest
from tracker.remote.http import HttpUpstream, check_base_url, retry_after_seconds
from tracker.remote.ratelimit import SharedRateLimiter, workspace_key
from tracker.testing.env import child_env

from .conftest import PYTHON, FakeUpstreamProcess


def _client(fake: FakeUpstreamProcess, key: str | None = None, limiter=None, **options) -> HttpUpstream:
    return HttpUpstream(fake.base_url, fake.key if key is None else key, limiter, **options)


async def _with(client: HttpUpstream, coro):
    try:
        return await coro
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "base", ["ftp://api.example.com/v1", "", "   ", "file:///etc/passwd", "http://", "api.bitscale.ai/api/v1"]
)
def test_only_http_and_https_base_urls(base: str) -> None:
    with pytest.raises(InvalidInput, match="BITSCALE_API_BASE must be an http:// or https:// URL"):
        HttpUpstream(base, "k")


def test_base_url_error_does_not_echo_credentials() -> None:
    with pytest.raises(InvalidInput) as info:
        check_base_url("ftp://user:s3cret@example.com/")
    assert "s3cret" not in str(info.value)
    assert check_base_url("https://api.bitscale.ai/api/v1/") == "https://api.bitscale.ai/api/v1"


def test_both_endpoints(fake_upstream: FakeUpstreamProcess) -> None:
    async def scenario():
        client = _client(fake_upstream)
        try:
            done = await client.submit_run(RunRequest("g1", {"email": "a@x.io"}, mode="sync", output_columns=["enriched"]))
            started = await client.submit_run(RunRequest("g1", {"email": "b@x.io"}, mode="async", source_id="crm"))
            first = await client.run_status(started["request_id"])
            await asyncio.sleep(0.4)
            later = await client.run_status(started["request_id"])
            missing = await client.run_status("00000000-0000-0000-0000-000000000000")
            return done, started, first, later, missing
        finally:
            await client.aclose()

    done, started, first, later, missing = asyncio.run(scenario())
    assert done == {
        "mode": "sync", "grid_id": "g1", "status": "completed",
        "outputs": {"enriched": {"value": "g1:email=a@x.io", "name": "Enriched"}},
    }
    assert started["status"] == "running" and started["poll_url"].endswith(started["request_id"])
    assert first["status"] == "running"
    assert later["status"] == "completed" and later["outputs"]["enriched"]["value"] == "g1:email=b@x.io"
    assert missing is None


def test_sync_run_longer_than_the_window_returns_a_request_id(fake_upstream: FakeUpstreamProcess) -> None:
    fake_upstream.configure(sync_window=0.2, run_seconds="1.0")
    client = _client(fake_upstream)
    answer = asyncio.run(_with(client, client.submit_run(RunRequest("g1", {"a": "1"}, mode="sync"))))
    assert answer["status"] == "running" and answer["mode"] == "sync" and answer["request_id"]


def test_wrong_key_is_one_error_with_status_and_excerpt_and_never_the_key(
    fake_upstream: FakeUpstreamProcess, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk-live-THIS-MUST-NOT-LEAK"
    caplog.set_level(logging.DEBUG)
    client = _client(fake_upstream, key=secret)
    with pytest.raises(UpstreamError) as info:
        asyncio.run(_with(client, client.submit_run(RunRequest("g1", {"a": "1"}))))
    assert info.value.status_code == 401
    assert "X-API-KEY" in info.value.body_excerpt
    assert "HTTP 401" in str(info.value)
    assert secret not in str(info.value) and secret not in info.value.body_excerpt
    assert secret not in caplog.text
    assert fake_upstream.stats()["runs"] == 0


def test_missing_key_is_a_clear_error(fake_upstream: FakeUpstreamProcess) -> None:
    client = _client(fake_upstream, key="")
    with pytest.raises(UpstreamError, match="BITSCALE_API_KEY is not set"):
        asyncio.run(_with(client, client.run_status("x")))
    assert fake_upstream.stats()["requests"] == 0


def test_unreachable_upstream_is_retried_then_one_error() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = HttpUpstream(f"http://127.0.0.1:{port}/api/v1", "k", max_attempts=3, backoff_base_s=0.01)
    with pytest.raises(UpstreamError, match="unreachable") as info:
        asyncio.run(_with(client, client.run_status("x")))
    assert info.value.status_code is None
    assert client.requests_sent == 3


def test_5xx_on_status_polls_is_retried(fake_upstream: FakeUpstreamProcess) -> None:
    fake_upstream.configure(failure_rate=0.5, failure_status=502, rate_limit=0)

    async def scenario():
        client = _client(fake_upstream, max_attempts=10, backoff_base_s=0.01, backoff_cap_s=0.05)
        try:
            return [await client.run_status("unknown-id") for _ in range(10)]
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == [None] * 10  # every poll got a real answer in the end
    assert fake_upstream.stats()["failures_injected"] > 0


def test_a_post_is_retried_on_503_but_not_on_500(fake_upstream: FakeUpstreamProcess) -> None:
    fake_upstream.configure(failure_rate=1.0, failure_status=503, rate_limit=0)
    client = _client(fake_upstream, max_attempts=3, backoff_base_s=0.01)
    with pytest.raises(UpstreamError, match="HTTP 503") as info:
        asyncio.run(_with(client, client.submit_run(RunRequest("g1", {"a": "1"}))))
    assert info.value.status_code == 503 and client.requests_sent == 3
    fake_upstream.configure(failure_status=500)
    client = _client(fake_upstream, max_attempts=3, backoff_base_s=0.01)
    with pytest.raises(UpstreamError, match="HTTP 500") as info:
        asyncio.run(_with(client, client.submit_run(RunRequest("g1", {"a": "1"}))))
    assert info.value.status_code == 500 and client.requests_sent == 1  # the run may exist: not resent


def test_a_post_whose_answer_is_lost_is_not_resubmitted(fake_upstream: FakeUpstreamProcess) -> None:
    fake_upstream.configure(post_hang_s=1.5)
    client = _client(fake_upstream, read_timeout_s=0.3, sync_read_timeout_s=0.3)
    with pytest.raises(UpstreamOutcomeUnknown, match="not resubmitted"):
        asyncio.run(_with(client, client.submit_run(RunRequest("g1", {"a": "1"}, mode="async"))))
    stats = fake_upstream.stats()
    assert stats["runs"] == 1 and stats["max_submissions_per_input"] == 1


def test_status_poll_timeouts_are_retried_with_bounded_attempts(fake_upstream: FakeUpstreamProcess) -> None:
    fake_upstream.configure(latency=0.6, rate_limit=0)
    client = _client(fake_upstream, read_timeout_s=0.2, max_attempts=3, backoff_base_s=0.01)
    with pytest.raises(UpstreamError, match="failed GET /run/status/x 3 times: ReadTimeout"):
        asyncio.run(_with(client, client.run_status("x")))
    assert client.requests_sent == 3


def test_retry_after_parsing() -> None:
    assert retry_after_seconds("2") == 2.0
    assert retry_after_seconds("0.25") == 0.25
    assert retry_after_seconds(None) == 1.0
    assert retry_after_seconds("soon") == 1.0
    assert retry_after_seconds("99999") == 120.0  # bounded
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past
    # A date is measured from the response's Date, not our clock (which may be years off):
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:30 GMT", date="Wed, 21 Oct 2015 07:28:00 GMT") == 30.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:30 GMT", date="garbage") == 0.0


def test_429_honours_retry_after_and_pushes_the_shared_slot(settings: Settings, fake_upstream: FakeUpstreamProcess) -> None:
    """A limiter set too fast (20/s) against an upstream that allows 5/s: 429s are answered by waiting, every
    request succeeds, and the shared next slot moved forward for everybody."""
    engine = open_engine(settings)
    limiter = SharedRateLimiter(engine, workspace_key(fake_upstream.base_url, fake_upstream.key), 20.0)

    async def scenario():
        client = _client(fake_upstream, limiter=limiter)
        try:
            return await asyncio.gather(*(client.run_status(f"id-{n}") for n in range(15)))
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == [None] * 15
    stats = fake_upstream.stats()
    assert stats["rate_limited"] > 0  # the limiter was too fast on purpose
    assert stats["max_accepted_in_any_second"] <= 5
    engine.dispose()


WORKER = """
import asyncio, json, sys, time
from tracker import Settings
from tracker.db import open_engine
from tracker.remote.ratelimit import SharedRateLimiter, workspace_key
from tracker.remote.http import HttpUpstream
settings = Settings.from_env()
rate, count = float(sys.argv[1]), int(sys.argv[2])
engine = open_engine(settings)
limiter = SharedRateLimiter(engine, workspace_key(settings.upstream_base, settings.upstream_key), rate)
async def main():
    client = HttpUpstream(settings.upstream_base, settings.upstream_key, limiter)
    start = time.time()
    for n in range(count):
        await client.run_status(f"probe-{n}")
    await client.aclose()
    return time.time() - start
print(json.dumps({"seconds": asyncio.run(main())}))
"""


def _processes_share(db: Path, fake: FakeUpstreamProcess, rate: float, processes: int, each: int) -> dict:
    procs = [
        subprocess.Popen(
            [PYTHON, "-c", WORKER, str(rate), str(each)], env=child_env(db, **fake.env()),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(processes)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * processes, [err for _, err in outputs]
    return fake.stats()


def test_processes_on_one_database_share_the_rate_limit(db_path: Path, fake_upstream: FakeUpstreamProcess) -> None:
    open_engine(Settings.from_env({}, db=str(db_path))).dispose()  # migrated once, before the race
    stats = _processes_share(db_path, fake_upstream, rate=5.0, processes=3, each=4)
    assert stats["requests"] == 12
    assert stats["rate_limited"] == 0
    assert stats["max_accepted_in_any_second"] <= 5
    span = stats["last_request_at"] - stats["first_request_at"]
    # 12 requests at <= 5/s cannot span less than (12 - 1) / 5 s: the processes did not each take 5/s.
    assert span >= 11 / 5


def test_the_shared_limit_can_fail(tmp_path: Path, fake_upstream: FakeUpstreamProcess) -> None:
    """Control: the same 5/s limiters, but each on its own database, so they share nothing: the upstream sees
    their sum and refuses the excess with 429s."""

    async def one(db: Path) -> None:
        engine = open_engine(Settings.from_env({}, db=str(db)))
        limiter = SharedRateLimiter(engine, workspace_key(fake_upstream.base_url, fake_upstream.key), 5.0)
        client = _client(fake_upstream, limiter=limiter)
        try:
            for n in range(5):
                await client.run_status(f"probe-{n}")
        finally:
            await client.aclose()
            engine.dispose()

    async def scenario():
        await asyncio.gather(*(one(tmp_path / f"own-{n}.db") for n in range(3)))

    asyncio.run(scenario())
    stats = fake_upstream.stats()
    assert stats["rate_limited"] > 0
    assert stats["max_arrivals_in_any_second"] > 5


def test_slot_claims_on_both_backends(backend_settings: Settings) -> None:
    """The shared schedule's SQL on SQLite and PostgreSQL: slots spaced by the interval, never before the
    database's now, and a deferral moves the next slot forward but never back."""
    from tracker.store.ratelimit import RateLimitStore

    engine = open_engine(backend_settings)
    store = RateLimitStore(engine, max_ahead_s=300)
    # A 2 s interval: the four claims land on the schedule (each slot after the last) however slowly a loaded
    # machine makes them; with 0.25 s, a claim made 0.3 s after the one before took the database's now instead.
    interval = 2.0
    claims = [store.claim("ws", interval) for _ in range(4)]
    first = claims[0].slot
    assert [c.slot for c in claims] == pytest.approx([first + interval * n for n in range(4)], abs=1e-6)
    assert claims[0].due <= time.monotonic() and claims[0].uncertainty_s >= 0
    assert claims[3].due - claims[0].due == pytest.approx(3 * interval, abs=0.05)  # on this process's monotonic clock
    other = store.claim("other", interval)  # workspaces are independent: free now
    assert other.due <= time.monotonic()
    until = store.defer("ws", 30)  # past the 8 s already booked
    deferred = store.claim("ws", interval)
    assert deferred.slot == until and deferred.due - time.monotonic() == pytest.approx(30, abs=0.5)
    store.defer("ws", 1)  # earlier than the slot already taken: no change
    assert store.queue("ws")[0] == until + interval
    engine.dispose()


def test_a_slot_booked_far_ahead_is_rebased_not_waited_for(backend_settings: Settings) -> None:
    """A server whose clock was an hour ahead booked the shared slot an hour ahead (as the old code did, from its
    own clock): nobody may wait for that. The next claim re-bases it to the database's now."""
    from sqlalchemy import text

    from tracker.remote.ratelimit import SharedRateLimiter

    engine = open_engine(backend_settings)
    limiter = SharedRateLimiter(engine, "ws", 5.0)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO upstream_rate_limits (workspace, next_slot_at) VALUES ('ws', :at)"),
            {"at": time.time() + 3600},
        )

    asyncio.run(asyncio.wait_for(limiter.acquire(), timeout=20))  # the old code waited an hour here
    assert asyncio.run(limiter.queue_s()) < 5
    engine.dispose()
