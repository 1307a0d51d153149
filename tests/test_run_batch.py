"""run_grid_batch: returns at once, submits every row once as a run linked to the batch, polls each to its end,
exact counts, cancel stops submissions, the row limit, and the shared 5/s limit measured under load."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from typing import Any

import pytest

from tracker import InvalidInput, Settings
from tracker.db import open_engine
from tracker.limits import BATCH_ROWS
from tracker.remote import RunsService
from tracker.remote.answers import INTERRUPTED
from tracker.store import Store

from .conftest import FakeUpstreamProcess


def _rows(count: int, tag: str = "") -> list[dict[str, str]]:
    return [{"email": f"person{n}{tag}@example.com", "company": f"co-{n % 7}"} for n in range(1, count + 1)]


async def _until_terminal(runs: RunsService, batch_id: str, timeout_s: float = 60.0, on_progress=None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = await asyncio.to_thread(runs.store.get, batch_id)
        assert record is not None
        if on_progress is not None:
            on_progress(record)
        if record.is_terminal:
            return record
        await asyncio.sleep(0.05)
    raise AssertionError(f"batch {batch_id} still running after {timeout_s}s")


def _run_batch(settings: Settings, rows: list[dict[str, str]], on_progress=None, **kwargs: Any):
    async def scenario():
        engine = open_engine(settings)
        runs = RunsService(settings, engine)
        await runs.start()
        try:
            started = await runs.run_grid_batch("g1", rows, **kwargs)
            record = await _until_terminal(runs, started["batch_operation_id"], on_progress=on_progress)
            store = Store(engine)
            ok = await asyncio.to_thread(store.items, record.id, True, 0, 20_000)
            failed = await asyncio.to_thread(store.items, record.id, False, 0, 20_000)
            children = await asyncio.to_thread(runs.store.children, record.id)
            return started, record, ok, failed, children
        finally:
            await runs.aclose()
            engine.dispose()

    return asyncio.run(scenario())


@pytest.fixture
def fast_settings(upstream_settings: Settings, fake_upstream: FakeUpstreamProcess) -> Settings:
    """20 requests/s on both sides, so functional tests are quick; the 5/s default is measured separately."""
    fake_upstream.configure(rate_limit=20)
    return replace(upstream_settings, upstream_rate_per_s=20.0)


def test_batch_returns_at_once_and_ends_with_exact_counts(fast_settings: Settings, fake_upstream: FakeUpstreamProcess) -> None:
    fake_upstream.configure(run_failure_rate=0.25, run_seconds="0.2,0.6")
    seen: list[int] = []
    started, record, ok, failed, children = _run_batch(
        fast_settings, _rows(30), on_progress=lambda r: seen.append(r.completed)
    )
    assert started["status"] == "running" and started["total"] == 30
    assert started["batch_operation_id"].startswith("batch_grid_run_")
    assert record.status == "completed" and record.total == 30
    assert record.succeeded_count + record.failed_count == 30
    assert (len(ok), len(failed)) == (record.succeeded_count, record.failed_count)
    assert 0 < record.failed_count < 30  # the fake fails a quarter of its runs
    # successful ids are the runs' request ids; failures carry the row number and the upstream's error
    by_row = {c.row_number: c for c in children}
    assert sorted(by_row) == list(range(1, 31))
    assert {i.item_id for i in ok} == {c.request_id for c in children if c.status == "completed"}
    for item in failed:
        assert by_row[item.row_number].status == "failed"
        assert item.error.startswith("upstream reported the run failed")
        assert item.item_id == by_row[item.row_number].request_id
    assert all(c.parent_id == record.id and c.inputs["inputs"] in _rows(30) for c in children)
    # progress was live: intermediate counts were visible, never going backwards
    assert seen == sorted(seen) and any(0 < n < 30 for n in seen)
    stats = fake_upstream.stats()
    assert stats["distinct_inputs"] == 30 and stats["max_submissions_per_input"] == 1


def test_nothing_is_sent_before_the_batch_id_is_returned(fast_settings: Settings, fake_upstream: FakeUpstreamProcess) -> None:
    async def scenario():
        engine = open_engine(fast_settings)
        runs = RunsService(fast_settings, engine)
        try:
            started = await runs.run_grid_batch("g1", _rows(3))
            requests_at_return = fake_upstream.stats()["requests"]
            await runs.start()
            record = await _until_terminal(runs, started["batch_operation_id"])
            return requests_at_return, record
        finally:
            await runs.aclose()
            engine.dispose()

    requests_at_return, record = asyncio.run(scenario())
    assert requests_at_return == 0
    assert record.status == "completed"


def test_sync_batch_rows_complete_in_their_post(fast_settings: Settings, fake_upstream: FakeUpstreamProcess) -> None:
    fake_upstream.configure(run_seconds="0.1")
    _, record, ok, failed, children = _run_batch(fast_settings, _rows(5), mode="sync", output_columns=["enriched"])
    assert record.status == "completed" and record.succeeded_count == 5 and not failed
    # the upstream gives a run that completes within the sync window no request_id: the run's own id stands in
    assert {i.item_id for i in ok} == {c.id for c in children}
    assert all(c.outputs == {"enriched": {"value": f"g1:{_text(c)}", "name": "Enriched"}} for c in children)
    assert fake_upstream.stats()["gets"] == 0


def _text(child) -> str:
    return "|".join(f"{k}={v}" for k, v in sorted(child.inputs["inputs"].items()))


def test_upstream_refusing_every_row_fails_the_batch_with_row_numbers(
    fast_settings: Settings, fake_upstream: FakeUpstreamProcess
) -> None:
    settings = replace(fast_settings, upstream_key="not-the-key")
    _, record, ok, failed, _ = _run_batch(settings, _rows(4))
    assert record.status == "failed" and record.failed_count == 4 and not ok
    assert sorted(i.row_number for i in failed) == [1, 2, 3, 4]
    assert all("HTTP 401" in i.error and "not-the-key" not in i.error for i in failed)


def test_cancel_stops_new_submissions(upstream_settings: Settings, fake_upstream: FakeUpstreamProcess) -> None:
    fake_upstream.configure(run_seconds="0.2")

    async def scenario():
        engine = open_engine(upstream_settings)
        runs = RunsService(upstream_settings, engine)
        await runs.start()
        try:
            started = await runs.run_grid_batch("g1", _rows(40), concurrency=2)
            batch_id = started["batch_operation_id"]
            while fake_upstream.stats()["posts"] < 4:
                await asyncio.sleep(0.05)
            await asyncio.to_thread(Store(runs.engine).cancel, batch_id)
            posts_at_cancel = fake_upstream.stats()["posts"]
            await asyncio.sleep(1.5)  # several slots' worth at 5/s
            worker_gone = batch_id not in runs.batches.workers
            children = await asyncio.to_thread(runs.store.children, batch_id)
            return posts_at_cancel, fake_upstream.stats()["posts"], worker_gone, children, batch_id
        finally:
            await runs.aclose()
            engine.dispose()

    posts_at_cancel, posts_later, worker_gone, children, _ = asyncio.run(scenario())
    # at most the submissions already past the cancel check (one per submitter) go out after it
    assert posts_later <= posts_at_cancel + 2
    assert posts_later < 10 and len(children) == posts_later
    assert worker_gone


BAD_BATCHES = [
    ({"rows": []}, "rows must be a non-empty list"),
    ({"rows": "a,b"}, "rows must be a non-empty list"),
    ({"rows": [{"a": "1"}] * (BATCH_ROWS + 1)}, f"a batch takes at most {BATCH_ROWS}"),
    ({"rows": [{"a": "1"}, {"a": 2}]}, r"rows\[1\]\['a'\] must be a string"),
    ({"rows": [{"a": "1"}, {}]}, r"rows\[1\] must be a non-empty object"),
    ({"concurrency": 0}, "concurrency must be a whole number from 1 to 16"),
    ({"concurrency": True}, "concurrency must be a whole number from 1 to 16"),
    ({"mode": "later"}, "mode must be 'sync' or 'async'"),
    ({"grid_id": " "}, "grid_id must not be empty"),
]


def test_bad_batches_are_refused_with_nothing_written(upstream_settings: Settings, fake_upstream: FakeUpstreamProcess) -> None:
    async def scenario():
        engine = open_engine(upstream_settings)
        runs = RunsService(upstream_settings, engine)
        try:
            for kwargs, message in BAD_BATCHES:
                with pytest.raises(InvalidInput, match=message):
                    await runs.run_grid_batch(**{"grid_id": "g1", "rows": _rows(2), **kwargs})
            with engine.connect() as conn:
                return conn.exec_driver_sql("SELECT count(*) FROM operations").scalar()
        finally:
            await runs.aclose()
            engine.dispose()

    assert asyncio.run(scenario()) == 0
    assert fake_upstream.stats()["requests"] == 0


def test_the_default_5_per_second_limit_under_load(upstream_settings: Settings, fake_upstream: FakeUpstreamProcess) -> None:
    """A batch wanting far more than 5 requests/s (8 submitters, runs polled every 0.3 s) stays within the
    upstream's limit: no 429, at most 5 accepted in any one-second window."""
    fake_upstream.configure(run_seconds="0.5,1.5")
    _, record, ok, _, _ = _run_batch(upstream_settings, _rows(12, tag="-load"), concurrency=8)
    stats = fake_upstream.stats()
    span = stats["last_request_at"] - stats["first_request_at"]
    figures = {
        "requests": stats["requests"], "posts": stats["posts"], "gets": stats["gets"],
        "rate_limited": stats["rate_limited"], "max_in_any_second": stats["max_accepted_in_any_second"],
        "mean_per_s": round((stats["requests"] - 1) / span, 2), "max_submissions_per_input": stats["max_submissions_per_input"],
    }
    print("load figures:", json.dumps(figures))
    assert record.status == "completed" and len(ok) == 12
    assert stats["rate_limited"] == 0
    assert stats["max_accepted_in_any_second"] <= 5
    assert stats["max_submissions_per_input"] == 1 and stats["distinct_inputs"] == 12
    assert stats["gets"] >= 12  # each async run was polled at least once


def test_interrupted_marker_text_is_honest() -> None:
    assert INTERRUPTED.startswith("unknown: interrupted during submit")
    assert "not resubmitted" in INTERRUPTED


def test_a_batch_on_both_backends(backend_settings: Settings, fake_upstream: FakeUpstreamProcess) -> None:
    """The runs SQL on SQLite and PostgreSQL: a small batch with a failure ends with exact counts."""
    fake_upstream.configure(rate_limit=20, run_seconds="0.1,0.3", run_failure_rate=0.3)
    settings = replace(
        backend_settings, upstream_base=fake_upstream.base_url, upstream_key=fake_upstream.key,
        upstream_rate_per_s=20.0, poll_interval_s=0.2,
    )
    _, record, ok, failed, children = _run_batch(settings, _rows(6, tag="-both"))
    assert record.status in ("completed", "failed") and record.total == 6
    assert (len(ok), len(failed)) == (record.succeeded_count, record.failed_count)
    assert record.completed == 6 and sorted(c.row_number for c in children) == list(range(1, 7))
    assert fake_upstream.stats()["max_submissions_per_input"] == 1
