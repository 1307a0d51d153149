"""Several processes recording at once into one database: exact counts, no 'database is locked', and a later
process reads exactly what an earlier one wrote."""

from __future__ import annotations

import json
import subprocess

import pytest

from tracker import Settings, Tracker
from tracker.testing.env import child_env

from .conftest import PYTHON


# Contract tests: SQLite and a real PostgreSQL server.
@pytest.fixture
def db(backend_settings: Settings) -> str:
    return backend_settings.db


@pytest.fixture
def tracker(backend_tracker: Tracker) -> Tracker:
    return backend_tracker

RECORDER = """
import sys, tracker
op_id, worker, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with tracker.Tracker.open() as t:
    batch = t.attach(op_id)
    for n in range(count):
        if n % 10 == 9:
            batch.record_failure("rejected", item_id=f"w{worker}-{n}", row_number=n + 1)
        else:
            batch.record_success(f"w{worker}-{n}")
    batch.flush()
"""


def _run_all(db: str, jobs: list[tuple[str, int, int]]) -> None:
    procs = [
        subprocess.Popen(
            [PYTHON, "-c", RECORDER, op_id, str(worker), str(count)],
            env=child_env(db), stderr=subprocess.PIPE, text=True,
        )
        for op_id, worker, count in jobs
    ]
    stderr = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), stderr
    assert not any("locked" in text for text in stderr), stderr


def test_four_processes_into_one_operation(tracker: Tracker, db: str) -> None:
    batch = tracker.start_batch("update", total=4 * 3000)
    _run_all(db, [(batch.id, w, 3000) for w in range(4)])
    record = batch.finish()
    assert (record.succeeded_count, record.failed_count, record.total) == (4 * 2700, 4 * 300, 12_000)
    assert tracker.store.count_items(batch.id) == (10_800, 1_200)
    ids = [i.item_id for i in tracker.items(batch.id, ok=True, limit=20_000)]
    assert len(ids) == len(set(ids)) == 10_800


def test_four_processes_into_their_own_operations(tracker: Tracker, db: str) -> None:
    batches = [tracker.start_batch("import", total=2500) for _ in range(4)]
    _run_all(db, [(b.id, w, 2500) for w, b in enumerate(batches)])
    for batch in batches:
        record = batch.finish()
        assert (record.succeeded_count, record.failed_count, record.status) == (2250, 250, "completed")
        assert tracker.store.count_items(batch.id) == (2250, 250)


def test_new_process_reads_what_an_old_one_wrote(db: str) -> None:
    writer = (
        "import json, tracker\n"
        "with tracker.Tracker.open() as t:\n"
        "    b = t.start_batch('delete', total=3, inputs={'ids': ['a', 'b', 'c']})\n"
        "    b.record_success('a'); b.record_failure('not found', item_id='b'); b.record_success('c')\n"
        "    b.finish()\n"
        "    print(b.id)\n"
    )
    reader = (
        "import json, sys, tracker\n"
        "from tracker.timeutil import iso\n"
        "with tracker.Tracker.open() as t:\n"
        "    r = t.get(sys.argv[1])\n"
        "    items = [(i.ok, i.item_id, i.error) for ok in (True, False) for i in t.items(r.id, ok=ok)]\n"
        "    print(json.dumps([r.status, r.succeeded_count, r.failed_count, r.inputs, iso(r.completed_at), items]))\n"
    )
    op_id = subprocess.run([PYTHON, "-c", writer], env=child_env(db), capture_output=True, text=True,
                           check=True).stdout.strip()
    out = subprocess.run([PYTHON, "-c", reader, op_id], env=child_env(db), capture_output=True, text=True,
                         check=True).stdout
    status, ok, failed, inputs, completed_at, items = json.loads(out)
    assert (status, ok, failed, inputs) == ("completed", 2, 1, {"ids": ["a", "b", "c"]})
    assert completed_at.endswith("Z")
    assert items == [[True, "a", None], [True, "c", None], [False, "b", "not found"]]
