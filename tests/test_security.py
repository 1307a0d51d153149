"""Security: unguessable ids, the upstream API key kept out of logs, the database and every answer, and only
http(s) upstream base URLs. (The database file's mode 0600 is tested in test_database_location.py.)

The key tests drive real runs through `tracker -v serve` (debug logging on, so every log line is looked at)
against an upstream on 127.0.0.1: the fake grid API, and a hostile one that echoes the key back in everything
it answers. Then they grep the server's stderr, every text column of every table, the raw bytes of the
database and its -wal/-shm files, and the text of every tool answer. The echoed-body and base-URL cases run
`tracker serve` in process and grep its debug log records instead (httpcore at INFO, as `tracker -v` sets it;
the header case, a subprocess, is what tests that setting)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tracker import InvalidInput, Settings
from tracker.db import open_engine, sqlite_module
from tracker.ids import new_operation_id
from tracker.remote import RunsService

from .conftest import FakeUpstreamProcess
from .sessions import SyncToolClient, sync_served, sync_session
from .sessions import ToolAnswer as Answer

SECRET = "sk-test-SECRET-1234"
WRONG = "sk-test-SECRET-WRONG-5678"


# -- ids ------------------------------------------------------------------------------------------------------------


def test_ids_carry_128_random_bits() -> None:
    """Every id ends in 32 hex digits; over 4,000 ids each of the 128 bits is set about half the time (a sanity
    check that all of them vary, not a proof of randomness: the ids come from the OS CSPRNG via `secrets`)."""
    ids = [new_operation_id(kind, kind_type) for kind, kind_type in [("batch", "import"), ("run", "grid_run")] * 2000]
    assert len(set(ids)) == len(ids)
    tokens = [op_id.rpartition("_")[2] for op_id in ids]
    assert all(len(token) == 32 and int(token, 16) >= 0 for token in tokens)
    values = [int(token, 16) for token in tokens]
    for bit in range(128):
        ones = sum((value >> bit) & 1 for value in values)
        # Binomial(4000, 1/2): mean 2000, sd 31.6; 2000 +- 250 is about 8 sd, so this never fails by chance.
        assert 1750 <= ones <= 2250, f"bit {bit} set in {ones} of {len(values)} ids"


# -- the API key ----------------------------------------------------------------------------------------------------


def everything_stored(db: Path) -> tuple[str, bytes]:
    """Every value of every table as text, and the raw bytes of the database files."""
    conn = sqlite_module().connect(str(db))
    try:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        text = "\n".join(repr(row) for table in tables for row in conn.execute(f'SELECT * FROM "{table}"'))
    finally:
        conn.close()
    raw = b"".join(path.read_bytes() for path in db.parent.glob(db.name + "*") if path.is_file())
    return text, raw


def assert_no_key(key: str, db: Path, log: str, answers: list[Answer]) -> None:
    text, raw = everything_stored(db)
    assert log.strip(), "the server logged nothing: run with -v so that every log line is checked"
    assert key not in log, [line for line in log.splitlines() if key in line][:3]
    assert key not in text, [line for line in text.splitlines() if key in line][:3]
    assert key.encode() not in raw
    for answer in answers:
        assert key not in answer.text, answer.text[:300]
        assert key not in json.dumps(answer.value), answer.value


def poll_until_ended(session: SyncToolClient, tool: str, args: dict[str, Any], answers: list[Answer]) -> Answer:
    deadline = time.monotonic() + 30
    while True:
        answer = session.call(tool, args)
        answers.append(answer)
        value = answer.value or {}
        status = value.get("status") or value.get("operation", {}).get("status")
        if answer.is_error or status != "running" or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


def test_the_api_key_never_reaches_logs_database_or_answers(tmp_path: Path) -> None:
    upstream = FakeUpstreamProcess(key=SECRET, run_seconds="0.2,0.6", rate_limit="0", seed=3)
    db, errlog = tmp_path / "t.db", tmp_path / "server.log"
    answers: list[Answer] = []
    try:
        env = {
            "BITSCALE_API_BASE": upstream.base_url, "BITSCALE_API_KEY": SECRET, "TRACKER_POLL_INTERVAL": "0.2",
            "BITSCALE_RATE_LIMIT": "50",  # the fake does not limit (rate_limit=0): the key's paths matter, not the pace
        }
        with sync_session(db, errlog, ("-v", "serve"), **env) as session:
            answers.append(session.call("run_grid", {"grid_id": "g1", "inputs": {"email": "a@x.io"}, "mode": "sync"}))
            started = session.call("run_grid", {"grid_id": "g1", "inputs": {"email": "b@x.io"}, "mode": "async"})
            answers.append(started)
            poll_until_ended(session, "get_run_status", {"request_id": started.value["request_id"]}, answers)
            upstream.configure(run_failure_rate=1.0)  # every run of this batch ends failed upstream
            batch = session.call(
                "run_grid_batch", {"grid_id": "g2", "rows": [{"email": f"{n}@x.io"} for n in range(4)]}
            )
            answers.append(batch)
            ended = poll_until_ended(
                session, "get_batch_status", {"batch_operation_id": batch.value["batch_operation_id"]}, answers
            )
            assert ended.value["operation"]["status"] == "failed", ended.text[:500]
            assert len(ended.value["operation"]["failed_items"]) == 4, ended.text[:3000]
            # Injected upstream failures, on submit and on status polls.
            upstream.configure(failure_rate=1.0, failure_status=500)
            answers.append(session.call("run_grid", {"grid_id": "g3", "inputs": {"email": "c@x.io"}, "mode": "sync"}))
            answers.append(session.call("get_run_status", {"request_id": "00000000-0000-0000-0000-000000000000"}))
            # The upstream now wants another key: every request is refused with 401.
            upstream.configure(failure_rate=0.0, key=WRONG)
            answers.append(session.call("run_grid", {"grid_id": "g4", "inputs": {"email": "e@x.io"}}))
            answers.append(session.call("list_operations", {"limit": 100}))
    finally:
        upstream.stop()
    errors = [a.text for a in answers if a.is_error]
    assert any("HTTP 500" in text for text in errors) and any("HTTP 401" in text for text in errors), errors
    assert_no_key(SECRET, db, errlog.read_text(), answers)


class EchoingUpstream(ThreadingHTTPServer):
    """An upstream that puts the X-API-KEY it received into every answer: error bodies, a plain-text body, a failed
    run's error, and its status answers."""

    daemon_threads = True

    def __init__(self, echo_in_headers: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        self.echo_in_headers = echo_in_headers
        self.base_url = f"http://127.0.0.1:{self.server_address[1]}/api/v1"


class _EchoHandler(BaseHTTPRequestHandler):
    def log_message(self, fmt: str, *args: Any) -> None:
        pass

    def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.server.echo_in_headers:  # type: ignore[attr-defined]
            self.send_header("X-Echo", self.headers.get("X-API-KEY", ""))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, payload: Any) -> None:
        self._send(code, json.dumps(payload).encode())

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        key = self.headers.get("X-API-KEY", "")
        grid = self.path.split("/")[-2]
        if grid == "refused":
            return self._json(401, {"error": f"invalid key {key}"})
        if grid == "broken":
            return self._json(500, {"error": f"internal error while using key {key}", "key": key})
        if grid == "text":
            return self._send(200, f"<html>your key {key} is not allowed</html>".encode(), "text/html")
        if grid == "failed":
            return self._json(200, {"mode": "sync", "status": "failed", "error": f"grid rejected key {key}"})
        return self._json(200, {"mode": "async", "status": "running", "request_id": f"req-{grid}",
                                "poll_url": f"http://x/run/status/req-{grid}?key={key}"})

    def do_GET(self) -> None:  # noqa: N802
        key = self.headers.get("X-API-KEY", "")
        request_id = self.path.rsplit("/", 1)[-1]
        if request_id == "req-later":
            return self._json(200, {"mode": "async", "status": "failed", "grid_id": "later",
                                    "error": f"failed: quota of key {key} exhausted"})
        if request_id == "req-lost":
            return self._json(404, {"error": f"no request {request_id} for key {key}"})
        return self._json(502, {"error": f"gateway saw key {key}"})


@contextmanager
def echoing_upstream(echo_in_headers: bool = False) -> Iterator[EchoingUpstream]:
    server = EchoingUpstream(echo_in_headers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def debug_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every log record at DEBUG, but httpcore's at INFO, as `tracker -v serve` logs."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="httpcore")
    return caplog


def echo_scenario(
    tmp_path: Path, log: pytest.LogCaptureFixture, grids: tuple[str, ...], request_ids: tuple[str, ...]
) -> None:
    db = tmp_path / "t.db"
    answers: list[Answer] = []
    with echoing_upstream() as upstream:
        env = {"BITSCALE_API_BASE": upstream.base_url, "BITSCALE_API_KEY": SECRET, "TRACKER_POLL_INTERVAL": "0.2"}
        with sync_served(Settings.from_env(env, db=str(db))) as session:
            for grid in grids:
                answers.append(session.call("run_grid", {"grid_id": grid, "inputs": {"email": "a@x.io"}}))
            for request_id in request_ids:
                poll_until_ended(session, "get_run_status", {"request_id": request_id}, answers)
            answers.append(session.call("list_operations", {"kind": "run", "limit": 100}))
    assert_no_key(SECRET, db, log.text, answers)


def test_an_upstream_that_echoes_the_key_cannot_make_tracker_keep_or_show_it(
    tmp_path: Path, debug_log: pytest.LogCaptureFixture
) -> None:
    """401, 500 and 404 bodies, a non-JSON body, and a failed run's error (at submit and on a later poll), each
    holding the key. (A status poll answered with 5xx is retried with backoff: the fake-upstream test covers it.)"""
    echo_scenario(tmp_path, debug_log, ("refused", "broken", "text", "lost", "failed", "later"), ("req-lost", "req-later"))


def test_a_key_echoed_in_a_response_header_stays_out_of_the_debug_log(tmp_path: Path) -> None:
    db, errlog = tmp_path / "t.db", tmp_path / "server.log"
    with echoing_upstream(echo_in_headers=True) as upstream:
        env = {"BITSCALE_API_BASE": upstream.base_url, "BITSCALE_API_KEY": SECRET}
        with sync_session(db, errlog, ("-v", "serve"), **env) as session:
            answer = session.call("run_grid", {"grid_id": "refused", "inputs": {"email": "a@x.io"}})
    assert answer.is_error
    assert SECRET not in errlog.read_text()


# -- the upstream base URL ------------------------------------------------------------------------------------------

BAD_BASES = [
    "file:///etc/passwd",
    "ftp://user:ftp-password@127.0.0.1/api",
    "gopher://127.0.0.1:70/",
    "javascript:alert(1)",
    "127.0.0.1:8080/api/v1",
    "http://",
    "//127.0.0.1/api/v1",
]


def test_only_http_and_https_upstreams_through_the_tool(tmp_path: Path, debug_log: pytest.LogCaptureFixture) -> None:
    """A bad BITSCALE_API_BASE: run_grid answers with a tool error naming the setting (never echoing the URL, which
    may hold credentials), records the run as failed, and the server stays up."""
    db = tmp_path / "t.db"
    base = "ftp://user:ftp-password@127.0.0.1/api"
    env = {"BITSCALE_API_BASE": base, "BITSCALE_API_KEY": SECRET}
    with sync_served(Settings.from_env(env, db=str(db))) as session:
        answer = session.call("run_grid", {"grid_id": "g1", "inputs": {"email": "a@x.io"}, "mode": "sync"})
        listed = session.call("list_operations", {"kind": "run"})
    assert answer.is_error and "BITSCALE_API_BASE must be an http:// or https:// URL" in answer.text, answer.text
    assert debug_log.text.strip(), "nothing was logged at DEBUG"
    assert "ftp-password" not in answer.text and "ftp-password" not in debug_log.text
    assert not listed.is_error and [op["status"] for op in listed.value["operations"]] == ["failed"]
    assert "ftp-password" not in everything_stored(db)[0]


def test_only_http_and_https_upstreams_in_the_runs_service(tmp_path: Path) -> None:
    """Every other scheme, or no host: refused before any request, the same message, the URL never repeated."""
    for n, base in enumerate(BAD_BASES):
        settings = Settings.from_env(
            {"BITSCALE_API_BASE": base, "BITSCALE_API_KEY": SECRET}, db=str(tmp_path / f"t{n}.db")
        )

        async def submit() -> str:
            engine = open_engine(settings)
            runs = RunsService(settings, engine)
            try:
                await runs.run_grid("g1", {"email": "a@x.io"}, mode="sync")
            except InvalidInput as exc:
                return str(exc)
            finally:
                await runs.aclose()
                engine.dispose()
            raise AssertionError(f"{base!r} was accepted")

        message = asyncio.run(submit())
        assert "BITSCALE_API_BASE must be an http:// or https:// URL" in message, (base, message)
        assert base == "http://" or base not in message
        assert "ftp-password" not in message
