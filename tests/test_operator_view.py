"""The operation_status view: one row per operation with progress and its items as JSON, on both backends,
and readable with the real sqlite3 shell."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from sqlalchemy import text

from tracker import Settings, Tracker


def _row(tracker: Tracker, op_id: str) -> dict:
    with tracker.engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM operation_status WHERE id = :id"), {"id": op_id}).mappings().all()
    assert len(rows) == 1
    row = dict(rows[0])
    for key in ("successful_ids", "failed_items"):
        if isinstance(row[key], str):
            row[key] = json.loads(row[key])
    return row


def test_view_shows_progress_and_items(backend_tracker: Tracker) -> None:
    batch = backend_tracker.start_batch("import", total=4)
    for item in ("c-1", "c-2", "c-3"):
        batch.record_success(item)
    batch.record_failure("duplicate email", item_id="c-4", row_number=4)
    batch.flush()
    row = _row(backend_tracker, batch.id)
    assert (row["status"], row["completed"], row["total"], float(row["percent"])) == ("running", 4, 4, 100.0)
    assert row["successful_ids"] == ["c-1", "c-2", "c-3"]
    assert row["failed_items"] == [{"id": "c-4", "row_number": 4, "error": "duplicate email"}]
    empty = backend_tracker.start_batch("delete", total=10)
    row = _row(backend_tracker, empty.id)
    assert (row["completed"], float(row["percent"]), row["successful_ids"], row["failed_items"]) == (0, 0.0, [], [])


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="the sqlite3 shell is not installed (apt-get install sqlite3)")
def test_sqlite3_shell_reads_one_row_per_operation(tracker: Tracker, settings: Settings) -> None:
    batch = tracker.start_batch("update", total=3)
    batch.record_success("a")
    batch.record_success("b")
    batch.record_failure("locked", item_id="c")
    batch.finish()
    out = subprocess.run(
        ["sqlite3", "-json", settings.db,
         f"SELECT id, status, completed, total, percent, started_at, completed_at, successful_ids, failed_items "
         f"FROM operation_status WHERE id = '{batch.id}'"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout
    [row] = json.loads(out)
    assert (row["status"], row["completed"], row["total"], row["percent"]) == ("completed", 3, 3, 100.0)
    assert json.loads(row["successful_ids"]) == ["a", "b"]
    assert json.loads(row["failed_items"]) == [{"id": "c", "row_number": None, "error": "locked"}]
    # ISO-8601 UTC text that SQLite's own date functions understand.
    assert row["started_at"].endswith("Z") and "T" in row["started_at"]
    check = subprocess.run(
        ["sqlite3", settings.db, f"SELECT julianday(completed_at) >= julianday(started_at) FROM operations "
                                 f"WHERE id = '{batch.id}'"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout.strip()
    assert check == "1"
