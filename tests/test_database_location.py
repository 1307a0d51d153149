"""Where the database lives and how it is opened: TRACKER_DB / --db / default path, SQLite settings, file mode,
and one clear error for a location that cannot be used."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from tracker import DatabaseUnavailable, InvalidInput, Settings, Tracker
from tracker.db import sqlite_module
from tracker.testing.env import child_env

from .conftest import PYTHON


def test_sqlite_settings_on_every_connection(tracker: Tracker) -> None:
    with tracker.engine.connect() as conn:
        pragma = lambda name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()  # noqa: E731
        assert pragma("journal_mode") == "wal"
        assert pragma("synchronous") == 1  # NORMAL
        assert pragma("foreign_keys") == 1
        assert pragma("busy_timeout") >= 5000
        version = tuple(int(p) for p in conn.exec_driver_sql("SELECT sqlite_version()").scalar().split("."))
    # The bundled SQLite is past the WAL-reset bug (fixed in 3.51.3).
    assert sqlite_module().__name__ == "pysqlite3.dbapi2"
    assert version >= (3, 51, 3)


def test_database_files_are_private(tracker: Tracker, db_path: Path) -> None:
    batch = tracker.start_batch("import", total=1)
    batch.record_success("a")
    batch.flush()
    for path in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
        assert path.exists()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_default_location_is_per_user_data_dir(tmp_path: Path) -> None:
    settings = Settings.from_env({"XDG_DATA_HOME": str(tmp_path / "xdg")})
    assert settings.db == str(tmp_path / "xdg" / "tracker" / "tracker.db")
    with Tracker(settings) as t:
        t.start_batch("import").finish()
    assert (tmp_path / "xdg" / "tracker" / "tracker.db").is_file()
    home = Settings.from_env({"HOME": str(tmp_path / "home")})
    assert home.db == str(tmp_path / "home" / ".local" / "share" / "tracker" / "tracker.db")


def test_tracker_db_accepts_a_sqlalchemy_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'by-url.db'}"
    with Tracker(Settings.from_env({"TRACKER_DB": url})) as t:
        t.start_batch("import").finish()
    assert (tmp_path / "by-url.db").is_file()


def _unusable(db: str) -> str:
    with pytest.raises(DatabaseUnavailable) as caught:
        Tracker(Settings.from_env({}, db=db))
    message = str(caught.value)
    assert "\n" not in message and "SELECT" not in message and "Traceback" not in message
    return message


def test_missing_directory_is_one_clear_error(tmp_path: Path) -> None:
    target = tmp_path / "nope" / "tracker.db"
    assert "directory" in _unusable(str(target)) and str(target) in _unusable(str(target))
    assert not (tmp_path / "nope").exists()


def test_a_directory_is_not_a_database(tmp_path: Path) -> None:
    assert "is a directory" in _unusable(str(tmp_path))


def test_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_bytes(b"these are my notes, not a database\n" * 200)
    message = _unusable(str(junk))
    assert str(junk) in message and "not a database" in message
    assert junk.read_bytes() == b"these are my notes, not a database\n" * 200


def test_unsupported_or_memory_urls(tmp_path: Path) -> None:
    assert "unsupported database" in _unusable("mysql://user:s3cret@localhost/db")
    assert "s3cret" not in _unusable("mysql://user:s3cret@localhost/db")
    assert ":memory:" in _unusable("sqlite:///:memory:")


def test_cli_reports_an_unusable_location_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [PYTHON, "-m", "tracker", "--db", str(tmp_path / "missing" / "t.db"), "db", "upgrade"],
        env=child_env(tmp_path / "unused.db"), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tracker: ") and "does not exist" in lines[0]


def test_cli_db_current_and_upgrade(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    run = lambda *args: subprocess.run(  # noqa: E731
        [PYTHON, "-m", "tracker", *args], env=child_env(db), capture_output=True, text=True, timeout=60
    )
    missing = run("db", "current")
    assert missing.returncode == 1 and missing.stderr == f"tracker: no tracker database at {db}\n"
    assert not db.exists()  # a read command makes no file
    db.touch(mode=0o600)
    before = run("db", "current")
    assert before.returncode == 0 and "revision none" in before.stdout and "upgrade needed" in before.stdout
    upgraded = run("db", "upgrade")
    assert upgraded.returncode == 0 and "empty ->" in upgraded.stdout
    after = run("db", "current")
    assert after.returncode == 0 and "up to date" in after.stdout


@pytest.mark.parametrize("value", ["0s", "-5s", "soon", "1e999s"])
def test_a_bad_heartbeat_lease_is_one_line_naming_the_variable(value: str) -> None:
    with pytest.raises(InvalidInput, match="^TRACKER_HEARTBEAT_LEASE") as raised:
        Settings.from_env({"TRACKER_HEARTBEAT_LEASE": value})
    assert "\n" not in str(raised.value)
    assert Settings.from_env({"TRACKER_HEARTBEAT_LEASE": "90s"}).heartbeat_lease_s == 90.0
