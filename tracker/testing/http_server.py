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


def serve_http_command() -> list[str]:
    """The command that serves MCP over Streamable HTTP on a free loopback port (the one place that names it)."""
    return [sys.executable, "-m", "tracker", "serve", "--http", "127.0.0.1:0"]


class HttpServerStartError(RuntimeError):
    """The HTTP server exited, or printed no listening URL in time; the message ends with its stderr."""


class HttpServer:
    """One `tracker serve --http` process on `db`: `url` once it listens; stop() (or leaving the `with`) ends it.

    `env` is added to child_env(db); `log` is where its stderr goes (default: a temporary file, removed on stop)."""

    def __init__(
        self,
        db: Path | str,
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
        command: Sequence[str] | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        environment = child_env(db, **(env or {}))
        if "TRACKER_HTTP_TOKENS" not in (env or {}):
            environment.pop("TRACKER_HTTP_TOKENS", None)
        self._own_log = log is None
        if log is None:
            handle, name = tempfile.mkstemp(prefix="tracker-serve-http-", suffix=".log")
            os.close(handle)
            log = Path(name)
        self.log = log
        self.command = list(command or serve_http_command())
        with log.open("ab") as stderr:
            self.process = subprocess.Popen(
                self.command, env=environment, cwd=str(Path(db).parent), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
            )
        try:
            self.port = self._wait_for_port(start_timeout_s)
        except BaseException:
            self.stop()
            raise
        self.url = f"http://127.0.0.1:{self.port}/mcp"

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def _wait_for_port(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while True:
            found = LISTENING.search(self.stderr())
            if found:
                return int(found.group(1))
            if self.process.poll() is not None:
                raise HttpServerStartError(
                    f"{' '.join(self.command)} exited with {self.process.returncode} before listening:\n{self.stderr()}"
                )
            if time.monotonic() > deadline:
                raise HttpServerStartError(
                    f"{' '.join(self.command)} printed no listening URL within {timeout_s:.0f} s:\n{self.stderr()}"
                )
            time.sleep(0.02)

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
            self.log.unlink(missing_ok=True)

    def __enter__(self) -> HttpServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
