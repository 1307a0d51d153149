"""The database's files: modes that let other users in are refused, a file removed or replaced under a recorder is
an error rather than a silent loss, read commands create nothing, and `tracker db backup` copies a live database."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tracker import DatabaseUnavailable, Tracker
from tracker.cli import main
from tracker.db import database_errors
from tracker.db import sqlite_module
from tracker.testing.env import child_env

from .conftest import PYTHON


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TRACKER_DB", "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)


def _cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _seed(db: Path, items: int = 3) -> str:
    with Tracker.open(db=str(db)) as tracker:
        batch = tracker.start_batch("import", total=items)
        for n in range(items):
            batch.record_success(f"seed-{n}")
        batch.finish()
    return batch.id


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# -- 1. modes ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "lets"),
    [(0o666, "read and write"), (0o644, "read"), (0o640, "read"), (0o620, "write"), (0o602, "write"),
     (0o610, "access")],
    ids=lambda value: f"{value:04o}" if isinstance(value, int) else value,
)
def test_a_database_other_users_can_open_is_refused(tmp_path: Path, mode: int, lets: str) -> None:
    db = tmp_path / "t.db"
    _seed(db)
    db.chmod(mode)
    before = db.read_bytes()
    with pytest.raises(DatabaseUnavailable) as caught:
        Tracker.open(db=str(db))
    assert str(caught.value) == (
        f"cannot use database {db}: its mode {mode:04o} lets other users {lets} it; run: chmod 600 {db}"
    )
    assert db.read_bytes() == before and _mode(db) == mode  # refused before SQLite opened it
    assert _tree(tmp_path) == {"t.db"}  # no -wal/-shm copied from the loose mode


def test_the_cli_refuses_a_loose_database_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    db = tmp_path / "t.db"
    _seed(db)
    db.chmod(0o666)
    for args in (["ls"], ["db", "current"], ["reap", "--dry-run"], ["db", "backup", str(tmp_path / "copy.db")]):
        code, out, err = _cli(capsys, "--db", str(db), *args)
        assert (code, out) == (1, ""), args
        assert _one_line(err) == (
            f"tracker: cannot use database {db}: its mode 0666 lets other users read and write it; run: chmod 600 {db}"
        )
    assert _tree(tmp_path) == {"t.db"}


def _leave_wal_and_shm(db: Path) -> None:
    """A writer that dies without closing leaves -wal and -shm behind, in the database's mode of the time."""
    script = (
        "import os, sys\n"
        "from tracker.db import sqlite_module\n"
        "conn = sqlite_module().connect(sys.argv[1], isolation_level=None)\n"
        "conn.execute('PRAGMA journal_mode = WAL')\n"
        "conn.execute('PRAGMA wal_autocheckpoint = 0')\n"
        "conn.execute('PRAGMA user_version = 7')\n"
        "os._exit(0)\n"
    )
    subprocess.run([PYTHON, "-c", script, str(db)], env=child_env(db), check=True, timeout=60)


def test_loose_wal_and_shm_files_of_ours_are_made_private(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    op_id = _seed(db)
    db.chmod(0o666)
    _leave_wal_and_shm(db)
    wal, shm = Path(f"{db}-wal"), Path(f"{db}-shm")
    assert _mode(wal) == 0o666 and _mode(shm) == 0o666 and wal.stat().st_size > 0
    db.chmod(0o600)  # what the refusal told the user to do
    with Tracker.open(db=str(db)) as tracker:
        assert _mode(wal) == 0o600 and _mode(shm) == 0o600
        assert tracker.get(op_id).succeeded_count == 3
        with tracker.engine.connect() as conn:  # the -wal was used, not thrown away
            assert conn.exec_driver_sql("PRAGMA user_version").scalar() == 7
        batch = tracker.start_batch("import")
        batch.record_success("after")
        batch.flush()
        assert {_mode(p) for p in (db, wal, shm)} == {0o600}


@pytest.mark.skipif(os.geteuid() != 0, reason="making a file another user owns needs root")
def test_a_loose_wal_file_of_another_user_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    _seed(db)
    db.chmod(0o644)
    _leave_wal_and_shm(db)
    db.chmod(0o600)
    wal = Path(f"{db}-wal")
    os.chown(wal, 65534, 65534)
    with pytest.raises(DatabaseUnavailable) as caught:
        Tracker.open(db=str(db))
    message = str(caught.value)
    assert message.startswith(f"cannot use database {db}: ") and f"run: chmod 600 {wal}" in message
    assert "\n" not in message and _mode(wal) == 0o644


# -- 2. removed or replaced while recording -----------------------------------------------------------------------


def _count_items(db: Path, op_id: str) -> tuple[int, int]:
    conn = sqlite_module().connect(str(db))
    try:
        counted = conn.execute(
            "SELECT succeeded_count + failed_count FROM operations WHERE id = ?", (op_id,)
        ).fetchone()
        rows = conn.execute("SELECT count(*) FROM operation_items WHERE operation_id = ?", (op_id,)).fetchone()[0]
        return (counted[0] if counted else -1), rows
    finally:
        conn.close()


def test_a_database_removed_while_recording_refuses_the_flush_and_keeps_the_items(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    kept = tmp_path / "kept.db"  # a second name for the same file, so it can be put back
    with Tracker.open(db=str(db)) as tracker:
        batch = tracker.start_batch("import", total=5)
        for n in range(3):
            batch.record_success(f"a-{n}")
        assert batch.flush() == 3
        os.link(db, kept)
        db.unlink()
        batch.record_success("a-3")
        batch.record_success("a-4")
        with pytest.raises(DatabaseUnavailable) as caught:
            batch.flush()
        message = str(caught.value)
        assert f"database file {db} was removed or replaced while this process was using it" in message
        assert "\n" not in message and batch.durable_count == 3
        tracker.engine.dispose()  # the next read needs a new connection: it must not make a new, empty file
        with pytest.raises(DatabaseUnavailable, match="was removed or replaced while this process was using it"):
            tracker.get(batch.id)
        assert not db.exists()
        os.link(kept, db)
        assert batch.flush() == 2
        batch.finish()
    assert _count_items(db, batch.id) == (5, 5)


def test_a_database_replaced_while_recording_refuses_the_flush_and_keeps_the_items(tmp_path: Path) -> None:
    db, other, kept = tmp_path / "t.db", tmp_path / "other.db", tmp_path / "kept.db"
    _seed(other)
    other_bytes = other.read_bytes()
    with Tracker.open(db=str(db)) as tracker:
        batch = tracker.start_batch("import", total=4)
        batch.record_success("a-0")
        batch.record_success("a-1")
        assert batch.flush() == 2
        os.link(db, kept)
        os.replace(other, db)  # mv other.db t.db
        batch.record_success("a-2")
        batch.record_success("a-3")
        with pytest.raises(DatabaseUnavailable) as caught:
            batch.flush()
        assert "was removed or replaced while this process was using it" in str(caught.value)
        # Not written into. (Read as bytes: SQLite itself would apply the old file's t.db-wal to this one.)
        assert db.read_bytes() == other_bytes
        os.replace(kept, db)
        assert batch.flush() == 2
        batch.finish()
    assert _count_items(db, batch.id) == (4, 4)


# -- 3. read commands create nothing --------------------------------------------------------------------------------

READ_COMMANDS = [["db", "current"], ["ls"], ["ls", "--json"], ["show", "x"], ["watch", "x"], ["reap", "--dry-run"],
                 ["reap"], ["db", "backup", "/nonexistent-dir/never.db"]]


@pytest.mark.parametrize("where", ["file", "in-missing-dir"])
def test_read_commands_on_a_missing_database_create_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, where: str
) -> None:
    missing = tmp_path / "typo.db" if where == "file" else tmp_path / "no-dir" / "typo.db"
    for args in READ_COMMANDS:
        code, out, err = _cli(capsys, "--db", str(missing), *args)
        assert (code, out) == (1, ""), args
        assert _one_line(err) == f"tracker: no tracker database at {missing}", args
    assert _tree(tmp_path) == set()


def test_read_commands_on_the_missing_default_location_create_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    for args in READ_COMMANDS:
        code, out, err = _cli(capsys, *args)
        assert (code, out) == (1, ""), args
        assert _one_line(err) == f"tracker: no tracker database at {tmp_path / 'xdg' / 'tracker' / 'tracker.db'}"
    assert _tree(tmp_path) == set()


def test_commands_that_make_a_database_still_make_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    db = tmp_path / "new" / "t.db"
    (tmp_path / "new").mkdir()
    code, out, _ = _cli(capsys, "--db", str(db), "db", "upgrade")
    assert code == 0 and "empty ->" in out and _mode(db) == 0o600
    code, out, _ = _cli(capsys, "--db", str(db), "db", "current")
    assert code == 0 and "up to date" in out
    Tracker.open(db=str(tmp_path / "lib.db")).close()
    assert (tmp_path / "lib.db").is_file()


# -- 4. backup --------------------------------------------------------------------------------------------------------

WRITER = r"""
import sys
from tracker import Tracker

tracker = Tracker.open(db=sys.argv[1])
print("ready", flush=True)
n = 0
while True:
    batch = tracker.start_batch("import", total=300)
    for i in range(300):
        if i % 7:
            batch.record_success(f"{n}-{i}")
        else:
            batch.record_failure("bad row", row_number=i + 1)
        if i % 20 == 19:
            batch.flush()
    batch.finish()
    n += 1
"""


def _check_copy(copy: Path) -> int:
    """The copy opens, is whole, and every operation's counters equal its item rows; returns its operations."""
    assert _mode(copy) == 0o600
    conn = sqlite_module().connect(str(copy))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        ops = conn.execute("SELECT id, succeeded_count, failed_count FROM operations").fetchall()
        for op_id, succeeded, failed in ops:
            rows = conn.execute(
                "SELECT count(*), coalesce(sum(ok), 0) FROM operation_items WHERE operation_id = ?", (op_id,)
            ).fetchone()
            assert (rows[0], rows[1]) == (succeeded + failed, succeeded), op_id
        return len(ops)
    finally:
        conn.close()


def _backup(db: Path, dest: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "tracker", "db", "backup", str(dest), *extra],
        env=child_env(db), capture_output=True, text=True, timeout=120,
    )


def test_backup_of_a_live_database_while_another_process_records(tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    writer = subprocess.Popen(
        [PYTHON, "-c", WRITER, str(db)], env=child_env(db), stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        seen = []
        for n in range(5):
            dest = tmp_path / f"copy-{n}.db"
            result = _backup(db, dest)
            assert result.returncode == 0, result.stderr
            assert result.stderr == "" and result.stdout.startswith(f"backed up {db} to {dest} (")
            assert writer.poll() is None  # the writer kept going
            assert not Path(f"{dest}-wal").exists() and not Path(f"{dest}-journal").exists()
            seen.append(_check_copy(dest))
            time.sleep(0.2)
    finally:
        writer.kill()
        writer.wait()
    assert seen[0] >= 1 and seen[-1] > seen[0], seen  # copies of a database that grew meanwhile
    copies = {p.name for p in tmp_path.iterdir()} - {"live.db", "live.db-wal", "live.db-shm"}
    assert copies == {f"copy-{n}.db" for n in range(5)}  # no temporary file left behind


@contextlib.contextmanager
def _read_only_directory(path: Path):
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o500)
        try:
            yield path
        finally:
            path.chmod(0o700)
        return
    # root writes anywhere a mode forbids: only a read-only mount refuses it
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_backup_refuses_bad_destinations_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    db = tmp_path / "t.db"
    _seed(db)
    (tmp_path / "a-dir").mkdir()
    existing = tmp_path / "existing.db"
    existing.write_bytes(b"keep me")

    def refused(dest: str, *extra: str) -> str:
        code, out, err = _cli(capsys, "--db", str(db), "db", "backup", dest, *extra)
        assert (code, out) == (1, ""), dest
        return _one_line(err)

    assert refused(str(existing)) == f"tracker: backup destination {existing} exists; use --force to replace it"
    assert existing.read_bytes() == b"keep me"
    for same in (str(db), f"{tmp_path}/a-dir/../t.db", f"{db}-wal", f"{db}-shm"):
        line = refused(same, "--force")
        assert line.startswith(f"tracker: backup destination {Path(same)} is the database itself"), line
    assert refused(str(tmp_path / "nope" / "c.db")) == (
        f"tracker: cannot write backup {tmp_path / 'nope' / 'c.db'}: directory {tmp_path / 'nope'} does not exist"
    )
    assert refused(str(tmp_path / "a-dir")) == f"tracker: cannot write backup {tmp_path / 'a-dir'}: it is a directory"
    with _read_only_directory(tmp_path / "ro") as ro:
        line = refused(str(ro / "c.db"))
        assert line.startswith(f"tracker: cannot write backup {ro / 'c.db'}: ")
        assert line.endswith(("Read-only file system", "Permission denied"))
        assert list(ro.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-dir", "existing.db", "ro", "t.db"]

    code, out, err = _cli(capsys, "--db", str(db), "db", "backup", str(existing), "--force")
    assert code == 0 and err == "" and out.startswith(f"backed up {db} to {existing} (")
    assert _check_copy(existing) == 1


def test_backup_of_postgresql_says_to_use_pg_dump(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    url = "postgresql+psycopg://tracker:s3cret@127.0.0.1:1/tracker"
    code, out, err = _cli(capsys, "--db", url, "db", "backup", str(tmp_path / "copy.db"))
    assert (code, out) == (2, "")
    line = _one_line(err)
    assert "pg_dump" in line and "s3cret" not in line
    assert _tree(tmp_path) == set()


def test_driver_errors_become_one_line_naming_the_database() -> None:
    from sqlalchemy.exc import OperationalError

    driver = OperationalError("INSERT INTO operation_items VALUES (?)", ("secret",), Exception("disk I/O error\nmore"))
    with pytest.raises(DatabaseUnavailable) as caught, database_errors("/data/t.db", "recording items of b1"):
        raise driver
    assert str(caught.value) == "database /data/t.db: recording items of b1 failed: disk I/O error"
    with pytest.raises(DatabaseUnavailable, match=r"^database /data/t.db: No space left on device$"):
        with database_errors("/data/t.db", file_errors=True):
            raise OSError(28, "No space left on device")
    with pytest.raises(OSError), database_errors("/data/t.db"):  # not the database file's: not translated
        raise OSError(28, "No space left on device")
