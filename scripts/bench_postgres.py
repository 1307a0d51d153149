"""The PostgreSQL side of figures 1-4 and 6 (`./dev bench --backend postgresql`): a throwaway server at
PostgreSQL's default durability (fsync and synchronous_commit on, unlike the tests' server), its databases, the
large status database of figures 2 and 3 loaded with COPY, and the raw psycopg baselines (COPY, executemany, a
primary-key lookup, one DELETE) that the shared figure functions compare tracker with."""

from __future__ import annotations

import itertools
import random
import statistics
import time
from datetime import datetime, timezone
from typing import Any

import psycopg

from bench_data import _items, _operations, item_counts, OPERATION_COLUMNS
from tracker import Settings, Tracker
from tracker.testing.postgres import PostgresServer, find_bindir

ITEM_COLUMNS = "operation_id, ok, item_id, row_number, error"


def conninfo(url: str) -> str:
    """The libpq URI of a tracker database URL (postgresql+psycopg://...)."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


class BenchPostgres:
    """A PostgreSQL server for one benchmark run, started on 127.0.0.1 (a free port) and removed at the end."""

    def __init__(self) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise SystemExit("bench: --backend postgresql needs the PostgreSQL server binaries (initdb, pg_ctl)")
        self.server = PostgresServer(bindir, durable=True)
        self._names = itertools.count()
        self._status: dict[tuple[int, int], str] = {}

    def __enter__(self) -> BenchPostgres:
        self.server.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.stop()

    def describe(self) -> str:
        with psycopg.connect(self.server.conninfo(), autocommit=True) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
            fsync = conn.execute("SHOW fsync").fetchone()[0]
            commit = conn.execute("SHOW synchronous_commit").fetchone()[0]
        return f"PostgreSQL {version} (fsync {fsync}, synchronous_commit {commit}, 127.0.0.1:{self.server.port})"

    def database(self, name: str, template: str | None = None) -> str:
        """The URL of a new empty database (or a copy of the database at URL `template`)."""
        source = None if template is None else template.rsplit("/", 1)[1]
        return self.server.create_database(f"{name}_{next(self._names)}", source)

    def settle(self, limit_s: float = 60.0) -> None:
        """Before a timed part: the server idle, so that work left by the previous part (autovacuum of the rows it
        inserted, dirty buffers for the checkpointer) is not done during this one."""
        deadline = time.monotonic() + limit_s
        with psycopg.connect(self.server.conninfo(), autocommit=True) as conn:
            conn.execute("CHECKPOINT")
            while time.monotonic() < deadline and conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
            ).fetchone()[0]:
                time.sleep(0.2)

    def migrated(self, name: str) -> tuple[str, str]:
        """A new database migrated by tracker, holding one running batch, for a baseline: (URL, the batch's id).
        Without autovacuum, so that the baseline's rows are not vacuumed while tracker is measured next."""
        url = self.database(name)
        with Tracker(Settings.from_env({}, db=url, reap_interval_s=0)) as tracker:
            op_id = tracker.start_batch("import").id
        with psycopg.connect(conninfo(url), autocommit=True) as conn:
            for table in ("operations", "operation_items"):
                conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = off)")
        return url, op_id

    def status_database(self, operations: int, items: int, log=print) -> str:
        """Figure 2's database of finished operations (bench_data's rows), made once per run."""
        key = (operations, items)
        if key not in self._status:
            started = time.perf_counter()
            self._status[key] = url = self.database(f"status_{operations}")
            _load(url, operations, items)
            took = time.perf_counter() - started
            log(f"  (loaded {operations:,} operations / {items:,} items with COPY in {took:.0f} s)")
        return self._status[key]

    def copy(self, url: str, name: str) -> str:
        """A copy of the database at `url` (nothing may be connected to it)."""
        new = f"{name}_{next(self._names)}"
        source = url.rsplit("/", 1)[1]
        with psycopg.connect(self.server.conninfo(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{new}" TEMPLATE "{source}" STRATEGY FILE_COPY')
        return self.server.url(new)

    def drop(self, url: str) -> None:
        """Remove a database made for one run (each copy of figure 3's is over a gigabyte at full size)."""
        with psycopg.connect(self.server.conninfo(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


def _load(url: str, operations: int, items: int) -> None:
    """The migrations make the schema; the rows go in with COPY in one transaction, with the secondary indexes and
    foreign keys dropped meanwhile and re-created from their own definitions, as bench_data does on SQLite."""
    with Tracker(Settings.from_env({}, db=url, reap_interval_s=0)):
        pass
    with psycopg.connect(conninfo(url)) as conn:
        conn.execute("SET synchronous_commit = off")  # a scratch database being built
        conn.execute("SET maintenance_work_mem = '256MB'")
        tables = "('operations'::regclass, 'operation_items'::regclass)"
        indexes = conn.execute(
            "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index"
            f" WHERE indrelid IN {tables} AND NOT indisprimary"
            " AND indexrelid NOT IN (SELECT conindid FROM pg_constraint)"
        ).fetchall()
        foreign = conn.execute(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
            f" WHERE contype = 'f' AND conrelid IN {tables}"
        ).fetchall()
        for table, name, _definition in foreign:
            conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
        for name, _definition in indexes:
            conn.execute(f"DROP INDEX {name}")
        counts = item_counts(operations, items)
        now = datetime.now(timezone.utc).replace(microsecond=0)
        with conn.cursor() as cur:
            # Two passes over the same seeded rows (operations, then their items): one COPY at a time per connection.
            with cur.copy(f"COPY operations ({OPERATION_COLUMNS}) FROM STDIN") as copy:
                for op in _operations(operations, counts, now, random.Random(20261123)):
                    copy.write_row(op)
            with cur.copy(f"COPY operation_items ({ITEM_COLUMNS}) FROM STDIN") as copy:
                for n, op in enumerate(_operations(operations, counts, now, random.Random(20261123))):
                    for row in _items(op[0], counts[n], 1):
                        copy.write_row(row)
            for _name, definition in indexes:
                cur.execute(definition)
            for table, name, definition in foreign:
                cur.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE operations")
        conn.execute("VACUUM ANALYZE operation_items")


# -- raw baselines --------------------------------------------------------------------------------------------------


def raw_insert_rate(bench: BenchPostgres, rows: list[tuple], method: str) -> float:
    """Baseline: `rows` (their operation id replaced by the batch's) into operation_items of a fresh migrated
    database, the same table tracker writes (same indexes, foreign key, identity), with plain psycopg: one COPY or
    one executemany, in one transaction. Rows/s."""
    url, op_id = bench.migrated(f"raw_{method}")
    rows = [(op_id, *row[1:]) for row in rows]
    bench.settle()
    with psycopg.connect(conninfo(url)) as conn, conn.cursor() as cur:
        started = time.perf_counter()
        _insert_items(cur, rows, method)
        conn.commit()
        elapsed = time.perf_counter() - started
        assert cur.execute("SELECT count(*) FROM operation_items").fetchone()[0] == len(rows)
    return len(rows) / elapsed


def _insert_items(cur: psycopg.Cursor, rows: list[tuple], method: str) -> None:
    """Rows into operation_items with plain psycopg: one COPY, or one executemany."""
    if method == "copy":
        with cur.copy(f"COPY operation_items ({ITEM_COLUMNS}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    else:
        cur.executemany(f"INSERT INTO operation_items ({ITEM_COLUMNS}) VALUES (%s, %s, %s, %s, %s)", rows)


GROUP_SIZES = (1, 5, 10, 20, 50, 100, 1_000, 5_000)  # a flush group is up to MAX_BUFFER (5,000) items, often fewer


def copy_per_executemany(bench: BenchPostgres, rows: list[tuple], sizes=GROUP_SIZES) -> dict[int, float]:
    """For each group size: the median time of a flush-like transaction (the counter UPDATE, the group's rows, the
    COMMIT) with COPY over the same with executemany, the two alternating, on one migrated database. Below 1, COPY
    is faster."""
    url, op_id = bench.migrated("groups")
    ratios = {}
    with psycopg.connect(conninfo(url)) as conn:
        def group(method: str, size: int, start: int) -> float:
            batch = [(op_id, *row[1:]) for row in rows[start:start + size]]
            started = time.perf_counter()
            with conn.cursor() as cur:
                cur.execute("UPDATE operations SET succeeded_count = succeeded_count + %s WHERE id = %s", (size, op_id))
                _insert_items(cur, batch, method)
            conn.commit()
            return time.perf_counter() - started

        for size in sizes:
            times: dict[str, list[float]] = {"copy": [], "executemany": []}
            for rep in range(max(6, min(60, 20_000 // size))):
                for method in (("copy", "executemany") if rep % 2 else ("executemany", "copy")):
                    times[method].append(group(method, size, (rep * size) % max(1, len(rows) - size)))
            ratios[size] = statistics.median(times["copy"]) / statistics.median(times["executemany"])
    return ratios


def sample_ids(url: str, count: int, seed: int = 2) -> list[str]:
    """`count` operation ids picked uniformly at random (with repeats allowed, as polls are)."""
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        last = conn.execute("SELECT count(*) FROM operations").fetchone()[0]
        rng = random.Random(seed)
        ranks = [rng.randint(1, last) for _ in range(count)]
        by_rank = dict(conn.execute(
            "SELECT rank, id FROM (SELECT row_number() OVER (ORDER BY id) AS rank, id FROM operations) AS ranked"
            " WHERE rank = ANY(%s)", (sorted(set(ranks)),),
        ).fetchall())
    return [by_rank[r] for r in ranks]


def touch(url: str, ids: list[str]) -> None:
    """Read every sampled operation and its first items once, untimed: all the measures find the same pages cached."""
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        for op_id in ids:
            conn.execute("SELECT * FROM operations WHERE id = %s", (op_id,)).fetchall()
            conn.execute(
                "SELECT * FROM operation_items WHERE operation_id = %s ORDER BY ok, seq LIMIT 100", (op_id,)
            ).fetchall()


def raw_lookup_ms(url: str, ids: list[str]) -> list[float]:
    """Baseline: a primary-key lookup of the operation row, each its own statement on one autocommit psycopg
    connection (prepared by psycopg after its fifth execution, as tracker's statements are)."""
    times = []
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        for op_id in ids:
            started = time.perf_counter()
            row = conn.execute("SELECT * FROM operations WHERE id = %s", (op_id,)).fetchone()
            times.append((time.perf_counter() - started) * 1000)
            assert row is not None
    return times


def raw_delete(url: str, cutoff: datetime) -> tuple[int, float]:
    """Baseline: one DELETE of every expired operation (its items go through the ON DELETE CASCADE foreign key), in
    one transaction. (rows, seconds)."""
    expired = "status IN ('completed', 'failed', 'cancelled') AND completed_at < %s"
    select_items = (
        f"SELECT count(*) FROM operation_items WHERE operation_id IN (SELECT id FROM operations WHERE {expired})"
    )
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        conn.execute("SET statement_timeout = 0")
        items = conn.execute(select_items, (cutoff,)).fetchone()[0]
        started = time.perf_counter()
        operations = conn.execute(f"DELETE FROM operations WHERE {expired}", (cutoff,)).rowcount
        elapsed = time.perf_counter() - started
        assert conn.execute(select_items, (cutoff,)).fetchone()[0] == 0
    return operations + items, elapsed



def raw_connection(url: str) -> psycopg.Connection:
    """A plain autocommit psycopg connection, for the status read's baselines."""
    return psycopg.connect(conninfo(url), autocommit=True)


def raw_lookup(conn: psycopg.Connection):  # noqa: ANN201
    """Baseline: a primary-key lookup of the whole operation row, its own statement (prepared by psycopg after its
    fifth execution, as tracker's statements are)."""

    def lookup(op_id: str) -> Any:
        row = conn.execute("SELECT * FROM operations WHERE id = %s", (op_id,)).fetchone()
        assert row is not None
        return row

    return lookup


def raw_same_statement(conn: psycopg.Connection):  # noqa: ANN201
    """Baseline: the one statement tracker's status read runs on PostgreSQL (tracker.store.operations, a viewer
    who sees every operation), compiled for psycopg as tracker compiles it, with the same parameters."""
    from sqlalchemy.dialects.postgresql import psycopg as dialect

    from tracker.status import STATUS_PAGE_FAILURES, STATUS_PAGE_IDS
    from tracker.store.operations import POSTGRES_STATUS_BY_ID

    sql = str(POSTGRES_STATUS_BY_ID["all"].compile(dialect=dialect.dialect()))
    limits = {"succeeded_limit": STATUS_PAGE_IDS + 1, "failed_limit": STATUS_PAGE_FAILURES + 1}

    def read(op_id: str) -> Any:
        row = conn.execute(sql, {"operation_id": op_id, **limits}).fetchone()
        assert row is not None
        return row

    return read
