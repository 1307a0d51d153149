"""Drive `tracker serve` with the official TypeScript SDK client (tests/ts_client/client.mjs, see its header for
the input and output documents): an independent client, not our own Python one, checks what we serve.

Needs node >= 18 and npm (.ci/run installs them). `npm ci` runs into tests/ts_client once, when node_modules is
missing or older than package-lock.json; a lock file serialises it between pytest-xdist workers."""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tracker.testing.env import child_env

CLIENT_DIR = Path(__file__).with_name("ts_client")
SCRIPT = CLIENT_DIR / "client.mjs"
# Written after a successful `npm ci`: the hash of the package files that node_modules was installed from.
STAMP = CLIENT_DIR / "node_modules" / ".tracker-installed"
INSTALL_TIMEOUT_S = 300


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} not found on PATH: the TypeScript SDK tests need Node >= 18 and npm"
            " (.ci/run installs Debian's nodejs and npm packages)",
            pytrace=False,
        )
    return path


def _package_hash() -> str:
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        digest.update((CLIENT_DIR / name).read_bytes())
    return digest.hexdigest()


@functools.cache
def installed() -> str:
    """The node executable, once `npm ci` has installed the pinned SDK (at most once per session, and only when the
    lock changed since the last install)."""
    node = _tool("node")
    npm = _tool("npm")
    wanted = _package_hash()
    with (CLIENT_DIR / ".npm-ci.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not STAMP.is_file() or STAMP.read_text() != wanted:
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
                cwd=CLIENT_DIR, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S,
            )
            if done.returncode != 0:
                pytest.fail(f"npm ci in {CLIENT_DIR} failed ({done.returncode}):\n{done.stderr[-4000:]}", pytrace=False)
            STAMP.write_text(wanted)
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


def run_client(db: Path, calls: list[dict[str, Any]], timeout: float = 120, **env: str) -> dict[str, Any]:
    """Start `tracker serve` on `db` under the TypeScript client, list the tools, make `calls` in order, and return
    the client's output document ({"tools", "calls", "stderr", ...}). Fails the test when the client could not
    connect or list the tools."""
    node = installed()
    document = {"server": server_params(db, **env), "calls": calls}
    done = subprocess.run(
        [node, str(SCRIPT)], input=json.dumps(document), cwd=CLIENT_DIR, capture_output=True, text=True, timeout=timeout
    )
    try:
        output = json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"the TypeScript client printed no JSON (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    if "fatal" in output:
        pytest.fail(f"the TypeScript client failed: {output['fatal']}\nserver stderr:\n{output['stderr']}")
    assert done.returncode == 0, done.stderr
    return output
