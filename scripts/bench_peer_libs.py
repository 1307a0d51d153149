"""The libraries of figures P1-P3 (`./dev bench --peers`), each used the way its own user would use it to keep the
progress and the outcome of a long task that processes items, so that a poller can read them:

- tracker: `Tracker.start_batch`, then `record_success` / `record_failure` per item and `finish()`; the poller
  reads `tracker.status.StatusService.batch_status` (what the get_batch_status tool and figure 2 call).
- Celery's database result backend (`result_backend = "db+sqlite:///..."`, `celery.backends.database
  .DatabaseBackend`): the task calls `update_state(state="PROGRESS", meta=...)` every PROGRESS_EVERY items, which
  is `backend.store_result(task_id, meta, "PROGRESS")`, and returns its outcome, which the worker stores with
  `backend.mark_as_done(task_id, outcome)`; the poller calls `backend.get_task_meta(task_id)` (what
  `AsyncResult(task_id).info` does). The meta carries the counts and the id lists (every success's id, every
  failure's id, row number and error), which is what a caller needs to see which items went wrong.
- huey's `SqliteStorage`: the task puts the same JSON blob with `storage.put_data(task_id, blob)` every
  PROGRESS_EVERY items (what `huey.put(key, value)` does, with JSON instead of pickle) and its outcome with
  `put_data(task_id, blob, is_result=True)`; the poller calls `storage.peek_data(task_id)` and decodes the JSON.

All three run on the SQLite build tracker uses (pysqlite3) with tracker's pragmas (WAL, synchronous NORMAL) and a
30 s busy timeout, so the figures compare the libraries, not the SQLite builds or durability settings. Celery
gets them through its own settings (`database_engine_options`, `database_engine_callback`); huey through a
subclass of SqliteStorage whose only change is the connection it opens.

Celery opens a new engine (and a new SQLite connection) for every backend call except in the child processes of
its prefork worker pool, where a fork hook makes it keep one: the task's writes run as in such a child (role
"worker"), and a poller outside the worker (a web or MCP server calling AsyncResult) as a client (role "client").

Run as a script, this module is the child process of the figures: a poller (`reader`) or a paced recorder
(`writer`) on one library."""

from __future__ import annotations

import json
import random
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

from bench_common import percentile, sample_keys  # (first: puts this checkout on sys.path)
from tracker import Settings, Tracker
from tracker.db import sqlite_module
from tracker.status import StatusService

PROGRESS_EVERY = 1_000  # items between two progress writes of a Celery or huey task
RETENTION_S = 3600.0  # tracker's default retention; Celery's result_expires is set to the same
BUSY_TIMEOUT_S = 30  # tracker's busy timeout, given to every library
HUEY_NAME = "bench"  # huey's queue name (its results are keyed by it)
PEERS = ("celery", "huey")
LIBRARIES = ("tracker", *PEERS)
ERROR = "email is not a valid address"


class Task(Protocol):
    id: str

    def success(self, item_id: str) -> None: ...
    def failure(self, error: str, item_id: str, row_number: int) -> None: ...
    def finish(self) -> None: ...


class Library(Protocol):
    name: str

    def start_task(self, total: int) -> Task: ...
    def status(self, task_id: str) -> Any: ...
    def counts(self, answer: Any) -> tuple[int, int]: ...
    def close(self) -> None: ...


def missing_peers() -> list[str]:
    """The peers whose package is missing (`pip install -e '.[bench]'` brings them)."""
    missing = []
    for name in PEERS:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    return missing


def versions() -> dict[str, str]:
    import celery
    import huey

    return {"celery": celery.__version__, "huey": huey.__version__}


def outcome(status: str, total: int, succeeded: list[str], failures: list[dict]) -> dict:
    """The progress or outcome a Celery or huey task keeps: counts and the id lists."""
    return {
        "status": status, "total": total, "succeeded": len(succeeded), "failed": len(failures),
        "succeeded_ids": succeeded, "failures": failures,
    }


class _BlobTask:
    """A Celery or huey task's side of recording: the lists live in memory and are written whole every
    PROGRESS_EVERY items (`write(outcome, final)`)."""

    def __init__(self, write, total: int) -> None:  # noqa: ANN001
        self.id = str(uuid.uuid4())  # both libraries' task ids are uuid4 strings
        self._write, self._total = write, total
        self._succeeded: list[str] = []
        self._failures: list[dict] = []

    def success(self, item_id: str) -> None:
        self._succeeded.append(item_id)
        self._progress()

    def failure(self, error: str, item_id: str, row_number: int) -> None:
        self._failures.append({"item_id": item_id, "row_number": row_number, "error": error})
        self._progress()

    def _progress(self) -> None:
        if (len(self._succeeded) + len(self._failures)) % PROGRESS_EVERY == 0:
            self._write(self.id, outcome("running", self._total, self._succeeded, self._failures), False)

    def finish(self) -> None:
        self._write(self.id, outcome("completed", self._total, self._succeeded, self._failures), True)


# -- tracker --------------------------------------------------------------------------------------------------------


class _TrackerTask:
    def __init__(self, handle) -> None:  # noqa: ANN001
        self.handle, self.id = handle, handle.id

    def success(self, item_id: str) -> None:
        self.handle.record_success(item_id)

    def failure(self, error: str, item_id: str, row_number: int) -> None:
        self.handle.record_failure(error, item_id=item_id, row_number=row_number)

    def finish(self) -> None:
        self.handle.finish()


class TrackerLibrary:
    name = "tracker"

    def __init__(self, path: Path, role: str = "worker") -> None:
        self.tracker = Tracker(Settings.from_env({}, db=str(path), reap_interval_s=0))
        self.service = StatusService(self.tracker)

    def start_task(self, total: int) -> Task:
        return _TrackerTask(self.tracker.start_batch("import", total=total))

    def status(self, task_id: str) -> Any:
        return self.service.batch_status(task_id)

    def counts(self, answer: Any) -> tuple[int, int]:
        operation = answer["operation"]
        return operation["succeeded_count"], operation["failed_count"]

    def close(self) -> None:
        self.tracker.close()


# -- Celery ---------------------------------------------------------------------------------------------------------


def celery_sqlite_pragmas(engine) -> None:  # noqa: ANN001 - Celery's database_engine_callback
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_conn, _record) -> None:  # noqa: ANN001
        dbapi_conn.execute("PRAGMA journal_mode = WAL")
        dbapi_conn.execute("PRAGMA synchronous = NORMAL")


def celery_backend(path: Path, role: str):  # noqa: ANN201
    from celery import Celery

    app = Celery("bench", backend=f"db+sqlite:///{path}")
    engine_options = dict(app.conf.database_engine_options or {})  # its defaults: pool_pre_ping, pool_recycle
    engine_options.update(module=sqlite_module(), connect_args={"timeout": BUSY_TIMEOUT_S})
    app.conf.update(
        database_engine_options=engine_options,
        database_engine_callback=celery_sqlite_pragmas,
        result_expires=timedelta(seconds=RETENTION_S),
    )
    backend = app.backend
    if role == "worker":
        backend.session_manager._after_fork()  # what kombu's after-fork hook does in each prefork pool child
    return backend


class CeleryLibrary:
    name = "celery"

    def __init__(self, path: Path, role: str = "worker") -> None:
        self.backend = celery_backend(path, role)

    def start_task(self, total: int) -> Task:
        return _BlobTask(self._write, total)

    def _write(self, task_id: str, meta: dict, final: bool) -> None:
        if final:
            self.backend.mark_as_done(task_id, meta)  # the worker, storing the task's return value
        else:
            self.backend.store_result(task_id, meta, "PROGRESS")  # Task.update_state(state="PROGRESS", meta=meta)

    def status(self, task_id: str) -> Any:
        return self.backend.get_task_meta(task_id, cache=False)

    def counts(self, answer: Any) -> tuple[int, int]:
        result = answer.get("result") or {}
        return result.get("succeeded", 0), result.get("failed", 0)

    def close(self) -> None:
        self.backend.session_manager.invalidate(self.backend.url)


# -- huey -----------------------------------------------------------------------------------------------------------


def huey_storage(path: Path):  # noqa: ANN201
    from huey.storage import SqliteStorage

    module = sqlite_module()

    class Storage(SqliteStorage):
        """SqliteStorage on tracker's SQLite build and pragmas; everything else is huey's."""

        operational_error = module.OperationalError
        integrity_error = module.IntegrityError

        def _create_connection(self):  # noqa: ANN202
            conn = module.connect(self.filename, timeout=self._timeout, check_same_thread=False)
            conn.isolation_level = None  # autocommit, as huey's own connection
            self._set_journal_mode(conn)
            conn.execute("pragma cache_size=%d" % (-1000 * self._cache_mb))
            conn.execute("pragma synchronous=NORMAL")
            return conn

    return Storage(name=HUEY_NAME, filename=str(path), timeout=BUSY_TIMEOUT_S)


class HueyLibrary:
    name = "huey"

    def __init__(self, path: Path, role: str = "worker") -> None:
        self.storage = huey_storage(path)

    def start_task(self, total: int) -> Task:
        return _BlobTask(self._write, total)

    def _write(self, task_id: str, blob: dict, final: bool) -> None:
        self.storage.put_data(task_id, json.dumps(blob).encode(), is_result=final)

    def status(self, task_id: str) -> Any:
        from huey.constants import EmptyData

        data = self.storage.peek_data(task_id)
        return None if data is EmptyData else json.loads(bytes(data))

    def counts(self, answer: Any) -> tuple[int, int]:
        return (answer["succeeded"], answer["failed"]) if answer else (0, 0)

    def close(self) -> None:
        self.storage.close()


def open_library(name: str, path: Path, role: str = "worker") -> Library:
    return {"tracker": TrackerLibrary, "celery": CeleryLibrary, "huey": HueyLibrary}[name](path, role)


# -- stored results: generated, cached, sampled, purged -------------------------------------------------------------


def stored_outcomes(counts: list[int], now: datetime) -> Any:
    """(task id, JSON outcome, date done) of finished tasks, oldest first, over the two days before `now` minus 2
    hours (all past the retention), with the item ids, failures and counts of bench_data's operations."""
    rng = random.Random(20261201)
    window = timedelta(days=2)
    first = now - timedelta(hours=2) - window
    row = 1
    for n, count in enumerate(counts):
        succeeded, failures = [], []
        for k in range(count):
            if k % 10 == 9:
                failures.append({"item_id": f"rec_{row:08x}", "row_number": row, "error": f"row {row}: {ERROR}"})
            else:
                succeeded.append(f"rec_{row:08x}")
            row += 1
        done = first + window * (n / len(counts)) + timedelta(milliseconds=5 + count * 3)
        task_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        yield task_id, json.dumps(outcome("completed", count, succeeded, failures)).encode(), done


def generate_peer_database(name: str, path: Path, counts: list[int]) -> None:
    """The library makes its own schema; the rows go in with raw executemany in one transaction."""
    if name == "celery":
        backend = celery_backend(path, "client")
        backend.ResultSession().close()  # creates the tables (celery_taskmeta, celery_tasksetmeta)
        backend.session_manager.invalidate(backend.url)
        insert = "INSERT INTO celery_taskmeta (task_id, status, result, date_done) VALUES (?, 'SUCCESS', ?, ?)"

        def row(task_id: str, blob: bytes, done: datetime) -> tuple:
            return task_id, blob, done.strftime("%Y-%m-%d %H:%M:%S.%f")  # SQLAlchemy's DateTime text on SQLite
    else:
        huey_storage(path).close()  # SqliteStorage() creates its tables
        insert = f"INSERT INTO kv (queue, key, value) VALUES ('{HUEY_NAME}', ?, ?)"

        def row(task_id: str, blob: bytes, done: datetime) -> tuple:
            return task_id, blob
    conn = sqlite_module().connect(str(path), isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")  # a scratch file being built
    conn.execute("PRAGMA cache_size = -1000000")
    conn.execute("BEGIN IMMEDIATE")
    now = datetime.now(timezone.utc).replace(microsecond=0, tzinfo=None)
    chunk: list[tuple] = []
    for values in stored_outcomes(counts, now):
        chunk.append(row(*values))
        if len(chunk) == 100_000:
            conn.executemany(insert, chunk)
            chunk = []
    conn.executemany(insert, chunk)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


RESULT_TABLES = {"tracker": ("operations", "id"), "celery": ("celery_taskmeta", "task_id"), "huey": ("kv", "key")}


def stored_count(name: str, path: Path) -> int:
    table, _key = RESULT_TABLES[name]
    conn = sqlite_module().connect(str(path))
    try:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


def sample_ids(name: str, path: Path, count: int, seed: int) -> list[str]:
    """`count` task ids picked uniformly at random (with repeats allowed, as polls are)."""
    return sample_keys(path, *RESULT_TABLES[name], count, seed)


WRITER_PREFIX = "live_"  # item ids of the recorder running during a purge: its rows are not the stored results


def purge(name: str, path: Path, stored: int, stop=None) -> tuple[int, int, float, bool]:  # noqa: ANN001
    """The library's own purge of the `stored` (expired) results in the file: (results purged, rows deleted,
    seconds, whether it ran to the end). `stop` (a threading.Event) ends tracker's purge early, after a whole chunk; the peers' purges
    are one statement each."""
    if name == "tracker":
        from tracker.db import open_engine
        from tracker.reaper import purge as tracker_purge

        engine = open_engine(Settings.from_env({}, db=str(path), reap_interval_s=0))
        try:
            summary = tracker_purge(engine, RETENTION_S, stop=stop)
        finally:
            engine.dispose()
        return summary.operations, summary.operations + summary.items, summary.seconds, not (stop and stop.is_set())
    if name == "celery":
        backend = celery_backend(path, "client")
        started = time.perf_counter()
        backend.cleanup()  # what the celery.backend_cleanup task (celery beat, daily) runs: one DELETE of expired rows
        elapsed = time.perf_counter() - started
        backend.session_manager.invalidate(backend.url)
        table, blob = "celery_taskmeta", "result"
    else:
        storage = huey_storage(path)
        storage.conn  # noqa: B018 - connected before the clock starts, as a running consumer's storage is
        started = time.perf_counter()
        storage.flush_results()  # SqliteStorage keeps no expiry time: this deletes all of the queue's results
        elapsed = time.perf_counter() - started
        storage.close()
        table, blob = "kv", "value"
    conn = sqlite_module().connect(str(path))
    try:  # what is left of the stored results (the recorder's rows aside)
        left = conn.execute(f"SELECT count(*) FROM {table} WHERE {blob} NOT LIKE '%\"{WRITER_PREFIX}%'").fetchone()[0]
    finally:
        conn.close()
    return stored - left, stored - left, elapsed, True


# -- child processes ------------------------------------------------------------------------------------------------


def run_reader(name: str, path: Path, stop_file: Path, interval_s: float) -> dict:
    """Poll one task's status every interval_s until stop_file exists; then one last read for its counts."""
    library = open_library(name, path, role="client")
    print("ready", flush=True)
    task_id = sys.stdin.readline().strip()
    times = []
    next_at = time.perf_counter()
    while not stop_file.exists():
        started = time.perf_counter()
        library.status(task_id)
        times.append((time.perf_counter() - started) * 1000)
        next_at += interval_s
        time.sleep(max(0.0, next_at - time.perf_counter()))
    final = library.counts(library.status(task_id))
    library.close()
    return {"polls": len(times), "p50_ms": percentile(times, 0.5) if times else 0.0,
            "worst_ms": max(times, default=0.0), "final": final}


def run_writer(name: str, path: Path, stop_file: Path, rate: float, task_items: int) -> dict:
    """Record items at `rate` items/s into tasks of task_items items each (every tenth a failure) until stop_file
    exists; every library call is timed, the task's start and finish included."""
    library = open_library(name, path, role="worker")
    print("ready", flush=True)
    calls = tasks = errors = slow = 0
    worst = 0.0
    first_error = None
    began = time.perf_counter()

    def timed(fn, *args, **kwargs):  # noqa: ANN001, ANN202
        nonlocal worst, slow, errors, first_error
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - counted and reported
            errors += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"[:200]
        finally:
            took = time.perf_counter() - started
            worst = max(worst, took)
            slow += took > 0.1

    while not stop_file.exists():
        task = timed(library.start_task, task_items)
        if task is None:
            continue
        for k in range(task_items):
            if k % 10 == 9:
                timed(task.failure, ERROR, f"{WRITER_PREFIX}{calls:08x}", k + 1)
            else:
                timed(task.success, f"{WRITER_PREFIX}{calls:08x}")
            calls += 1
            if calls % 100 == 0:
                time.sleep(max(0.0, began + calls / rate - time.perf_counter()))  # the work between items
        timed(task.finish)
        tasks += 1
    library.close()
    return {"calls": calls, "tasks": tasks, "worst_ms": worst * 1000, "slow": slow, "errors": errors,
            "first_error": first_error}


def main(argv: list[str]) -> int:
    role, name, path, stop_file = argv[0], argv[1], Path(argv[2]), Path(argv[3])
    if role == "reader":
        report = run_reader(name, path, stop_file, float(argv[4]))
    else:
        report = run_writer(name, path, stop_file, float(argv[4]), int(argv[5]))
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
