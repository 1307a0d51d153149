"""A consistent copy of a live SQLite database, through SQLite's online backup API. A plain `cp` of a live file and
its -wal copies them at different moments, and a recorder committing in between leaves a copy that is corrupt."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from .db import database_url, engine_location, open_engine, sqlite_module, unavailable
from .errors import InvalidInput
from .settings import Settings


@dataclass(frozen=True)
class BackupResult:
    source: str
    dest: Path
    size: int
    seconds: float

    def line(self) -> str:
        return f"backed up {self.source} to {self.dest} ({self.size} bytes in {self.seconds:.2f}s)"


def is_sqlite(settings: Settings) -> bool:
    """Whether settings.db is a SQLite database (an unparseable one counts: opening it says what is wrong)."""
    try:
        return make_url(database_url(settings.db)).get_backend_name() == "sqlite"
    except ArgumentError:
        return True


def backup_sqlite(settings: Settings, dest: str, force: bool = False) -> BackupResult:
    """Copy the SQLite database of settings.db to dest (mode 0600) while other processes go on writing: one read
    snapshot, so the copy is whole and its counters match its items. Refuses an existing dest unless force, and
    dest being the database itself. Raises InvalidInput for a bad dest, DatabaseUnavailable for the source."""
    engine = open_engine(settings, migrate=False, create=False)
    try:
        source = engine_location(engine)
        target = _destination(Path(dest).expanduser().absolute(), source, force)
        started = time.monotonic()
        temp = target.with_name(f".{target.name}.tmp-{secrets.token_hex(4)}")
        try:
            _copy(engine, source, target, temp)
            _move_into_place(temp, target, force)
        finally:
            with contextlib.suppress(OSError):  # gone already (a read-only filesystem says EROFS, not ENOENT)
                temp.unlink()
        return BackupResult(source, target, target.stat().st_size, time.monotonic() - started)
    finally:
        engine.dispose()


def _destination(target: Path, source: str, force: bool) -> Path:
    real, source_real = os.path.realpath(target), os.path.realpath(source)
    for suffix in ("", "-wal", "-shm", "-journal"):
        if real == source_real + suffix:
            part = f" (its {suffix} file)" if suffix else ""
            raise InvalidInput(f"backup destination {target} is the database itself{part}")
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise InvalidInput(f"cannot write backup {target}: {exc.strerror}") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise InvalidInput(f"cannot write backup {target}: it is a directory")
        if os.path.samefile(target, source):  # a hard link to it
            raise InvalidInput(f"backup destination {target} is the database itself (a link to it)")
        if not stat.S_ISREG(st.st_mode):
            raise InvalidInput(f"cannot write backup {target}: not a regular file")
        if not force:
            raise InvalidInput(f"backup destination {target} exists; use --force to replace it")
    if not target.parent.is_dir():
        raise InvalidInput(f"cannot write backup {target}: directory {target.parent} does not exist")
    return target


def _copy(engine, source: str, target: Path, temp: Path) -> None:  # noqa: ANN001
    # Made 0600 before SQLite opens it, as the database itself is (its -journal copies the mode).
    try:
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise InvalidInput(f"cannot write backup {target}: {exc.strerror}") from None
    os.fchmod(fd, 0o600)
    os.close(fd)
    module = sqlite_module()
    try:
        copy = module.connect(str(temp), isolation_level=None)
    except module.Error as exc:
        raise InvalidInput(f"cannot write backup {target}: {exc}") from None
    try:
        raw = engine.raw_connection()
        try:
            raw.driver_connection.backup(copy)  # all pages in one step: one read snapshot, writers go on (WAL)
        finally:
            raw.close()
    except (module.Error, SQLAlchemyError) as exc:  # backup() raises the driver's own errors, unwrapped
        raise unavailable(source, exc, f"backup to {target}") from None
    finally:
        copy.close()


def _move_into_place(temp: Path, target: Path, force: bool) -> None:
    try:
        if force:
            os.replace(temp, target)
        else:
            os.link(temp, target)  # fails if dest appeared meanwhile, where a rename would replace it
    except FileExistsError:
        raise InvalidInput(f"backup destination {target} exists; use --force to replace it") from None
    except OSError as exc:
        raise InvalidInput(f"cannot write backup {target}: {exc.strerror}") from None
    try:
        dir_fd = os.open(target.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)  # the new name survives a power loss too
    except OSError:
        pass
    finally:
        os.close(dir_fd)
