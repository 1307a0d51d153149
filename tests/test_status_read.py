"""The status read path (Store.get_with_first_items, behind get_batch_status) on SQLite and PostgreSQL: the same
record and first items as the separate reads give, in completion order, limits honoured, and a clear error when
the database cannot be read."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from tracker import DatabaseUnavailable, Settings, Tracker
from tracker.records import StatusRecord
from tracker.status import STATUS_PAGE_FAILURES, STATUS_PAGE_IDS, StatusService, operation_dict


def record_batch(tracker: Tracker, succeeded: int, failed: int, finish: bool = True) -> str:
    batch = tracker.start_batch("import", total=succeeded + failed)
    for n in range(max(succeeded, failed)):
        if n < succeeded:
            batch.record_success(f"ok-{n}")
        if n < failed:
            batch.record_failure(f"bad {n}", item_id=f"bad-{n}", row_number=n + 1)
    if finish:
        batch.finish()
    else:
        batch.flush()
    return batch.id


@pytest.mark.parametrize("succeeded, failed", [(0, 0), (3, 0), (0, 4), (120, 45)])
def test_matches_the_separate_reads(backend_tracker: Tracker, succeeded: int, failed: int) -> None:
    op_id = record_batch(backend_tracker, succeeded, failed)
    found = backend_tracker.store.get_with_first_items(op_id, 7, 5)
    assert found is not None
    record, ok_items, failed_items = found
    detail = backend_tracker.get(op_id)
    assert record == StatusRecord(**{f.name: getattr(detail, f.name) for f in fields(StatusRecord)})
    assert ok_items == backend_tracker.items(op_id, ok=True, limit=7)
    assert failed_items == backend_tracker.items(op_id, ok=False, limit=5)
    assert [i.item_id for i in ok_items] == [f"ok-{n}" for n in range(min(7, succeeded))]
    assert [(i.item_id, i.row_number, i.error) for i in failed_items] == [
        (f"bad-{n}", n + 1, f"bad {n}") for n in range(min(5, failed))
    ]


def test_unknown_operation_is_none(backend_tracker: Tracker) -> None:
    record_batch(backend_tracker, 2, 1)
    assert backend_tracker.store.get_with_first_items("batch_import_" + "0" * 32, 5, 5) is None


def test_batch_status_answer_is_built_from_one_snapshot(tracker: Tracker) -> None:
    op_id = record_batch(tracker, STATUS_PAGE_IDS + 10, STATUS_PAGE_FAILURES + 3, finish=False)
    answer = StatusService(tracker).batch_status(op_id)
    expected = operation_dict(
        tracker.get(op_id),
        tracker.items(op_id, ok=True, limit=STATUS_PAGE_IDS + 1),
        tracker.items(op_id, ok=False, limit=STATUS_PAGE_FAILURES + 1),
    )
    assert answer == {"found": True, "operation": expected}
    assert answer["operation"]["successful_ids_truncated"] and answer["operation"]["failed_items_truncated"]
    assert len(answer["operation"]["successful_ids"]) == STATUS_PAGE_IDS


def test_unreadable_database_is_one_error_naming_the_file(tmp_path: Path) -> None:
    db = tmp_path / "tracker.db"
    with Tracker(Settings.from_env({}, db=str(db))) as tracker:
        op_id = record_batch(tracker, 3, 1)
        service = StatusService(tracker)
        tracker.engine.dispose()
        db.write_bytes(b"this is not a database" * 300)
        for suffix in ("-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        with pytest.raises(DatabaseUnavailable) as caught:
            service.batch_status(op_id)
    message = str(caught.value)
    assert str(db) in message and "SELECT" not in message and "\n" not in message
