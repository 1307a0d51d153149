"""`python -m tracker serve` spoken to in raw stdio lines, for the frames no well-behaved client sends (the SDK
clients would refuse to send them). Every read has a deadline: a dropped line fails the test with a message instead
of hanging it."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tracker.testing.env import child_env

from .conftest import PYTHON, REPO

ANSWER_S = 5.0  # an answer to a bad line comes at once; this long without one is a dropped line
START_S = 60.0  # initialize, on a busy machine


class LineServer:
    """`python -m tracker serve` spoken to in raw lines, stderr to a file."""

    def __init__(self, db: Path, errlog: Path) -> None:
        self.errlog = errlog
        self._err = errlog.open("wb")
        self.process = subprocess.Popen(
            [PYTHON, "-m", "tracker", "serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err,
            env=child_env(db, BITSCALE_API_KEY=""), cwd=str(REPO),
        )
        self._lines: queue.Queue[bytes] = queue.Queue()
        self._ids = iter(range(1000, 10**6))
        self._answers: dict[int | str, dict[str, Any]] = {}
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(b"")  # the server closed stdout

    def send(self, line: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + b"\n")
        self.process.stdin.flush()

    def next_message(self, after: str, timeout_s: float = ANSWER_S) -> dict[str, Any]:
        """The next line the server writes, which must be one JSON-RPC message."""
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            pytest.fail(f"no answer within {timeout_s:.0f} s after {after}: the server dropped it")
        if not line:
            pytest.fail(f"the server closed stdout after {after}: {self.errlog.read_text(errors='replace')[-2000:]}")
        message = json.loads(line)
        assert message.get("jsonrpc") == "2.0", line[:300]
        return message

    def wait_for(self, request_id: int | str, timeout_s: float = ANSWER_S) -> dict[str, Any]:
        """The answer to `request_id`, in whatever order the answers come (answers to other ids are kept for their
        own wait_for; answers with id null and notifications are passed over)."""
        deadline = time.monotonic() + timeout_s
        while request_id not in self._answers:
            message = self.next_message(f"the request with id {request_id!r}", max(0.01, deadline - time.monotonic()))
            if message.get("id") is not None:
                self._answers[message["id"]] = message
        return self._answers.pop(request_id)

    def request(self, method: str, params: dict[str, Any], timeout_s: float = ANSWER_S) -> dict[str, Any]:
        request_id = next(self._ids)
        self.send(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}).encode())
        answer = self.next_message(f"{method} (id {request_id})", timeout_s)
        assert answer.get("id") == request_id, answer
        return answer

    def initialize(self) -> None:
        params = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}
        assert "result" in self.request("initialize", params, START_S)
        self.send(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')

    def assert_still_serving(self) -> None:
        tools = self.request("tools/list", {})["result"]["tools"]
        assert "list_operations" in {tool["name"] for tool in tools}
        assert self.process.poll() is None

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._err.close()
