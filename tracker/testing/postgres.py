"""A real PostgreSQL server for tests and benchmarks: initdb in a temporary directory, listening on 127.0.0.1 on a
free port (and a unix socket in that directory), stopped and removed at the end. The tests' server runs with
fsync off; a durable one (the benchmarks') keeps PostgreSQL's defaults, fsync and synchronous_commit on. As root
(CI), the server runs as the `postgres` system user, since initdb refuses root."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def find_bindir() -> Path | None:
    for candidate in [shutil.which("pg_ctl"), *sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)]:
        if candidate and Path(candidate).resolve().with_name("initdb").exists():
            return Path(candidate).resolve().parent
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    def __init__(self, bindir: Path, durable: bool = False) -> None:
        self.bindir = bindir
        self.durable = durable
        self.root = Path(tempfile.mkdtemp(prefix="tracker-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.user = None
        if os.geteuid() == 0:
            self.user = pwd.getpwnam("postgres")
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)

    def _run(self, *args: str) -> None:
        command = [str(a) for a in args]
        if self.user is not None:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=120, cwd=self.root)

    def start(self) -> None:
        self._run(self.bindir / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -c max_connections=200"
        if not self.durable:
            options += " -c fsync=off"  # a test's rows need not survive a power cut
        self._run(self.bindir / "pg_ctl", "-D", self.data, "-o", options, "-l", self.root / "log", "-w", "start")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("PostgreSQL did not start listening")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def conninfo(self, database: str = "postgres") -> str:
        """The libpq connection string of `database`, for a plain psycopg connection."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database}"

    def create_database(self, name: str, template: str | None = None) -> str:
        """A new database (a copy of `template` when given, which nothing may be connected to); returns its URL."""
        import psycopg

        copy = f' TEMPLATE "{template}"' if template else ""
        with psycopg.connect(self.conninfo(), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"{copy}')
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run(self.bindir / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
