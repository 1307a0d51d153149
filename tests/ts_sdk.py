"""Drive `tracker serve` with the official TypeScript SDK client (tests/ts_client/client.mjs, see its header for
the input and output documents): an independent client, not our own Python one, checks what we serve.

Needs node >= 18 and npm (.ci/run installs them). `npm ci` runs into tests/ts_client once, when node_modules is
missing or older than package-lock.json; a lock file serialises it between pytest-xdist workers."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tracker.testing.env import child_env

from .npm_install import npm_ci, require_tool

CLIENT_DIR = Path(__file__).with_name("ts_client")
SCRIPT = CLIENT_DIR / "client.mjs"
NEEDED_BY = "the TypeScript SDK tests need Node >= 18 and npm"


@functools.cache
def installed() -> str:
    """The node executable, once `npm ci` has installed the pinned SDK (at most once per session, and only when the
    lock changed since the last install)."""
    node = require_tool("node", NEEDED_BY)
    npm_ci(CLIENT_DIR, NEEDED_BY)
    return node


def server_params(db: Path, **env: str) -> dict[str, Any]:
    """The "server" part of the client's input: `python -m tracker serve` on `db`, run from db's directory."""
    return {
        "command": sys.executable,
        "args": ["-m", "tracker", "serve"],
        "env": child_env(db, **env),
        "cwd": str(Path(db).parent),
    }


def call(tool: str, options: dict[str, Any] | None = None, **arguments: Any) -> dict[str, Any]:
    """One entry of the client's call list."""
    entry: dict[str, Any] = {"tool": tool, "arguments": arguments}
    if options is not None:
        entry["options"] = options
    return entry


def http_params(url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """The "server" part of the client's input for a Streamable HTTP server already listening at `url`."""
    return {"url": url, "headers": headers or {}}


def run_client(
    db: Path | None,
    calls: list[dict[str, Any]],
    timeout: float = 120,
    server: dict[str, Any] | None = None,
    allow_fatal: bool = False,
    **env: str,
) -> dict[str, Any]:
    """Start `tracker serve` on `db` under the TypeScript client (or connect to `server`, e.g. http_params(url)),
    list the tools, make `calls` in order, and return the client's output document ({"tools", "calls", "stderr",
    ...}). Fails the test when the client could not connect or list the tools, unless allow_fatal (then the
    document is {"fatal": {message, code, name}, "stderr"})."""
    node = installed()
    if server is None:
        assert db is not None
        server = server_params(db, **env)
    document = {"server": server, "calls": calls}
    done = subprocess.run(
        [node, str(SCRIPT)], input=json.dumps(document), cwd=CLIENT_DIR, capture_output=True, text=True, timeout=timeout
    )
    try:
        output = json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"the TypeScript client printed no JSON (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    if "fatal" in output and allow_fatal:
        return output
    if "fatal" in output:
        pytest.fail(f"the TypeScript client failed: {output['fatal']}\nserver stderr:\n{output['stderr']}")
    assert done.returncode == 0, done.stderr
    return output
