"""`npm ci` of a pinned package directory under tests/ (the TypeScript SDK client, the Inspector CLI), once per
lock: node_modules is installed when missing or older than package-lock.json, under a file lock shared by the
pytest-xdist workers. Without node or npm the tests fail, never skip (.ci/run installs Debian's nodejs and npm)."""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

INSTALL_TIMEOUT_S = 240  # under pytest-timeout's 300 s, so a slow install fails with npm's own words


def require_tool(name: str, needed_by: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} not found on PATH: {needed_by} (.ci/run installs Debian's nodejs and npm packages)", pytrace=False
        )
    return path


def package_hash(directory: Path) -> str:
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        digest.update((directory / name).read_bytes())
    return digest.hexdigest()


def npm_ci(directory: Path, needed_by: str, present: Callable[[], bool] = lambda: True,
           after: Callable[[], None] = lambda: None) -> None:
    """Install `directory`'s lock unless node_modules was installed from this very lock (its stamp says so) and
    `present()` holds; `after()` runs once a fresh install succeeded."""
    npm = require_tool("npm", needed_by)
    stamp = directory / "node_modules" / ".tracker-installed"
    wanted = package_hash(directory)
    with (directory / ".npm-ci.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file() and stamp.read_text() == wanted and present():
            return
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
            cwd=directory, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S,
        )
        if done.returncode != 0:
            pytest.fail(f"npm ci in {directory} failed ({done.returncode}):\n{done.stderr[-4000:]}", pytrace=False)
        after()
        stamp.write_text(wanted)
