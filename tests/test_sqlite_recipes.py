"""The README's sqlite3 recipes, run through the real sqlite3 shell on a test database. The recipes are read from
README.md itself, so the text an operator copies is the text tested."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tracker import Settings, Tracker
from tracker.reaper import find_orphans, purge
from tracker.timeutil import iso, utcnow

from .conftest import REPO
from .reap_helpers import finished_ago, set_times

SQLITE3 = shutil.which("sqlite3")
pytestmark = pytest.mark.skipif(SQLITE3 is None, reason="the sqlite3 shell is not installed (apt-get install sqlite3)")
RECIPE = re.compile(r"```sql\n-- recipe: (?P<name>[\w-]+)\n(?P<sql>.*?)```", re.S)


def readme_recipes() -> dict[str, str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## sqlite3 recipes"):]
    section = section[: section.find("\n## ", 1)]
    return {m["name"]: m["sql"] for m in RECIPE.finditer(section)}


def run_recipe(db: str, sql: str, operation_id: str = "") -> list[list[dict[str, Any]]]:
    """The result sets of a recipe (one per statement that returned rows), as the operator's shell computes them."""
    result = subprocess.run(
        [SQLITE3, "-readonly", "-json", "-cmd", f".param set :id '{operation_id}'", db],
        input=sql, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    decoder, out, sets = json.JSONDecoder(), result.stdout.strip(), []
    while out:
        value, end = decoder.raw_decode(out)
        sets.append(value)
        out = out[end:].strip()
    return sets


def test_readme_has_every_recipe() -> None:
    assert set(readme_recipes()) == {"running", "by-status", "failures", "next-reap", "stale-heartbeats", "sizes"}


def test_recipes_through_the_sqlite3_shell(tracker: Tracker, settings: Settings) -> None:
    engine, now = tracker.engine, utcnow()

    old_done = tracker.start_batch("import")
    for n in range(3):
        old_done.record_success(f"a-{n}")
    old_done.record_failure("bad row", row_number=4)
    old_done.record_failure("bad row", row_number=5)
    old_done.finish()
    finished_ago(engine, old_done.id, now - timedelta(hours=2))

    recent_done = tracker.start_batch("update")
    for n in range(4):
        recent_done.record_success(f"b-{n}")
    recent_done.finish()
    finished_ago(engine, recent_done.id, now - timedelta(minutes=30))

    old_failed = tracker.start_batch("delete")
    old_failed.record_success("c-1")
    old_failed.record_failure("not found", item_id="c-2")
    old_failed.record_failure("permission denied", item_id="c-3", row_number=3)
    old_failed.fail("2 of 3 deletions failed")
    finished_ago(engine, old_failed.id, now - timedelta(hours=3))

    stale = tracker.start_batch("import", total=50)
    fresh = tracker.start_batch("update", total=10)
    # Owned by a process on another host that went quiet 5 minutes ago: an orphan by its heartbeat.
    set_times(engine, stale.id, started_at=now - timedelta(minutes=20), heartbeat_at=now - timedelta(minutes=5),
              owner_host="another-host")

    # What tracker itself says, to compare with what the shell says.
    expected_purge = purge(engine, 3600, dry_run=True)
    expected_stale = [o.operation.id for o in find_orphans(engine, 60)]
    tracker.close()  # folds the WAL into the file, so sizes match the file on disk

    recipes, db = readme_recipes(), settings.db

    [running] = run_recipe(db, recipes["running"])
    assert [row["id"] for row in running] == [stale.id, fresh.id]
    assert 295 <= running[0]["quiet_s"] <= 400 and 0 <= running[1]["quiet_s"] <= 60
    assert (running[0]["done"], running[0]["total"]) == (0, 50)

    [by_status] = run_recipe(db, recipes["by-status"])
    assert by_status == [
        {"status": "completed", "operations": 2, "items": 9},
        {"status": "failed", "operations": 1, "items": 3},
        {"status": "running", "operations": 2, "items": 0},
    ]

    [failures] = run_recipe(db, recipes["failures"], old_failed.id)
    assert [(r["item_id"], r["row_number"], r["error"]) for r in failures] == [
        ("c-2", None, "not found"), ("c-3", 3, "permission denied")]
    assert failures[0]["seq"] < failures[1]["seq"]
    assert run_recipe(db, recipes["failures"], recent_done.id) == []

    [[next_reap]] = run_recipe(db, recipes["next-reap"])
    assert next_reap == {"operations": 2, "items": 8, "oldest_completed_at": iso(now - timedelta(hours=3))}
    assert (next_reap["operations"], next_reap["items"]) == (expected_purge.operations, expected_purge.items)

    [stale_rows] = run_recipe(db, recipes["stale-heartbeats"])
    assert [row["id"] for row in stale_rows] == [stale.id] == expected_stale
    assert stale_rows[0]["resumable"] == 0

    per_object, [totals] = run_recipe(db, recipes["sizes"])
    names = {row["name"] for row in per_object}
    assert {"operations", "operation_items", "ix_operation_items_operation_id_ok_seq"} <= names
    assert totals["file_bytes"] == Path(db).stat().st_size
    assert sum(row["bytes"] for row in per_object) + totals["free_bytes"] == totals["file_bytes"]
