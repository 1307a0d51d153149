"""A tool takes exactly the arguments its input schema names (CONTRACTS.md section 4), through an in-process MCP
session with `tracker serve` (its upstream the fake grid API) and with the host server that mounts the status
tools: an unknown argument or a missing required one is a one-line tool error naming it, nothing runs or is
written, and no argument's value is repeated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

from tracker import Tracker, limits
from tracker.server.strict import add_strict_tool

from .conftest import FakeUpstreamProcess, value_schema
from .db_checks import checksum
from .host_server import build_host_server
from .sessions import ToolAnswer, run_settings, served
from tracker.testing.client import in_process

TOOLS = {
    "get_batch_status", "list_operations", "get_operation_items", "cancel_operation", "run_grid", "run_grid_batch",
    "get_run_status", "get_workspace_details", "list_grids", "get_grid_details", "get_grid_curl",
}
SECRET = "sk-SECRET-4f1c"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def seed(db: Path, fake: FakeUpstreamProcess) -> str:
    """A running batch (one a cancel would change); returns its id."""
    with Tracker(run_settings(db, fake)) as tracker:
        return tracker.start_batch("update", total=10).id


def good_arguments(tool: str, running: str, value: str = "a@x.io") -> dict[str, Any]:
    """Arguments each tool accepts, and that would write for the writing tools (submit a run, start a batch,
    cancel the running batch)."""
    return {
        "get_batch_status": {"batch_operation_id": running},
        "list_operations": {"status": "running"},
        "get_operation_items": {"operation_id": running},
        "cancel_operation": {"operation_id": running},
        "run_grid": {"grid_id": "g1", "inputs": {"email": value}, "mode": "async", "idempotency_key": value},
        "run_grid_batch": {"grid_id": "g1", "rows": [{"email": value}], "source_id": value},
        "get_run_status": {"request_id": running},
        "get_workspace_details": {},
        "list_grids": {"search": value, "page": 1, "limit": 5},
        "get_grid_details": {"grid_id": "g1"},
        "get_grid_curl": {"grid_id": "g1"},
    }[tool]


def assert_one_line_error(answer: ToolAnswer, tool: str, expected: str) -> None:
    assert answer.is_error, answer.text[:300]
    assert answer.text == f"Error executing tool {tool}: {expected}"
    assert "\n" not in answer.text and "http" not in answer.text and "input_value" not in answer.text


@pytest.mark.anyio
async def test_every_input_schema_says_additional_properties_false_and_keeps_its_bounds(
    tmp_path: Path, fake_upstream: FakeUpstreamProcess
) -> None:
    async with served(run_settings(tmp_path / "t.db", fake_upstream)) as session:
        tools = await session.list_tools()
    assert set(tools) == TOOLS
    for name, tool in tools.items():
        assert tool.input_schema["additionalProperties"] is False, name
    assert value_schema(tools["list_operations"].input_schema["properties"]["limit"])["maximum"] == limits.LIST_LIMIT
    assert value_schema(tools["get_operation_items"].input_schema["properties"]["limit"])["maximum"] == limits.ITEMS_LIMIT
    assert tools["run_grid_batch"].input_schema["properties"]["rows"]["maxItems"] == limits.BATCH_ROWS
    assert value_schema(tools["run_grid"].input_schema["properties"]["idempotency_key"])["maxLength"] == limits.KEY_CHARS
    assert tools["get_batch_status"].input_schema["properties"]["batch_operation_id"]["maxLength"] == limits.ID_CHARS


@pytest.mark.anyio
@pytest.mark.parametrize("tool", sorted(TOOLS))
async def test_an_unknown_argument_is_a_one_line_error_naming_it_and_nothing_runs(
    tmp_path: Path, fake_upstream: FakeUpstreamProcess, tool: str
) -> None:
    db = tmp_path / "t.db"
    running = seed(db, fake_upstream)
    async with served(run_settings(db, fake_upstream)) as session:
        schema = (await session.list_tools())[tool].input_schema
        before = checksum(db)
        answer = await session.call(tool, {**good_arguments(tool, running), "state": SECRET})
        takes = ", ".join(schema["properties"]) or "no arguments"
        assert_one_line_error(answer, tool, f'unknown argument "state" for {tool}; it takes {takes}')
        assert SECRET not in answer.text
        assert checksum(db) == before
        assert fake_upstream.stats()["posts"] == 0
        # The same call without the stray argument is fine: only the name was wrong.
        assert not (await session.call(tool, good_arguments(tool, running))).is_error


@pytest.mark.anyio
async def test_several_unknown_arguments_are_named_on_one_line(
    tmp_path: Path, fake_upstream: FakeUpstreamProcess
) -> None:
    async with served(run_settings(tmp_path / "t.db", fake_upstream)) as session:
        answer = await session.call("list_operations", {"state": "running", "line\nbreak": 1, "x" * 500: 2})
    assert answer.is_error
    assert answer.text.startswith('Error executing tool list_operations: unknown arguments "state", "line\\nbreak", "xxx')
    assert "\n" not in answer.text and len(answer.text) < 300


REQUIRED = [
    (tool, name)
    for tool, names in {
        "get_batch_status": ["batch_operation_id"],
        "get_operation_items": ["operation_id"],
        "cancel_operation": ["operation_id"],
        "run_grid": ["grid_id", "inputs"],
        "run_grid_batch": ["grid_id", "rows"],
        "get_run_status": ["request_id"],
        "get_grid_details": ["grid_id"],
        "get_grid_curl": ["grid_id"],
    }.items()
    for name in names
]


@pytest.mark.anyio
@pytest.mark.parametrize("tool, missing", REQUIRED, ids=[f"{tool}-{name}" for tool, name in REQUIRED])
async def test_a_missing_required_argument_is_one_line_naming_it_and_never_a_value(
    tmp_path: Path, fake_upstream: FakeUpstreamProcess, tool: str, missing: str
) -> None:
    db = tmp_path / "t.db"
    seed(db, fake_upstream)  # a running batch a write would change
    async with served(run_settings(db, fake_upstream)) as session:
        assert missing in (await session.list_tools())[tool].input_schema["required"]
        before = checksum(db)
        arguments = {name: value for name, value in good_arguments(tool, SECRET, SECRET).items() if name != missing}
        answer = await session.call(tool, arguments)
        assert_one_line_error(answer, tool, f"{missing} is required")
        assert SECRET not in answer.text
        assert checksum(db) == before
    assert fake_upstream.stats()["posts"] == 0


@pytest.mark.anyio
async def test_all_missing_required_arguments_are_named(tmp_path: Path, fake_upstream: FakeUpstreamProcess) -> None:
    async with served(run_settings(tmp_path / "t.db", fake_upstream)) as session:
        answer = await session.call("run_grid", {"mode": "async"})
    assert_one_line_error(answer, "run_grid", "grid_id and inputs are required")


@pytest.mark.anyio
async def test_a_misspelt_idempotency_key_submits_nothing(tmp_path: Path, fake_upstream: FakeUpstreamProcess) -> None:
    """The retry that would have billed twice: both calls are refused, no run is recorded or submitted."""
    db = tmp_path / "t.db"
    async with served(run_settings(db, fake_upstream)) as session:
        for _ in range(2):
            answer = await session.call(
                "run_grid", {"grid_id": "g1", "inputs": {"email": "a@x.io"}, "mode": "async", "idempotencykey": "k1"}
            )
            assert answer.is_error and 'unknown argument "idempotencykey" for run_grid' in answer.text
        assert (await session.answer("list_operations", kind="run"))["operations"] == []
    assert fake_upstream.stats()["posts"] == 0


@pytest.mark.anyio
async def test_tools_mounted_on_a_host_server_are_strict_too(tracker: Tracker) -> None:
    """mount_status_tools gives a host the same checks; the host's own tools stay as the host made them."""
    running = tracker.start_batch("update", total=3).id
    async with in_process(build_host_server(tracker)) as session:
        tools = await session.list_tools()
        for name in ("get_batch_status", "list_operations", "get_operation_items", "cancel_operation", "get_run_status"):
            assert tools[name].input_schema["additionalProperties"] is False, name
        assert "additionalProperties" not in tools["ping"].input_schema
        answer = await session.call("cancel_operation", {"operation_id": running, "force": True})
        assert answer.is_error and 'unknown argument "force" for cancel_operation' in answer.text
        missing = await session.call("get_batch_status", {"batch_id": SECRET})
        assert missing.is_error and "batch_operation_id" in missing.text and SECRET not in missing.text
        listed = await session.answer("list_operations", status="running")
    assert [op["operation_id"] for op in listed["operations"]] == [running]  # not cancelled



@pytest.mark.anyio
async def test_pydantic_text_never_reaches_the_caller() -> None:
    """Behind the name check, a value pydantic itself refuses (tracker's parameters take any value, but a tool
    added with add_strict_tool might not) is named, not echoed in pydantic's multi-line text."""
    server = MCPServer(name="strict")

    def count_to(n: int) -> int:
        """A typed parameter pydantic validates."""
        return n

    add_strict_tool(server, count_to, "count_to", "count", ToolAnnotations(read_only_hint=True))
    async with in_process(server) as session:
        answer = await session.call("count_to", {"n": SECRET})
        assert (await session.answer("count_to", n=3)) == {"result": 3}
    assert_one_line_error(answer, "count_to", "invalid n")
    assert SECRET not in answer.text


@pytest.mark.anyio
async def test_an_explicit_null_is_accepted_exactly_where_the_schema_says_so(
    tmp_path: Path, fake_upstream: FakeUpstreamProcess
) -> None:
    """Clients send null for an optional field. Every optional argument is called with null: the call is accepted
    (as if omitted) exactly when its schema admits null (anyOf a value or null), so a client validating against the
    schema and the server agree. Before, the schemas said `"type": "string"` and the server took null anyway."""
    import jsonschema

    db = tmp_path / "t.db"
    running = seed(db, fake_upstream)
    checked = 0
    async with served(run_settings(db, fake_upstream)) as session:
        tools = await session.list_tools()
        for name, tool in sorted(tools.items()):
            schema = tool.input_schema
            for argument in sorted(set(schema["properties"]) - set(schema.get("required", []))):
                arguments = {**good_arguments(name, running), argument: None}
                admits = jsonschema.Draft202012Validator(schema).is_valid(arguments)
                answer = await session.call(name, arguments)
                assert answer.is_error is not admits, (name, argument, admits, answer.text[:200])
                checked += 1
    assert checked >= 15
