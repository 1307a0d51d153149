"""`tracker serve` as the official MCP Inspector's CLI sees it with `--strict` (tests/inspector_cli.py): its tools
listing must list every tool and print no schema-portability warning. A `type` array such as
{"type": ["string", "null"]} draws one (rule `type-union`: clients that map tool schemas onto a single-`type`
dialect may reject the tool or drop the constraint); {"anyOf": [{"type": "string"}, {"type": "null"}]} does not."""

from __future__ import annotations

import ipaddress
import re
import shutil
import sys
from pathlib import Path

import anyio
import pytest

from tracker import Settings, Tracker
from tracker.server.app import build_server

from .inspector_cli import NODE, UNPORTABLE_SERVER, Listing, list_tools_strict, list_tracker_tools


def _served_tools(db: Path) -> list[dict]:
    """The tools/list of tracker's server built in this process, as the wire carries it."""
    with Tracker(Settings.from_env({}, db=str(db))) as tracker:
        tools = anyio.run(build_server(tracker).list_tools)
    return [tool.model_dump(mode="json", by_alias=True, exclude_none=True) for tool in tools]


def _warnings_report(listing: Listing) -> str:
    per_field = "\n".join(f"  {finding}" for finding in listing.findings)
    return (
        f"the Inspector CLI's --strict tools listing printed {len(listing.findings)} finding(s), per tool and field:"
        f"\n{per_field}\nas printed:\n" + "\n".join(listing.warning_lines())
    )


def test_the_strict_tools_listing_of_tracker_serve_lists_every_tool_and_prints_no_warning(tmp_path: Path) -> None:
    listing = list_tracker_tools(tmp_path / "t.db")
    served = _served_tools(tmp_path / "in-process.db")
    assert [tool["name"] for tool in listing.tools] == [tool["name"] for tool in served], listing.describe()
    assert len(listing.tools) == 11  # 5 status tools, run_grid, run_grid_batch and the 4 grid reads
    for listed, built in zip(listing.tools, served):
        assert listed["inputSchema"] == built["inputSchema"], listed["name"]
        assert listed.get("outputSchema") == built.get("outputSchema"), listed["name"]
    assert listing.returncode == 0, listing.describe()
    assert listing.warning_lines() == [], _warnings_report(listing)
    assert listing.schema_findings == [], listing.schema_findings


def test_the_report_reader_finds_a_warning_and_an_error_where_the_inspector_prints_them(tmp_path: Path) -> None:
    """tests/inspector/unportable_server.py serves a `type` array (a warning), a bare `true` schema (an error) and
    the anyOf spelling of a nullable string (clean): the reader must see exactly the first two, so the test above
    cannot pass by missing a warning."""
    listing = list_tools_strict([sys.executable, str(UNPORTABLE_SERVER), "error"], {}, tmp_path)
    assert [tool["name"] for tool in listing.tools] == ["nullable_type_array", "portable", "boolean_schema"]
    assert listing.returncode == 6, listing.describe()  # an error-severity finding under --strict
    assert [(f.severity, f.tool, f.path) for f in listing.findings] == [
        ("Warning", "nullable_type_array", "inputSchema.properties.cursor"),
        ("Error", "boolean_schema", "inputSchema.properties.anything"),
    ], listing.describe()
    assert listing.findings[0].issue.startswith('`type` is an array (["string","null"])')
    assert listing.summary == ["1 error, 1 warning across 2 tools."]
    assert [
        (entry["toolName"], [(f["rule"], f["severity"], f["schema"], f["path"]) for f in entry["findings"]])
        for entry in listing.schema_findings
    ] == [
        ("nullable_type_array", [("type-union", "warning", "inputSchema", "properties.cursor")]),
        ("boolean_schema", [("boolean-schema", "error", "inputSchema", "properties.anything")]),
    ]
    assert len(listing.warning_lines()) > 8
    # The one other line: the JSON error envelope of exit 6.
    assert [line for line in listing.other_stderr if "schema_unportable" not in line] == [], listing.describe()


# -- no socket, no browser: the CLI under strace ---------------------------------------------------------------------

_CALL = re.compile(r"^(?:\d+ +)?(bind|listen|connect|execve)\((.*)$")
_FAMILY = re.compile(r"sa_family=(AF_[A-Z0-9]+)")
_ADDRESS = re.compile(r'inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6?, "([^"]+)"')
_EXECVE = re.compile(r'^"([^"]*)", .*\) = 0$')


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def read_trace(text: str) -> tuple[list[str], list[str], list[str]]:
    """(the inet binds and connects to a non-loopback address, the listen calls, the programs exec'd) in strace
    lines of `-e trace=%network,execve`."""
    outside: list[str] = []
    listens: list[str] = []
    programs: list[str] = []
    for line in text.splitlines():
        call = _CALL.match(line)
        if call is None:
            continue
        name, rest = call.groups()
        if name == "execve":
            program = _EXECVE.match(rest)
            if program:
                programs.append(program[1])
        elif name == "listen":
            listens.append(line)
        else:
            family = _FAMILY.search(rest)
            if family and family[1] in ("AF_INET", "AF_INET6"):
                address = _ADDRESS.search(rest)
                if address is None or not _is_loopback(address[1] or address[2]):
                    outside.append(line)
    return outside, listens, programs


def test_the_trace_reader() -> None:
    text = "\n".join([
        '1 execve("/usr/bin/node", ["node"], 0x7ffd /* 9 vars */) = 0',
        '2 execve("/usr/local/bin/xdg-open", ["xdg-open"], 0x7ffd /* 9 vars */) = -1 ENOENT (No such file or directory)',
        '1 bind(22, {sa_family=AF_INET, sin_port=htons(0), sin_addr=inet_addr("127.0.0.1")}, 16) = 0',
        "1 listen(22, 511)                   = 0",
        '1 bind(23, {sa_family=AF_INET6, sin6_port=htons(0), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "::1",'
        " &sin6_addr), sin6_scope_id=0}, 28) = 0",
        '1 bind(24, {sa_family=AF_INET6, sin6_port=htons(6274), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "::",'
        " &sin6_addr), sin6_scope_id=0}, 28) = 0",
        '1 connect(25, {sa_family=AF_INET, sin_port=htons(443), sin_addr=inet_addr("10.0.0.1")}, 16) = -1 EINPROGRESS',
        '1 connect(26, {sa_family=AF_UNIX, sun_path="/run/dbus/system_bus_socket"}, 110) = 0',
        '1 bind(27, {sa_family=AF_NETLINK, nl_pid=0, nl_groups=00000000}, 12) = 0',
    ])
    outside, listens, programs = read_trace(text)
    assert [line.split("(")[1].split(",")[0] for line in outside] == ["24", "25"]
    assert listens == ["1 listen(22, 511)                   = 0"]
    assert programs == ["/usr/bin/node"]


def test_the_inspector_cli_opens_no_socket_and_runs_nothing_but_the_server(tmp_path: Path) -> None:
    """No listening socket (so nothing on any address), no inet connection, and no program but node and the server:
    no browser, no xdg-open, no shell."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.fail("strace not found on PATH (.ci/run installs Debian's strace package)", pytrace=False)
    traces = tmp_path / "trace"
    traces.mkdir()
    wrapper = [strace, "-ff", "-qq", "-s", "512", "-e", "trace=%network,execve", "-e", "signal=none", "-o", str(traces / "t")]
    listing = list_tracker_tools(tmp_path / "t.db", wrapper=wrapper)
    assert len(listing.tools) == 11, listing.describe()
    text = "\n".join(path.read_text(errors="replace") for path in sorted(traces.iterdir()))
    assert text, "strace wrote no trace"
    outside, listens, programs = read_trace(text)
    assert outside == [], "inet addresses other than loopback:\n" + "\n".join(outside)
    assert listens == [], "the Inspector CLI listened on a socket:\n" + "\n".join(listens)
    assert {Path(program).resolve() for program in programs} == {NODE.resolve(), Path(sys.executable).resolve()}, programs
    assert len(programs) == 2, programs
