"""Hostile environments: a read-only filesystem, a truncated or corrupted database, a full disk. Each gives one
clear error naming the file, never a traceback, and no earlier row is lost."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest

from tracker import DatabaseUnavailable, Settings, Tracker


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()[:100]}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _seed(db: Path, items: int = 50) -> str:
    with Tracker(Settings.from_env({}, db=str(db))) as t:
        batch = t.start_batch("import", total=items)
        for n in range(items):
            batch.record_success(f"row-{n}")
        batch.finish()
    return batch.id


def _refused(db: Path) -> str:
    with pytest.raises(DatabaseUnavailable) as caught:
        with Tracker(Settings.from_env({}, db=str(db))) as t:
            t.list(limit=100)
            for record in t.list(limit=100):
                t.items(record.id, ok=True, limit=100_000)
                t.store.count_items(record.id)
    message = str(caught.value)
    assert str(db) in message, message
    assert "\n" not in message and "SELECT" not in message and "Traceback" not in message
    return message


def test_read_only_filesystem(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "4m") as mount:
        db = mount / "tracker.db"
        op_id = _seed(db)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        message = _refused(db)
        assert "read-only" in message.lower() or "readonly" in message.lower()
        subprocess.run(["mount", "-o", "remount,rw", str(mount)], check=True)
        with Tracker(Settings.from_env({}, db=str(db))) as t:
            assert t.get(op_id).succeeded_count == 50


def test_truncated_database(tmp_path: Path) -> None:
    db = tmp_path / "tracker.db"
    _seed(db, items=5000)
    size = db.stat().st_size
    with open(db, "r+b") as handle:
        handle.truncate(size // 3)
    before = db.read_bytes()
    message = _refused(db)
    assert "malformed" in message or "not a database" in message
    assert db.read_bytes() == before  # a failed open repairs nothing and overwrites nothing


def test_corrupted_pages(tmp_path: Path) -> None:
    db = tmp_path / "tracker.db"
    _seed(db, items=5000)
    # A quarter of the file's pages, from its middle on: the item pages the reads below go through are among them
    # (two random pages alone sometimes hit only pages no read touches, such as free ones).
    size = db.stat().st_size
    with open(db, "r+b") as handle:
        handle.seek(size // 2)
        handle.write(os.urandom(size // 4))
    _refused(db)


def test_full_disk_refuses_the_group_and_keeps_it_for_later(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "2m") as mount:
        db = mount / "tracker.db"
        with Tracker(Settings.from_env({}, db=str(db))) as t:
            batch = t.start_batch("import", total=0)
            batch.record_success("before-the-disk-filled")
            batch.flush()
            filler = mount / "filler"
            with open(filler, "wb", buffering=0) as f:  # leave almost no room (unbuffered: close has nothing to flush)
                with contextlib.suppress(OSError):
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
            recorded = 0
            with pytest.raises(DatabaseUnavailable) as caught:
                for n in range(200_000):
                    batch.record_success(f"item-{n:06d}-" + "x" * 40)
                    recorded += 1
                batch.flush()
            assert str(db) in str(caught.value) and "full" in str(caught.value)
            record = t.get(batch.id)
            # Whatever committed is whole: counters and item rows agree, nothing half-written.
            assert t.store.count_items(batch.id) == (record.succeeded_count, 0)
            assert record.succeeded_count >= 1
            filler.unlink()
            batch.flush()  # the refused group was kept in the handle, and now lands
            final = batch.finish()
            assert final.succeeded_count == recorded + 1
            assert t.store.count_items(batch.id) == (recorded + 1, 0)
