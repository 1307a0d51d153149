"""`tracker serve` as the official TypeScript SDK client sees it (tests/ts_sdk.py, tests/ts_client/client.mjs): a
real stdio subprocess on a tmp_path SQLite file, driven by a default `Client` of @modelcontextprotocol/sdk 1.x. That
client validates every structuredContent against the tool's outputSchema, so a mismatch fails here as an error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tracker import Tracker

from .conftest import OPERATION_FIELDS, FakeUpstreamProcess
from .ts_sdk import call, run_client


def _hints(read_only: bool, destructive: bool, idempotent: bool, open_world: bool) -> dict[str, bool]:
    return {"readOnlyHint": read_only, "destructiveHint": destructive, "idempotentHint": idempotent, "openWorldHint": open_world}


READS = _hints(read_only=True, destructive=False, idempotent=True, open_world=False)
READS_UPSTREAM = _hints(read_only=True, destructive=False, idempotent=True, open_world=True)
EXPECTED_ANNOTATIONS = {
    "get_batch_status": READS,
    "list_operations": READS,
    "get_operation_items": READS,
    "cancel_operation": _hints(read_only=False, destructive=True, idempotent=True, open_world=False),
    "run_grid": _hints(read_only=False, destructive=False, idempotent=False, open_world=True),
    "run_grid_batch": _hints(read_only=False, destructive=False, idempotent=False, open_world=True),
    "get_run_status": READS_UPSTREAM,
    "get_workspace_details": READS_UPSTREAM,
    "list_grids": READS_UPSTREAM,
    "get_grid_details": READS_UPSTREAM,
    "get_grid_curl": READS_UPSTREAM,
}


def _answer(entry: dict[str, Any]) -> dict[str, Any]:
    """A successful call's structured content, checked against its text content (the same JSON)."""
    assert "error" not in entry, entry
    result = entry["result"]
    assert result["isError"] is False, result
    assert [json.loads(text) for text in result["content"]] == [result["structuredContent"]]
    return result["structuredContent"]


def test_an_empty_database_through_the_typescript_client(tmp_path: Path) -> None:
    long_id = "b" * 500
    output = run_client(
        tmp_path / "t.db",
        [
            call("list_operations"),
            call("get_batch_status", batch_operation_id="batch_import_unknown"),
            call("get_batch_status", batch_operation_id=long_id),
        ],
    )
    tools = {tool["name"]: tool for tool in output["tools"]}
    assert len(output["tools"]) == 11
    assert {name: tool["annotations"] for name, tool in tools.items()} == EXPECTED_ANNOTATIONS
    for tool in tools.values():
        assert tool["inputSchema"]["type"] == "object" and tool["outputSchema"]["type"] == "object", tool["name"]
    assert tools["get_batch_status"]["inputSchema"]["required"] == ["batch_operation_id"]

    listed, unknown, bad = output["calls"]
    assert _answer(listed) == {"operations": [], "count": 0, "next_cursor": None}
    assert _answer(unknown) == {
        "found": False,
        "message": 'Batch operation "batch_import_unknown" not found. Operations are kept for 1 hour after completion.',
    }
    # A bad argument is a tool error of one line that names the argument, not a thrown protocol error or a
    # traceback, and it does not echo the 500 characters back.
    assert bad["result"]["isError"] is True and bad["result"]["structuredContent"] is None
    [text] = bad["result"]["content"]
    assert "\n" not in text and "batch_operation_id" in text and "128" in text
    assert long_id not in text and "Traceback" not in output["stderr"]


def test_a_batch_recorded_by_the_python_library_through_the_typescript_client(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    with Tracker.open(db=str(db)) as tracker:
        batch = tracker.start_batch("import", total=5, inputs={"file": "contacts.csv"})
        for n in (1, 2, 3):
            batch.record_success(f"contact-{n}")
        batch.record_failure("missing email", row_number=4)
        batch.finish()
    output = run_client(
        db,
        [
            call("get_batch_status", batch_operation_id=batch.id),
            call("list_operations", kind="batch"),
            call("get_operation_items", operation_id=batch.id, outcome="failed"),
        ],
    )
    status, listed, failed = (_answer(entry) for entry in output["calls"])
    assert status["found"] is True and OPERATION_FIELDS <= set(status["operation"])
    operation = status["operation"]
    assert (operation["batch_operation_id"], operation["operation_type"], operation["status"]) == (
        batch.id, "import", "completed"
    )
    assert operation["progress"] == {"completed": 4, "total": 5, "percent": 80.0}
    assert operation["successful_ids"] == ["contact-1", "contact-2", "contact-3"]
    assert operation["failed_items"] == [{"row_number": 4, "error": "missing email"}]
    assert [row["operation_id"] for row in listed["operations"]] == [batch.id] and listed["next_cursor"] is None
    assert failed["found"] is True and failed["total_count"] == 1 and failed["next_cursor"] is None
    assert [item["error"] for item in failed["items"]] == ["missing email"]


def _type_arrays(schema: Any, where: str = "") -> list[str]:
    """Where a JSON schema uses a type array (["string", "null"]) or a null enum value: strict clients warn."""
    found: list[str] = []
    if isinstance(schema, dict):
        if isinstance(schema.get("type"), list):
            found.append(f"{where}: type {schema['type']}")
        if isinstance(schema.get("enum"), list) and None in schema["enum"]:
            found.append(f"{where}: enum with null")
        for key, value in schema.items():
            found += _type_arrays(value, f"{where}/{key}")
    elif isinstance(schema, list):
        for n, value in enumerate(schema):
            found += _type_arrays(value, f"{where}/{n}")
    return found


def test_every_tool_describes_its_answer_without_type_arrays(tmp_path: Path) -> None:
    output = run_client(tmp_path / "t.db", [])
    for tool in output["tools"]:
        name, out = tool["name"], tool["outputSchema"]
        # Before: {"type": "object", "additionalProperties": true}, which tells a client nothing.
        assert out.get("properties") and out.get("required"), name
        assert _type_arrays(tool["inputSchema"]) == [] and _type_arrays(out) == [], name
        assert tool["inputSchema"]["additionalProperties"] is False, name
    schemas = {tool["name"]: tool["outputSchema"] for tool in output["tools"]}
    ref = schemas["get_batch_status"]["properties"]["operation"]["$ref"]  # "#/$defs/Operation"
    operation = schemas["get_batch_status"]["$defs"][ref.rsplit("/", 1)[-1]]
    assert {"batch_operation_id", "progress", "successful_ids", "failed_items", "started_at"} <= set(operation["required"])
    assert not {"completed_at", "execution_time_ms"} & set(operation["required"])  # left out while running
    # One definition of the operation for every tool that shows it.
    assert schemas["cancel_operation"]["properties"]["operation"] == {"$ref": ref}
    assert schemas["cancel_operation"]["$defs"]["Operation"] == operation
    run = schemas["run_grid"]
    assert {"operation_id", "status"} <= set(run["required"]) and "request_id" not in run["required"]


def test_bad_arguments_through_the_typescript_client(tmp_path: Path) -> None:
    secret = "sk-live-123"
    output = run_client(
        tmp_path / "t.db",
        [
            call("list_operations", state="running"),  # a misspelt status: before, every operation came back
            call("run_grid", grid_id="g", secret=secret),
            call("run_grid", grid_id=secret),  # inputs missing: before, pydantic's text echoed grid_id
            call("get_batch_status", batch_operation_id=12),
            call("list_operations", limit=1000),
            call("get_operation_items", operation_id="x", outcome=secret),
        ],
    )
    expected = ["state", "secret", "inputs", "batch_operation_id", "limit", "outcome"]
    for entry, name in zip(output["calls"], expected, strict=True):
        assert "error" not in entry, entry  # a tool error, not a protocol error
        result = entry["result"]
        assert result["isError"] is True and result["structuredContent"] is None, entry
        [text] = result["content"]
        assert "\n" not in text and name in text, text
        assert secret not in text and "input_value" not in text and "pydantic" not in text, text
    assert "Traceback" not in output["stderr"]


def test_a_running_batch_leaves_its_end_fields_out_for_the_typescript_client(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    with Tracker.open(db=str(db)) as tracker:
        batch = tracker.start_batch("import", total=3)
        batch.record_success("contact-1")
        batch.flush()
        output = run_client(
            db, [call("get_batch_status", batch_operation_id=batch.id), call("list_operations", status="running")]
        )
        batch.finish()
    status, listed = (_answer(entry) for entry in output["calls"])  # each validated against its outputSchema
    operation = status["operation"]
    assert operation["status"] == "running" and operation["progress"]["completed"] == 1
    assert not {"completed_at", "execution_time_ms"} & set(operation), operation  # before: both null
    assert not {"completed_at", "execution_time_ms"} & set(listed["operations"][0])


def test_the_grid_tools_through_the_typescript_client(tmp_path: Path, fake_upstream: FakeUpstreamProcess) -> None:
    """The official client validates each structuredContent against the tool's outputSchema: the grid answers (the
    upstream's fields, described or not) pass, and the key the fake echoes back is not in any of them."""
    fake_upstream.configure(echo_key=True)
    output = run_client(
        tmp_path / "t.db",
        [
            call("get_workspace_details"),
            call("list_grids", search="lead", limit=5),
            call("get_grid_details", grid_id="g3"),
            call("get_grid_curl", grid_id="g3"),
            call("list_grids", page=0),
        ],
        **fake_upstream.env(),
    )
    tools = {tool["name"]: tool for tool in output["tools"]}
    for name in ("get_workspace_details", "list_grids", "get_grid_details", "get_grid_curl"):
        assert tools[name]["outputSchema"]["type"] == "object" and "required" in tools[name]["outputSchema"], name
    workspace, page, grid, curl, bad = output["calls"]
    workspace, page, grid, curl = (_answer(entry) for entry in (workspace, page, grid, curl))
    assert workspace["credits"]["remaining"] == 10_000 and workspace["api_key"] == "***"
    assert [g["id"] for g in page["grids"]] == ["g1", "g2"]
    assert grid["sources"][0]["type"] == "bitscale_api"  # a field the output schema does not name, kept
    assert curl["input_labels"] == ["company_name", "website"] and "$BITSCALE_API_KEY" in curl["curl"]
    assert bad["result"]["isError"] is True and bad["result"]["content"] == [
        "Error executing tool list_grids: page must be a whole number from 1 to 100000"
    ]
    assert fake_upstream.key not in json.dumps(output["calls"])


def test_a_request_nested_too_deeply_is_answered_and_the_next_one_served(tmp_path: Path) -> None:
    output = run_client(
        tmp_path / "t.db",
        [
            # Before: no answer at all; the client waited out its timeout (here 15 s, by default 60 s).
            {"tool": "get_batch_status", "nested_arguments": 250, "options": {"timeout": 15_000}},
            call("list_operations"),
        ],
    )
    deep, listed = output["calls"]
    assert "error" in deep and deep["error"]["code"] == -32600, deep
    assert "nested too deeply" in deep["error"]["message"]  # an answer: a timeout would be -32001
    assert _answer(listed)["operations"] == []
