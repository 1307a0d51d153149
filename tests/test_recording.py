"""The library API: lifecycle, the completed/failed rule, exact counts, the terminal guard, the context manager."""

from __future__ import annotations

import time

import pytest

from tracker import InvalidInput, OperationCancelled, OperationClosed, Settings, Tracker, limits


# Every test here is a contract test: it runs on SQLite and on a real PostgreSQL server.
@pytest.fixture
def settings(backend_settings: Settings) -> Settings:
    return backend_settings


@pytest.fixture
def tracker(backend_tracker: Tracker) -> Tracker:
    return backend_tracker


def test_lifecycle_records_items_in_order(tracker: Tracker) -> None:
    batch = tracker.start_batch("update", total=4, inputs={"filter": "stale"})
    assert batch.id.startswith("batch_update_")
    started = tracker.get(batch.id)
    assert started.status == "running" and started.completed == 0 and started.completed_at is None
    batch.record_success("a")
    batch.record_failure("locked", item_id="b")
    batch.record_success(3)
    batch.record_failure("bad email", row_number=4)
    record = batch.finish()
    assert record.status == "completed"
    assert (record.succeeded_count, record.failed_count, record.total, record.percent) == (2, 2, 4, 100.0)
    assert record.completed_at is not None and record.completed_at >= record.started_at
    assert record.execution_time_ms == int(round((record.completed_at - record.started_at).total_seconds() * 1000))
    assert record.inputs == {"filter": "stale"}
    assert [i.item_id for i in tracker.items(batch.id, ok=True)] == ["a", "3"]
    failures = tracker.items(batch.id, ok=False)
    assert [(f.item_id, f.row_number, f.error) for f in failures] == [("b", None, "locked"), (None, 4, "bad email")]


def test_all_failed_is_failed_and_partial_is_completed(tracker: Tracker) -> None:
    all_bad = tracker.start_batch("delete", total=2)
    all_bad.record_failure("gone", item_id="x")
    all_bad.record_failure("gone", item_id="y")
    assert all_bad.finish().status == "failed"
    empty = tracker.start_batch("delete", total=0)
    assert empty.finish().status == "completed"
    assert tracker.get(empty.id).percent == 100.0


def test_explicit_fail_keeps_items_and_error(tracker: Tracker) -> None:
    batch = tracker.start_batch("import", total=10)
    batch.record_success("1")
    record = batch.fail("upstream quota exhausted")
    assert (record.status, record.error, record.succeeded_count) == ("failed", "upstream quota exhausted", 1)


def test_terminal_guard_refuses_every_later_write(tracker: Tracker) -> None:
    batch = tracker.start_batch("update", total=1)
    batch.record_success("only")
    done = batch.finish()
    with pytest.raises(OperationClosed):
        batch.record_success("late")
    with pytest.raises(OperationClosed):
        batch.finish()
    # A second handle on the finished operation (another process, a late worker) is refused too.
    late = tracker.attach(batch.id)
    with pytest.raises(OperationClosed):
        late.record_success("late")
    with pytest.raises(OperationClosed):
        tracker.cancel(batch.id)
    assert tracker.get(batch.id) == done
    assert tracker.store.count_items(batch.id) == (1, 0)


def test_late_buffered_items_are_refused_not_applied(tracker: Tracker) -> None:
    worker = tracker.start_batch("import", total=100)
    worker.record_success("1")
    worker.flush()
    tracker.cancel(worker.id, "user asked")
    worker.record_success("2")  # buffered: the refusal comes with the flush
    with pytest.raises(OperationCancelled):
        worker.flush()
    with pytest.raises(OperationCancelled):
        worker.record_success("3")
    record = tracker.get(worker.id)
    assert (record.status, record.error, record.completed) == ("cancelled", "user asked", 1)
    assert tracker.store.count_items(worker.id) == (1, 0)


def test_context_manager_marks_failed_with_message(tracker: Tracker) -> None:
    with pytest.raises(RuntimeError):
        with tracker.start_batch("import", total=3) as batch:
            batch.record_success("a")
            raise RuntimeError("CSV row 2 has 7 columns, expected 5")
    record = tracker.get(batch.id)
    assert (record.status, record.error, record.succeeded_count) == (
        "failed", "CSV row 2 has 7 columns, expected 5", 1,
    )


def test_context_manager_finishes_and_stops_quietly_on_cancel(tracker: Tracker) -> None:
    with tracker.start_batch("update", total=2) as batch:
        batch.record_success("a")
    assert tracker.get(batch.id).status == "completed"
    with tracker.start_batch("update", total=1000) as cancelled:
        tracker.cancel(cancelled.id)
        for n in range(1000):
            cancelled.record_success(n)
            cancelled.flush()
        pytest.fail("the handle never noticed the cancel")
    assert tracker.get(cancelled.id).status == "cancelled"


def test_progress_visible_to_another_reader_without_explicit_flush(tracker: Tracker, settings) -> None:
    batch = tracker.start_batch("import", total=3)
    batch.record_success("a")  # one item, then the worker goes quiet
    with Tracker(settings) as reader:
        deadline = time.monotonic() + 5
        while reader.get(batch.id).completed == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert reader.get(batch.id).completed == 1


def test_finish_flushes_everything(tracker: Tracker) -> None:
    batch = tracker.start_batch("import", total=12_345)
    for n in range(12_345):
        batch.record_success(n)
    record = batch.finish()
    assert record.succeeded_count == 12_345 and record.percent == 100.0
    assert tracker.store.count_items(batch.id) == (12_345, 0)
    assert batch.durable_count == 12_345


def test_ids_of_every_accepted_kind_are_stored_as_text(tracker: Tracker) -> None:
    """record_success checks the common id (a plain str) inline; the others take the full checks: the same ids."""

    class Label(str):
        pass

    batch = tracker.start_batch("import")
    for item_id in ("plain", 7, Label("sub"), " padded ", "x" * limits.ITEM_ID_CHARS):
        batch.record_success(item_id)
    batch.finish()
    stored = [item.item_id for item in tracker.items(batch.id, ok=True)]
    assert stored == ["plain", "7", "sub", " padded ", "x" * limits.ITEM_ID_CHARS]
    assert all(type(item_id) is str for item_id in stored)


def test_a_flush_leaves_the_connection_checking_references(tracker: Tracker) -> None:
    """append_items skips SQLite's foreign-key check of its own rows (its guard proved the reference): every
    pooled connection still checks references afterwards, for every other statement."""
    batch = tracker.start_batch("import")
    batch.record_success("a")
    batch.flush()
    if tracker.engine.dialect.name == "sqlite":
        with tracker.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    batch.finish()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda b: b.record_success(""), "item id must not be empty"),
        (lambda b: b.record_success(" \t\u2028"), "item id must not be empty"),
        (lambda b: b.record_success("a\x00b"), "must not contain a NUL"),
        (lambda b: b.record_success(True), "item id must be a string or an integer"),
        (lambda b: b.record_success(None), "item id must be a string or an integer"),
        (lambda b: b.record_success("x" * 5000), "longer than"),
        (lambda b: b.record_failure("", item_id="a"), "error must be a non-empty string"),
        (lambda b: b.record_failure("boom"), "needs an item id, a row_number"),
        (lambda b: b.record_failure("boom", row_number=0), "row_number must be"),
        (lambda b: b.record_failure("boom", row_number="3"), "row_number must be"),
        (lambda b: b.set_total(-1), "total must be"),
    ],
)
def test_bad_item_input_is_refused_and_changes_nothing(tracker: Tracker, call, message) -> None:
    batch = tracker.start_batch("import", total=5)
    before = tracker.get(batch.id)
    with pytest.raises(InvalidInput, match=message):
        call(batch)
    batch.flush()
    assert tracker.get(batch.id) == before


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"operation_type": ""}, "operation_type must be a non-empty string"),
        ({"operation_type": 5}, "operation_type must be a non-empty string"),
        ({"operation_type": "x" * 65}, "longer than 64"),
        ({"operation_type": "import", "total": -3}, "total must be"),
        ({"operation_type": "import", "total": "10"}, "total must be"),
    ],
)
def test_bad_batch_start_writes_nothing(tracker: Tracker, kwargs, message) -> None:
    with pytest.raises(InvalidInput, match=message):
        tracker.start_batch(**kwargs)
    assert tracker.list() == []


def test_ids_are_unguessable_readable_and_in_creation_order(tracker: Tracker) -> None:
    made = [tracker.start_batch("CSV Import!").id for _ in range(50)]
    assert len(set(made)) == 50
    before_ms = time.time_ns() // 1_000_000
    for op_id in made:
        prefix, _, token = op_id.rpartition("_")
        label, _, created = prefix.rpartition("_")
        assert label == "batch_csv_import"
        assert len(token) == 32 and int(token, 16) >= 0  # 128 bits of hex
        assert len(created) == 12 and before_ms - 60_000 <= int(created, 16) <= before_ms  # milliseconds, in hex
    # Ids sort by creation time (ids made in one millisecond tie on it and sort by their random part).
    assert [op_id.rpartition("_")[0] for op_id in sorted(made)] == [op_id.rpartition("_")[0] for op_id in made]

