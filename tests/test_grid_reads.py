"""The grid reads (get_workspace_details, list_grids, get_grid_details, get_grid_curl): the service over
MemoryUpstream and over HttpUpstream with httpx.MockTransport (paths, query, key header, 404, 429, 5xx, the key
never shown, bad arguments refused before anything is sent), the tools in process (schemas, annotations, output
schemas the answers validate against), and `tracker serve` as a subprocess against the fake grid API, through the
shared rate limit, with the curl it shows pasted into a real shell."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import jsonschema
import pytest
from mcp.server.mcpserver import MCPServer
from sqlalchemy import text

from tracker import InvalidInput, Settings, UpstreamError, limits
from tracker.db import open_engine
from tracker.remote import MemoryUpstream, RunsService
from tracker.remote.grids import NO_KEY
from tracker.remote.http import HttpUpstream
from tracker.remote.memory import memory_grid
from tracker.remote.ratelimit import SharedRateLimiter, workspace_key
from tracker.server.grid_tools import mount_grid_tools
from tracker.server.run_tools import run_lifespan
from tracker.testing.client import in_process

from .conftest import FakeUpstreamProcess, value_schema
from .sessions import tracker_session

KEY = "sk-live-GRIDS-0123456789abcdef"
BASE = "http://127.0.0.1:9/api/v1"
GRID_TOOLS = ("get_workspace_details", "list_grids", "get_grid_details", "get_grid_curl")


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def _grids() -> list[dict[str, Any]]:
    return [
        memory_grid("g1", "Lead enrichment"),
        memory_grid("g2", "Lead scoring"),
        memory_grid("g3", "Company research", inputs=("company_name", "website")),
    ]


class GridApi:
    """The read endpoints as the fake upstream serves them, scripted: `script` holds responses to send first (a
    429, a 503...), `echo` repeats the caller's key in every answer (a careless upstream); every request is kept."""

    def __init__(self, echo: bool = False, script: list[httpx.Response] | None = None) -> None:
        self.memory = MemoryUpstream(grids=_grids(), workspace={"id": "ws-1", "name": "Acme", "owner": {"x": 1}})
        self.echo = echo
        self.script = list(script or [])
        self.requests: list[httpx.Request] = []
        self.sent_at: list[float] = []

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.sent_at.append(time.monotonic())
        if self.script:
            return self.script.pop(0)
        path = request.url.path.removeprefix("/api/v1")
        key = request.headers.get("x-api-key", "")
        if path == "/workspace":
            answer: Any = dict(self.memory.workspace_answer)
        elif path == "/grids":
            params = request.url.params
            answer = await self.memory.list_grids(params.get("search"), int(params["page"]), int(params["limit"]))
        else:
            answer = self.memory.grids.get(unquote(request.url.raw_path.decode().rsplit("/", 1)[-1]))
            if answer is None:
                return httpx.Response(404, json={"error": f"grid not found (key {key})"})
        if self.echo:
            answer = _echoing(answer, key)
        return httpx.Response(200, json=answer)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)


def _echoing(answer: dict[str, Any], key: str) -> dict[str, Any]:
    """The key in a field, in a description, and in an input column's label (which get_grid_curl copies)."""
    answer = {**answer, "api_key": key, "description": f"made with {key}"}
    if "columns" in answer:
        answer["columns"] = [
            {**c, "label": f"{c['label']}-{key}"} if c.get("is_input") else c for c in answer["columns"]
        ]
    return answer


def _service(settings: Settings, upstream: Any, key: str = KEY, base: str = BASE) -> RunsService:
    settings = replace(settings, upstream_key=key, upstream_base=base)
    return RunsService(settings, open_engine(settings), upstream)


def _run(runs: RunsService, coro: Any) -> Any:
    async def scenario() -> Any:
        try:
            return await coro
        finally:
            await runs.aclose()

    return asyncio.run(scenario())


async def _all_four(runs: RunsService, grid_id: str = "g1") -> list[dict[str, Any]]:
    return [
        await runs.grids.workspace(),
        await runs.grids.list_grids(search="lead", page=1, limit=1),
        await runs.grids.grid(grid_id),
        await runs.grids.grid_curl(grid_id),
    ]


# -- the service, on both upstreams ---------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "http"])
def upstream(request: pytest.FixtureRequest) -> Any:
    if request.param == "memory":
        return MemoryUpstream(grids=_grids(), workspace={"id": "ws-1", "name": "Acme", "owner": {"x": 1}})
    return HttpUpstream(BASE, KEY, transport=GridApi().transport())


def test_the_four_reads_answer_the_upstreams_shapes(settings: Settings, upstream: Any) -> None:
    runs = _service(settings, upstream)
    workspace, page, grid, curl = _run(runs, _all_four(runs, "g3"))
    assert workspace == {"id": "ws-1", "name": "Acme", "owner": {"x": 1}}  # unknown fields kept as sent
    assert page["total"] == 2 and (page["page"], page["limit"]) == (1, 1)
    assert [g["id"] for g in page["grids"]] == ["g1"] and page["grids"][0]["column_count"] == 3
    assert [c["label"] for c in grid["columns"] if c["is_input"]] == ["company_name", "website"]
    assert curl["request_body"] == {"mode": "sync", "inputs": {"company_name": "<value>", "website": "<value>"}}
    assert curl["run_url"] == f"{BASE}/grids/g3/run" and curl["headers"]["X-API-KEY"] == "$BITSCALE_API_KEY"
    assert [c["id"] for c in curl["output_columns"]] == ["enriched", "score"]


def test_an_unknown_grid_is_an_upstream_404_naming_the_argument(settings: Settings, upstream: Any) -> None:
    runs = _service(settings, upstream)

    async def both() -> list[UpstreamError]:
        errors = []
        for read in (runs.grids.grid, runs.grids.grid_curl):
            with pytest.raises(UpstreamError) as info:
                await read("no-such-grid")
            errors.append(info.value)
        assert await upstream.grid("no-such-grid") is None  # the Upstream contract: None, not an error
        return errors

    for error in _run(runs, both()):
        assert error.status_code == 404 and "grid_id" in str(error) and "list_grids" in str(error)
        assert "no-such-grid" not in str(error)  # the caller's value is never repeated


def test_list_grids_defaults_and_a_blank_search(settings: Settings) -> None:
    upstream = MemoryUpstream(grids=_grids())
    runs = _service(settings, upstream)

    async def scenario() -> list[dict[str, Any]]:
        return [await runs.grids.list_grids(), await runs.grids.list_grids(search="  ", page=2, limit=2)]

    everything, second = _run(runs, scenario())
    assert [g["id"] for g in everything["grids"]] == ["g1", "g2", "g3"]
    assert [g["id"] for g in second["grids"]] == ["g3"]
    assert upstream.reads == [("list_grids", None, 1, limits.GRIDS_LIMIT_DEFAULT), ("list_grids", None, 2, 2)]


# -- over HTTP ------------------------------------------------------------------------------------------------------


def test_http_reads_send_their_paths_an_encoded_query_and_the_key_header(settings: Settings) -> None:
    api = GridApi()
    api.memory.grids["a b/ü?"] = memory_grid("a b/ü?", "Odd id")
    runs = _service(settings, HttpUpstream(BASE, KEY, transport=api.transport()))
    search = "a&b c/ü%#=+"

    async def scenario() -> None:
        await runs.grids.workspace()
        await runs.grids.list_grids(search=search, page=3, limit=7)
        await runs.grids.list_grids()
        await runs.grids.grid("a b/ü?")

    _run(runs, scenario())
    workspace, searched, plain, grid = api.requests
    assert all(r.method == "GET" and r.headers["x-api-key"] == KEY and r.content == b"" for r in api.requests)
    assert workspace.url.raw_path == b"/api/v1/workspace"
    assert searched.url.path == "/api/v1/grids" and dict(searched.url.params) == {"search": search, "page": "3", "limit": "7"}
    assert searched.url.query == b"page=3&limit=7&search=a%26b+c%2F%C3%BC%25%23%3D%2B"
    assert plain.url.query == b"page=1&limit=20"  # no search parameter at all
    assert grid.url.raw_path == b"/api/v1/grids/a%20b%2F%C3%BC%3F"


def test_a_429_waits_its_retry_after_and_a_5xx_is_retried(settings: Settings) -> None:
    api = GridApi(
        script=[
            httpx.Response(429, headers={"Retry-After": "0.3"}, json={"error": "rate limit exceeded"}),
            httpx.Response(503, json={"error": "busy"}),
            httpx.Response(502, json={"error": "bad gateway"}),
        ]
    )
    runs = _service(settings, HttpUpstream(BASE, KEY, transport=api.transport(), backoff_base_s=0.01))
    workspace = _run(runs, runs.grids.workspace())
    assert workspace["name"] == "Acme" and len(api.requests) == 4
    assert api.sent_at[1] - api.sent_at[0] >= 0.3  # Retry-After honoured


def test_reads_take_slots_of_the_shared_rate_limit(settings: Settings) -> None:
    """Each read waits for its own slot (10/s: 0.12 s apart with the margin), claimed on the database that every
    tracker process shares."""
    api = GridApi()
    engine = open_engine(settings)
    limiter = SharedRateLimiter(engine, workspace_key(BASE, KEY), 10.0)
    runs = RunsService(
        replace(settings, upstream_key=KEY, upstream_base=BASE), engine,
        HttpUpstream(BASE, KEY, limiter, transport=api.transport()),
    )
    _run(runs, _all_four(runs))
    gaps = [later - earlier for earlier, later in zip(api.sent_at, api.sent_at[1:])]
    # A request may leave up to late_tolerance_s after its slot (then the next one's gap is that much shorter):
    assert len(api.requests) == 4 and min(gaps) >= limiter.interval_s - limiter.late_tolerance_s - 0.005, gaps
    assert sum(gaps) >= 3 * limiter.interval_s - limiter.late_tolerance_s - 0.005, gaps
    with engine.connect() as conn:
        workspaces = conn.execute(text("SELECT workspace FROM upstream_rate_limits")).scalars().all()
    assert workspaces == [workspace_key(BASE, KEY)]


def test_the_key_is_never_in_an_answer_or_error_even_when_the_upstream_echoes_it(settings: Settings) -> None:
    api = GridApi(echo=True)
    runs = _service(settings, HttpUpstream(BASE, KEY, transport=api.transport()))

    async def scenario() -> tuple[list[dict[str, Any]], UpstreamError]:
        answers = await _all_four(runs)
        with pytest.raises(UpstreamError) as info:
            await runs.grids.grid_curl("missing")
        return answers, info.value

    answers, missing = _run(runs, scenario())
    assert KEY not in json.dumps(answers) and KEY not in str(missing)
    workspace, _, grid, curl = answers
    assert workspace["api_key"] == "***" and grid["description"] == "made with ***"
    assert curl["input_labels"] == ["email-***"] and KEY not in curl["curl"]
    # And a refusal that quotes the key back:
    api.script = [httpx.Response(401, text=f"invalid X-API-KEY {KEY}\nsee docs")]
    runs = _service(settings, HttpUpstream(BASE, KEY, transport=api.transport()))
    with pytest.raises(UpstreamError) as info:
        _run(runs, runs.grids.workspace())
    assert info.value.status_code == 401 and KEY not in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "answer, named",
    [
        ({"grids": "none"}, "grids"),
        ({"grids": [{"id": 7, "name": "x"}]}, "grids.0.id"),
        ({"grids": [], "total": "12"}, "total"),  # taken strictly: never shown converted
    ],
)
def test_an_answer_of_another_shape_is_an_upstream_error_naming_the_fields(
    settings: Settings, answer: dict[str, Any], named: str
) -> None:
    api = GridApi(script=[httpx.Response(200, json={**answer, "secret": KEY})])
    runs = _service(settings, HttpUpstream(BASE, KEY, transport=api.transport()))
    with pytest.raises(UpstreamError, match="unexpected shape") as info:
        _run(runs, runs.grids.list_grids())
    assert named in str(info.value) and KEY not in str(info.value)


# -- bad arguments and no key -------------------------------------------------------------------------------------

SECRET = "s3cr3t-VALUE"
BAD_ARGUMENTS = [
    ("grid", {"grid_id": ""}, "grid_id must not be empty"),
    ("grid", {"grid_id": SECRET * 20}, "grid_id is longer than 128 characters"),
    ("grid", {"grid_id": 42}, "grid_id must be a string, not integer"),
    ("grid", {"grid_id": None}, "grid_id must be a string, not null"),
    ("grid_curl", {"grid_id": f"{SECRET}\x00"}, "grid_id contains a NUL character"),
    ("grid_curl", {"grid_id": ["g1"]}, "grid_id must be a string, not array"),
    ("list_grids", {"search": SECRET * 20}, f"search is longer than {limits.GRID_SEARCH_CHARS} characters"),
    ("list_grids", {"search": {"$ne": SECRET}}, "search must be a string, not object"),
    ("list_grids", {"search": f"{SECRET}\x00"}, "search contains a NUL character"),
    ("list_grids", {"page": 0}, f"page must be a whole number from 1 to {limits.GRIDS_MAX_PAGE}"),
    ("list_grids", {"page": limits.GRIDS_MAX_PAGE + 1}, "page must be a whole number"),
    ("list_grids", {"page": True}, "page must be a whole number"),
    ("list_grids", {"page": "2"}, "page must be a whole number"),
    ("list_grids", {"page": 1.5}, "page must be a whole number"),
    ("list_grids", {"limit": 0}, f"limit must be a whole number from 1 to {limits.GRIDS_LIMIT}"),
    ("list_grids", {"limit": limits.GRIDS_LIMIT + 1}, "limit must be a whole number"),
    ("list_grids", {"limit": SECRET}, "limit must be a whole number"),
]


@pytest.mark.parametrize("read, arguments, message", BAD_ARGUMENTS, ids=[m for _, _, m in BAD_ARGUMENTS])
def test_a_bad_argument_is_one_line_naming_it_and_nothing_is_sent(
    settings: Settings, read: str, arguments: dict[str, Any], message: str
) -> None:
    memory = MemoryUpstream(grids=_grids())
    api = GridApi()
    for upstream in (memory, HttpUpstream(BASE, KEY, transport=api.transport())):
        runs = _service(settings, upstream)
        with pytest.raises(InvalidInput) as info:
            _run(runs, getattr(runs.grids, read)(**arguments))
        assert str(info.value).startswith(message) and "\n" not in str(info.value)
        assert SECRET not in str(info.value)
    assert memory.reads == [] and api.requests == []


def test_without_a_key_every_read_says_so_in_one_line_and_checks_arguments_first(settings: Settings) -> None:
    runs = _service(settings, None, key="")

    async def scenario() -> list[str]:
        said = []
        for read, arguments in (("workspace", {}), ("list_grids", {}), ("grid", {"grid_id": "g1"}),
                                ("grid_curl", {"grid_id": "g1"})):
            with pytest.raises(UpstreamError) as info:
                await getattr(runs.grids, read)(**arguments)
            said.append(str(info.value))
        with pytest.raises(InvalidInput, match="page must be"):
            await runs.grids.list_grids(page=0)
        return said

    assert _run(runs, scenario()) == [NO_KEY] * 4
    assert "BITSCALE_API_KEY is not set" in NO_KEY and "\n" not in NO_KEY


# -- the curl command, pasted into a shell ---------------------------------------------------------------------------

ODD_LABELS = ("email", "owner's name", 'say "hi"', "$HOME `id` $(id)", "a\\b", "ünïcode", "two\nlines")


def _bash_argv(command: str, key: str) -> list[str]:
    """The arguments bash passes to curl for `command` (a shell function named curl prints them)."""
    script = 'curl() { printf "%s\\0" "$@"; }\n' + command
    done = subprocess.run(
        ["bash", "-c", script], env={"BITSCALE_API_KEY": key, "PATH": "/usr/bin:/bin"}, capture_output=True,
        timeout=10,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.decode().split("\0")[:-1]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_curl_command_is_quoted_for_the_shell_and_reads_the_key_from_the_environment(settings: Settings) -> None:
    upstream = MemoryUpstream(grids=[memory_grid("g'; rm -rf ~; '", "Odd", inputs=ODD_LABELS)])
    runs = _service(settings, upstream, base="https://user:pa55@api.example.com:8443/api/v1/")
    curl = _run(runs, runs.grids.grid_curl("g'; rm -rf ~; '"))
    run_url = "https://api.example.com:8443/api/v1/grids/g%27%3B%20rm%20-rf%20~%3B%20%27/run"
    assert curl["run_url"] == run_url and "pa55" not in json.dumps(curl)  # no credentials in what is shown
    assert curl["input_labels"] == list(ODD_LABELS)
    argv = _bash_argv(curl["curl"], KEY)
    assert argv[:5] == ["-sS", "-X", "POST", run_url, "-H"]
    assert argv[5] == f"X-API-KEY: {KEY}"  # the shell filled in the key; the text only names the variable
    assert argv[6:9] == ["-H", "Content-Type: application/json", "-d"] and len(argv) == 10
    assert json.loads(argv[9]) == {"mode": "sync", "inputs": {label: "<value>" for label in ODD_LABELS}}
    assert json.loads(argv[9]) == curl["request_body"]


# -- the tools, in process ------------------------------------------------------------------------------------------


def _walk(schema: Any) -> Any:
    if isinstance(schema, dict):
        yield schema
        for value in schema.values():
            yield from _walk(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _walk(value)


@pytest.mark.anyio
async def test_the_tools_schemas_annotations_and_answers(settings: Settings) -> None:
    upstream = MemoryUpstream(grids=_grids(), workspace={"id": "ws-1", "name": "Acme", "owner": {"x": [1, "y"]}})
    runs = _service(settings, upstream)
    server = MCPServer(name="grids", lifespan=run_lifespan(runs))
    mount_grid_tools(server, runs)
    async with in_process(server) as session:
        tools = await session.list_tools()
        answers = {
            "get_workspace_details": await session.call("get_workspace_details"),
            "list_grids": await session.call("list_grids", search="LEAD", limit=1),
            "get_grid_details": await session.call("get_grid_details", grid_id="g3"),
            "get_grid_curl": await session.call("get_grid_curl", grid_id="g3"),
        }
        unknown = await session.call("list_grids", {"serch": SECRET})
        bad = await session.call("list_grids", {"limit": 500, "search": SECRET})
        missing = await session.call("get_grid_curl", {})
    assert set(tools) == set(GRID_TOOLS)
    for name, tool in tools.items():
        hints = tool.annotations
        assert (hints.read_only_hint, hints.destructive_hint, hints.idempotent_hint, hints.open_world_hint) == (
            True, False, True, True
        ), name
        schema = tool.input_schema
        assert schema["additionalProperties"] is False, name
        assert not [node for node in _walk(schema) if isinstance(node.get("type"), list)], name  # no type arrays
        assert tool.output_schema is not None and tool.output_schema["type"] == "object", name
        answer = answers[name]
        assert not answer.is_error, answer.text
        jsonschema.Draft202012Validator(tool.output_schema).validate(answer.value)
        assert json.loads(answer.text) == answer.value, name  # the text is the same answer
    assert "required" not in tools["list_grids"].input_schema
    properties = {name: value_schema(prop) for name, prop in tools["list_grids"].input_schema["properties"].items()}
    assert properties["search"] == {**properties["search"], "type": "string", "maxLength": limits.GRID_SEARCH_CHARS}
    assert (properties["page"]["minimum"], properties["page"]["maximum"]) == (1, limits.GRIDS_MAX_PAGE)
    assert (properties["limit"]["minimum"], properties["limit"]["maximum"]) == (1, limits.GRIDS_LIMIT)
    for name in ("get_grid_details", "get_grid_curl"):
        assert tools[name].input_schema["required"] == ["grid_id"]
        assert tools[name].input_schema["properties"]["grid_id"]["maxLength"] == limits.ID_CHARS
    assert "run_grid" in tools["get_grid_details"].description and "grid_id" in tools["list_grids"].description
    # The upstream's fields, known or not, reach the client as they were sent:
    assert answers["get_workspace_details"].value == {"id": "ws-1", "name": "Acme", "owner": {"x": [1, "y"]}}
    assert answers["list_grids"].value["grids"][0]["id"] == "g1"
    assert answers["get_grid_curl"].value["input_labels"] == ["company_name", "website"]
    assert unknown.is_error and 'unknown argument "serch" for list_grids' in unknown.text
    assert bad.is_error and bad.text.endswith("limit must be a whole number from 1 to 100")
    assert missing.is_error and missing.text.endswith("grid_id is required")
    for refused in (unknown, bad, missing):
        assert SECRET not in refused.text and "\n" not in refused.text
    assert upstream.reads == [("workspace",), ("list_grids", "LEAD", 1, 1), ("grid", "g3"), ("grid", "g3")]


# -- tracker serve against the fake grid API -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_four_tools_through_tracker_serve_and_the_fake_grid_api(
    tmp_path: Path, fake_upstream: FakeUpstreamProcess
) -> None:
    """A real `python -m tracker serve` subprocess, its upstream the fake on 127.0.0.1 echoing the key back: each tool
    answers, no answer holds the key, the four requests went out through the shared rate limit (2/s here: 0.6 s
    apart), and the curl shown, pasted into bash, runs the grid."""
    fake_upstream.configure(echo_key=True)
    db = tmp_path / "t.db"
    async with tracker_session(db, fake_upstream, tmp_path / "serve.log", BITSCALE_RATE_LIMIT="2") as session:
        workspace = await session.call("get_workspace_details")
        page = await session.call("list_grids", search="lead")
        grid = await session.call("get_grid_details", grid_id="g1")
        curl = await session.call("get_grid_curl", grid_id="g1")
        missing = await session.call("get_grid_details", grid_id="nope")
    answers = [workspace, page, grid, curl]
    assert not any(answer.is_error for answer in answers), [a.text for a in answers]
    assert all(fake_upstream.key not in answer.text for answer in [*answers, missing])
    assert workspace.value["id"] == "ws-fake-0001" and workspace.value["api_key"] == "***"
    assert [g["id"] for g in page.value["grids"]] == ["g1", "g2"] and page.value["total"] == 2
    assert [c["label"] for c in grid.value["columns"] if c["is_input"]] == ["email"]
    assert grid.value["settings"]["auto_run"] is True  # a field tracker does not describe, kept
    assert missing.is_error and "upstream has no such grid_id (HTTP 404)" in missing.text and "nope" not in missing.text

    stats = fake_upstream.call("/_fake/stats?times=1")
    assert (stats["reads"], stats["requests"], stats["rate_limited"]) == (5, 5, 0)
    times = stats["arrival_times"]
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    assert min(gaps) >= 0.6 * 0.8 and sum(gaps) >= 4 * 0.6 - 0.1, gaps  # the shared limit's slots, not back-to-back
    with open_engine(Settings.from_env({}, db=str(db))).connect() as conn:
        slots = conn.execute(text("SELECT workspace FROM upstream_rate_limits")).scalars().all()
    assert slots == [workspace_key(fake_upstream.base_url, fake_upstream.key)]

    if shutil.which("bash") and shutil.which("curl"):
        command = curl.value["curl"].replace("<value>", "paste@x.io")
        done = subprocess.run(
            ["bash", "-c", command], env={"BITSCALE_API_KEY": fake_upstream.key, "PATH": "/usr/bin:/bin"},
            capture_output=True, text=True, timeout=30,
        )
        assert done.returncode == 0, done.stderr
        ran = json.loads(done.stdout)
        assert ran["status"] == "completed" and ran["outputs"]["enriched"]["value"] == "g1:email=paste@x.io"
