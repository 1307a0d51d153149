"""Engines and schema: where the database is, how connections are set up, and upgrading it to head on open."""

from __future__ import annotations

import functools
import logging
import os
import stat
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

from .errors import DatabaseUnavailable
from .settings import Settings

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 30.0
# A writer waiting for SQLite's write lock polls it this often (first, then at most). SQLite's own busy handler
# sleeps up to 100 ms between tries, so a writer that started waiting during another's short transaction could
# sleep through the gap after it and wait for the next one too; polling this often, it gets the lock within about
# 2 ms of its release, and other writers (the purge) need to leave only a few ms between their transactions.
WRITE_LOCK_POLL_S = (0.0002, 0.002)
_PG_MIGRATION_LOCK = 0x7472_6163  # "trac": advisory lock key that serialises migrations on PostgreSQL
MIGRATION_TIMEOUT_S = 600.0  # on PostgreSQL, instead of TRACKER_DB_TIMEOUT, for each statement of a migration


def migrations_dir() -> Path:
    """The top-level migrations/ of a checkout; in an installed wheel the same files are tracker._migrations."""
    checkout = Path(__file__).resolve().parent.parent / "migrations"
    if (checkout / "env.py").is_file():
        return checkout
    spec = find_spec("tracker._migrations")
    if spec is None or spec.origin is None:
        raise DatabaseUnavailable("tracker's migrations are missing from this installation")
    return Path(spec.origin).parent


@functools.cache
def sqlite_module():
    """A SQLite without the WAL-reset bug when the pysqlite3 wheel is installed, else the standard library's."""
    try:
        import pysqlite3.dbapi2 as module  # type: ignore[import-not-found]
    except ImportError:  # pragma: no cover - platforms without the wheel
        import sqlite3 as module

        log.warning("pysqlite3 is not installed: using the system SQLite %s", module.sqlite_version)
    return module


def database_url(location: str) -> str:
    """TRACKER_DB is a path or a SQLAlchemy URL."""
    if "://" in location:
        return location
    return "sqlite:///" + str(Path(location).expanduser().absolute())


def describe(location: str) -> str:
    """The location for messages: a URL's password never shown."""
    try:
        return make_url(database_url(location)).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"


def engine_location(engine: Engine) -> str:
    """What error messages call this database: the file for SQLite, the URL without password otherwise."""
    if engine.dialect.name == "sqlite":
        return str(engine.url.database)
    return engine.url.render_as_string(hide_password=True)


FileIdentity = tuple[int, int]  # (st_dev, st_ino): which file a path named when the engine opened it
SQLITE_HEADER = b"SQLite format 3\x00"


def _prepare_sqlite_file(path: Path, create_parent: bool, create: bool = True) -> FileIdentity:
    """Create the file with mode 0600 before SQLite does (its -wal and -shm files copy this mode), or with create
    False insist that it exists; refuse a file other users may open; return its identity."""
    if create and create_parent:
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise DatabaseUnavailable(f"cannot create the directory for {path}: {exc.strerror}") from None
    if not path.parent.is_dir():
        if not create:
            raise DatabaseUnavailable(f"no tracker database at {path}")
        raise DatabaseUnavailable(f"cannot open database {path}: directory {path.parent} does not exist")
    try:
        fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o600)
    except FileNotFoundError:
        raise DatabaseUnavailable(f"no tracker database at {path}") from None
    except IsADirectoryError:
        raise DatabaseUnavailable(f"cannot open database {path}: it is a directory") from None
    except PermissionError:
        raise DatabaseUnavailable(f"cannot open database {path}: permission denied (need read and write)") from None
    except OSError as exc:
        raise DatabaseUnavailable(f"cannot open database {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DatabaseUnavailable(f"cannot open database {path}: not a regular file")
        # On st_mode, not access(): root may open anything, and the file is just as readable to others then.
        # A file that is no database at all is left to SQLite to say so: chmod would not help it.
        if st.st_mode & 0o077 and os.pread(fd, len(SQLITE_HEADER), 0) in (b"", SQLITE_HEADER):
            raise DatabaseUnavailable(_loose_mode_message(path, "its", st.st_mode) + f"; run: chmod 600 {path}")
    finally:
        os.close(fd)
    if not os.access(path.parent, os.W_OK):
        raise DatabaseUnavailable(
            f"cannot open database {path}: directory {path.parent} is not writable (SQLite needs its -wal file there)"
        )
    _make_sidecars_private(path)
    return st.st_dev, st.st_ino


def _loose_mode_message(path: Path, whose: str, mode: int) -> str:
    lets = " and ".join(word for bits, word in ((0o044, "read"), (0o022, "write")) if mode & bits) or "access"
    return f"cannot use database {path}: {whose} mode {stat.S_IMODE(mode):04o} lets other users {lets} it"


def _make_sidecars_private(path: Path) -> None:
    """-wal and -shm left by an earlier process keep the mode they were made with: ours become 0600, another
    user's loose ones are refused. SQLite keeps them beside the real file when the path is a symlink."""
    real = os.path.realpath(path)
    for side in (real + "-wal", real + "-shm"):
        try:
            fd = os.open(side, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise DatabaseUnavailable(f"cannot use database {path}: {side}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if st.st_mode & 0o077:
                if st.st_uid != os.geteuid():
                    raise DatabaseUnavailable(
                        _loose_mode_message(path, f"{side} is owned by uid {st.st_uid} and its", st.st_mode)
                        + f"; run: chmod 600 {side}"
                    )
                os.fchmod(fd, 0o600)
        finally:
            os.close(fd)


def _replaced(path: str) -> str:
    # No "locked" or "busy" in it: is_busy() must not take this for a lock to wait out.
    return f"database file {path} was removed or replaced while this process was using it; reopen it to go on"


def _same_file(path: str, identity: FileIdentity) -> bool:
    """Whether path still names the file the engine opened (one stat: a few microseconds)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == identity


def _sqlite_connector(path: str, identity: FileIdentity):  # noqa: ANN202
    """Every pool connection opens the file the engine opened: mode=rw so SQLite never makes a new empty one in
    its place, and a file that is gone or replaced is refused before its -wal can be applied to another file."""
    module = sqlite_module()
    uri = "file:" + urllib.parse.quote(path) + "?mode=rw"

    def connect():  # noqa: ANN202
        if not _same_file(path, identity):
            raise module.OperationalError(_replaced(path))
        raw = module.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
        if not _same_file(path, identity):  # replaced between the check and the open
            raw.close()
            raise module.OperationalError(_replaced(path))
        return raw

    return connect


def _install_sqlite_hooks(engine: Engine, path: str, identity: FileIdentity) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_conn, _record) -> None:  # noqa: ANN001
        # Driver autocommit: SQLAlchemy's begin event below decides how each transaction starts.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        _set_wal(cur)
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Connection) -> None:
        # Writers take the write lock up front: a deferred read-then-write fails at once with SQLITE_BUSY under WAL.
        if not conn.get_execution_options().get("write"):
            conn.exec_driver_sql("BEGIN")
            return
        raw = conn.connection.driver_connection
        try:
            begin_immediate(raw)
            # After the lock wait, which can be long: a write into a file no longer at its path would be lost.
            if not _same_file(path, identity):
                module = sqlite_module()
                with suppress(module.Error):  # the connection is invalidated below in any case
                    raw.execute("ROLLBACK")
                gone = module.OperationalError(_replaced(path))
                raise DBAPIError.instance("BEGIN IMMEDIATE", None, gone, module.Error)
        except DBAPIError as exc:
            if not is_busy(exc):
                conn.invalidate()  # a broken connection (or one whose busy timeout is unknown) leaves the pool
            raise


def _set_wal(cur) -> None:  # noqa: ANN001 (a DBAPI sqlite3 cursor)
    """PRAGMA journal_mode = WAL, waiting for the lock it takes. On a new file that other processes open at the
    same moment (one of them migrating it) it can answer 'database is locked' at once, without the busy handler;
    it is tried again, polling as begin_immediate() does, for as long as the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    _until_not_busy(lambda: cur.execute("PRAGMA journal_mode = WAL"), sqlite_module(), deadline)


def is_busy(exc: BaseException) -> bool:
    """SQLite's 'database is locked' (or 'busy'), from the driver or wrapped by SQLAlchemy: another writer held
    the lock past the busy timeout."""
    reason = str(exc.orig if isinstance(exc, DBAPIError) else exc).lower()
    return "locked" in reason or "busy" in reason


def begin_immediate(raw) -> None:  # noqa: ANN001 (a DBAPI sqlite3 connection)
    """BEGIN IMMEDIATE, waiting for the write lock as long as the connection's busy timeout allows, polling it
    every WRITE_LOCK_POLL_S instead of through SQLite's busy handler. Every driver error (the lock still taken at
    the deadline: 'database is locked') is raised wrapped as SQLAlchemy's, the way a failed BEGIN always was."""
    module = sqlite_module()
    try:
        timeout_ms = raw.execute("PRAGMA busy_timeout").fetchone()[0]
        raw.execute("PRAGMA busy_timeout = 0")
        try:
            _until_not_busy(lambda: raw.execute("BEGIN IMMEDIATE"), module, time.monotonic() + timeout_ms / 1000)
        finally:
            raw.execute(f"PRAGMA busy_timeout = {int(timeout_ms)}")
    except module.Error as exc:
        raise DBAPIError.instance("BEGIN IMMEDIATE", None, exc, module.Error) from None


def _until_not_busy(statement: Callable[[], object], module, deadline: float) -> None:  # noqa: ANN001
    """Run `statement` until it no longer fails with 'database is locked', polling every WRITE_LOCK_POLL_S (doubling)
    until `deadline`; then the last error is raised."""
    delay, longest = WRITE_LOCK_POLL_S
    while True:
        try:
            statement()
            return
        except module.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(longest, delay * 2)


def open_engine(settings: Settings, migrate: bool = True, create: bool = True) -> Engine:
    """An engine for settings.db, upgraded to the newest schema unless migrate is False. With create False a
    SQLite file that does not exist is an error (read commands never make one), not a new empty database."""
    url_text = database_url(settings.db)
    try:
        url = make_url(url_text)
    except ArgumentError:
        raise DatabaseUnavailable(f"TRACKER_DB is not a path or a database URL: {describe(settings.db)}") from None
    backend = url.get_backend_name()
    try:
        if backend == "sqlite":
            if not url.database or url.database == ":memory:":
                raise DatabaseUnavailable("tracker needs a database file shared by processes, not :memory:")
            path = Path(url.database)
            identity = _prepare_sqlite_file(path, create_parent=settings.db_is_default, create=create)
            engine = create_engine(
                url.set(drivername="sqlite+pysqlite"),
                module=sqlite_module(),
                creator=_sqlite_connector(str(path), identity),
            )
            _install_sqlite_hooks(engine, str(path), identity)
        elif backend == "postgresql":
            from .postgres import create_bounded_engine  # psycopg is optional: imported only for PostgreSQL

            engine = create_bounded_engine(url, settings.db_timeout_s)
        else:
            raise DatabaseUnavailable(f"unsupported database {describe(settings.db)}: use a file path, sqlite:// or postgresql+psycopg://")
    except ImportError as exc:
        raise DatabaseUnavailable(f"the driver for {describe(settings.db)} is not installed ({exc.name})") from None
    if migrate:
        try:
            with database_errors(describe(settings.db), "opening", file_errors=True):
                upgrade_to_head(engine)
        except DatabaseUnavailable:
            engine.dispose()
            raise
    return engine


def short_reason(exc: BaseException) -> str:
    """A one-line reason from a driver error, without the SQL statement SQLAlchemy attaches."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return str(exc.orig).strip().splitlines()[0][:200]
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror  # as the file checks above say it, without "[Errno N]"
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


def unavailable(location: str, exc: BaseException, doing: str | None = None) -> DatabaseUnavailable:
    """The one DatabaseUnavailable a driver error becomes: "database <location>: [<doing> failed: ]<reason>",
    one line, no SQL, no parameters. location is engine_location() / describe(), never a password."""
    what = f"{doing} failed: " if doing else ""
    return DatabaseUnavailable(f"database {location}: {what}{short_reason(exc)}")


@contextmanager
def database_errors(location: str, doing: str | None = None, *, file_errors: bool = False) -> Iterator[None]:
    """Driver errors (SQLAlchemyError; with file_errors also OSError, where the block touches the database file)
    raised inside become unavailable(location, exc, doing); tracker's own errors pass through unchanged."""
    caught: tuple[type[BaseException], ...] = (SQLAlchemyError, OSError) if file_errors else (SQLAlchemyError,)
    try:
        yield
    except caught as exc:
        raise unavailable(location, exc, doing) from None


# The newest migration's revision (tests/test_migrations.py checks it is Alembic's head). A database already there is
# opened without importing Alembic at all: a third of every tracker process's start-up (`tracker reap` from cron,
# each `tracker serve`) went to importing it.
SCHEMA_HEAD = "0006"


def _alembic_config() -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    return cfg


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at (None when it has no schema yet)."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


@contextmanager
def write_connection(engine: Engine, check_references: bool = True) -> Iterator[Connection]:
    """A connection in a write transaction (BEGIN IMMEDIATE on SQLite), committed on success. check_references
    False skips SQLite's foreign-key checks for this transaction, for a caller whose own guard has already proved
    them (a parent row it has just updated under the write lock): each check is one more b-tree search per row."""
    with engine.connect().execution_options(write=True) as conn:
        if check_references or engine.dialect.name != "sqlite":
            with conn.begin():
                yield conn
            return
        with _foreign_keys_off(conn), conn.begin():
            yield conn


def reads_at_once(engine: Engine) -> bool:
    """Whether a short read can start without waiting: SQLite (a local file; WAL readers wait for no writer) with
    an idle connection in the pool, so taking one neither waits for another thread to return one nor opens a new
    file handle (whose pragmas may wait for a lock). False on PostgreSQL, whose every statement waits on the
    network."""
    checked_in = getattr(engine.pool, "checkedin", None)
    return engine.dialect.name == "sqlite" and checked_in is not None and checked_in() > 0


@contextmanager
def sqlite_read(engine: Engine) -> Iterator[Any]:
    """SQLite: the DBAPI connection of a pooled connection, in one read transaction (BEGIN ... ROLLBACK: one
    snapshot), for a hot read that runs SQL text compiled once: without a SQLAlchemy Connection, whose events,
    compiled-cache lookup and result processing cost several times SQLite's own lookup (figure 2 of
    scripts/bench.py). pysqlite keeps each SQL text's prepared statement on its connection. A driver error is
    raised as SQLAlchemy's DBAPIError, as from any statement; the pool's reset on return (a rollback) invalidates
    a connection that cannot roll back."""
    module = sqlite_module()
    try:
        pooled = engine.raw_connection()
    except module.Error as exc:  # opening a new pool connection (its pragmas), as Engine.connect() wraps it
        raise DBAPIError.instance(None, None, exc, module.Error) from None
    try:
        raw = pooled.driver_connection
        try:
            raw.execute("BEGIN")
            try:
                yield raw
            finally:
                raw.execute("ROLLBACK")
        except module.Error as exc:
            raise DBAPIError.instance(None, None, exc, module.Error) from None
    finally:
        pooled.close()


@contextmanager
def _foreign_keys_off(conn: Connection) -> Iterator[Any]:
    """SQLite: foreign keys off on this connection for the block, which begins and ends its own transaction (the
    pragma changes nothing inside one), then on again before the connection goes back to the pool; one whose
    pragma cannot be set back is invalidated instead, never pooled without its checks. Yields the DBAPI
    connection; a driver error is raised as SQLAlchemy's, as from any statement."""
    raw = conn.connection.driver_connection
    module = sqlite_module()
    try:
        raw.execute("PRAGMA foreign_keys = OFF")
    except module.Error as exc:
        conn.invalidate()
        raise DBAPIError.instance("PRAGMA foreign_keys = OFF", None, exc, module.Error) from None
    try:
        yield raw
    finally:
        try:
            raw.execute("PRAGMA foreign_keys = ON")
        except module.Error:
            conn.invalidate()


def upgrade_to_head(engine: Engine, revision: str = "head") -> None:
    """Upgrade under a lock, so processes opening a brand-new database at once all succeed and migrate it once."""
    if revision == "head" and current_revision(engine) == SCHEMA_HEAD:
        return
    from alembic import command
    from alembic.script import ScriptDirectory

    cfg = _alembic_config()
    script = ScriptDirectory.from_config(cfg)
    head = script.get_current_head()
    current = current_revision(engine)
    if revision == "head" and current == head:
        return
    if current is not None and current not in {rev.revision for rev in script.walk_revisions()}:
        raise DatabaseUnavailable(
            f"database schema revision {current!r} is newer than this tracker knows: upgrade tracker"
        )
    with _migration_connection(engine) as conn, ExitStack() as stack:
        if engine.dialect.name == "postgresql":
            from .postgres import long_statements

            # An index built on a big table may outlast TRACKER_DB_TIMEOUT, and so may waiting for another
            # process's migration (the lock below).
            stack.enter_context(long_statements(conn, MIGRATION_TIMEOUT_S))
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def downgrade(engine: Engine, revision: str) -> None:
    from alembic import command

    cfg = _alembic_config()
    with _migration_connection(engine) as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


@contextmanager
def _migration_connection(engine: Engine) -> Iterator[Connection]:
    """write_connection() for a migration. On SQLite with foreign keys off, as SQLite's procedure for changing a
    table requires (0005 rebuilds operations: with them on, dropping the old table would delete the rows that
    refer to it). The pragma changes nothing inside a transaction, so it is set before BEGIN and set back before
    the connection returns to the pool."""
    with engine.connect().execution_options(write=True) as conn:
        if engine.dialect.name != "sqlite":
            with conn.begin():
                yield conn
            return
        with _foreign_keys_off(conn), conn.begin():
            yield conn
            # SQLite's procedure, last step: with the checks off, nothing stopped a change that broke a
            # reference; find it before the commit, so the database stays as it was.
            broken = conn.exec_driver_sql("PRAGMA foreign_key_check").first()
            if broken is not None:
                raise DatabaseUnavailable(f"migration left a broken reference in table {broken[0]}; nothing was changed")
