"""`tracker serve --http` in a child process on 127.0.0.1, for tests and benchmarks: started on port 0, its URL read
from the line it prints on stderr once it listens (`tracker serve: listening on http://127.0.0.1:PORT/mcp`).

Its stderr goes to a log file, not a pipe, so a server that logs a lot never blocks on a reader that stopped reading;
the file is also what a failure shows. TRACKER_HTTP_TOKENS is removed from its environment unless given: without a
tokens file a loopback server serves without authentication, which is what a client with no token needs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from .env import child_env

LISTENING = re.compile(r"http://127\.0\.0\.1:(\d+)/mcp")
START_TIMEOUT_S = 60.0  # migrating a fresh file and importing the SDK take seconds on a loaded 2-core machine
STOP_TIMEOUT_S = 10.0


def serve_http_command(address: str = "127.0.0.1:0", args: Sequence[str] = ()) -> list[str]:
    """The command that serves MCP over Streamable HTTP (the one place that names it); port 0 picks a free one."""
    return [sys.executable, "-m", "tracker", "serve", "--http", address, *args]


def task_server_command(address: str = "127.0.0.1:0", db: Path | str | None = None) -> list[str]:
    """The tasks fixture server (tracker.testing.task_server) over HTTP; without `db`, the caller adds --db."""
    return [sys.executable, "-m", "tracker.testing.task_server", "--http", address, *(["--db", str(db)] if db else [])]


def _directory_of(db: Path | str) -> str | None:
    """A SQLite file's directory (the server runs there); None for a database URL (PostgreSQL): this one's."""
    return None if "://" in str(db) else str(Path(db).parent)


class HttpServerStartError(RuntimeError):
    """The HTTP server exited, or printed no listening URL in time; the message ends with its stderr."""


class HttpServer:
    """One `tracker serve --http` process on `db` (`args` added to the command, `env` to child_env(db)): `url` and
    `port` once it listens (the first use waits, so several servers can start at once); stop() (or leaving the
    `with`) ends it. `log` is where its stderr goes (default: a temporary file, removed on stop)."""

    def __init__(
        self,
        db: Path | str,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
        address: str = "127.0.0.1:0",
        start_timeout_s: float = START_TIMEOUT_S,
        command: Sequence[str] | None = None,
    ) -> None:
        """`command`: serve with this instead of `tracker serve --http` (e.g. task_server_command())."""
        environment = child_env(db, **(env or {}))
        if "TRACKER_HTTP_TOKENS" not in (env or {}):
            environment.pop("TRACKER_HTTP_TOKENS", None)
        self._own_log = log is None
        if log is None:
            handle, name = tempfile.mkstemp(prefix="tracker-serve-http-", suffix=".log")
            os.close(handle)
            log = Path(name)
        self.log = log
        self.command = list(command) if command is not None else serve_http_command(address, args)
        self._start_timeout_s = start_timeout_s
        self._port: int | None = None
        self._kept = ""  # its stderr once the log is removed
        with log.open("ab") as stderr:
            self.process = subprocess.Popen(
                self.command, env=environment, cwd=_directory_of(db), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def port(self) -> int:
        if self._port is None:
            try:
                self._port = self._wait_for_port(self._start_timeout_s)
            except BaseException:
                self.stop()
                raise
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def wait_listening(self) -> str:
        return self.url

    @property
    def stderr(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return self._kept

    def _wait_for_port(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while True:
            found = LISTENING.search(self.stderr)
            if found:
                return int(found.group(1))
            if self.process.poll() is not None:
                raise HttpServerStartError(
                    f"{' '.join(self.command)} exited with {self.process.returncode} before listening:\n{self.stderr}"
                )
            if time.monotonic() > deadline:
                raise HttpServerStartError(
                    f"{' '.join(self.command)} printed no listening URL within {timeout_s:.0f} s:\n{self.stderr}"
                )
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL to its process group, the way a machine loses a process (no cleanup), then reap it."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def terminate(self) -> None:
        """SIGTERM only (a test of the graceful shutdown then waits with wait())."""
        self.process.terminate()

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        """SIGTERM (a clean shutdown: the database is closed), SIGKILL to its process group after STOP_TIMEOUT_S."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # not yet reaped, so the group is still the server's
                self.process.wait()
        if self._own_log:
            self._kept = self.stderr
            self.log.unlink(missing_ok=True)

    def __enter__(self) -> HttpServer:
        self.wait_listening()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
