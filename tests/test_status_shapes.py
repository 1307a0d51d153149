"""tracker.status in-process: the CONTRACTS.md shapes, bounded pages, cursors and argument checks that the MCP
tools answer with (tests/test_mcp_server.py drives the same through a real stdio session)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
from dataclasses import replace

import pytest

from tracker import InvalidInput, OperationClosed, Tracker, limits, status
from tracker.ids import new_operation_id
from tracker.checks import optional_choice, optional_operation_type, require_id, require_limit
from tracker.status import STATUS_ERROR_CHARS, StatusService, decode_cursor, encode_cursor, require_outcome
from tracker.timeutil import utcnow

from .conftest import ENDED_FIELDS, OPERATION_FIELDS



@pytest.fixture
def service(tracker: Tracker) -> StatusService:
    return StatusService(tracker)


def create_run(tracker: Tracker, request_id: str, status_outputs: dict | None = None) -> str:
    """A remote-run row as the runs module records it (the store is the only writer of runs today)."""
    record = tracker.store.create_operation(
        {
            "id": new_operation_id("run", "grid_run"),
            "kind": "run",
            "operation_type": "grid_run",
            "started_at": utcnow(),
            "request_id": request_id,
            "grid_id": "grid-42",
            "mode": "async",
            "owner_host": socket.gethostname(),
            "owner_pid": os.getpid(),
        }
    )
    if status_outputs is not None:
        tracker.store.finish(record.id, utcnow(), outputs=status_outputs, set_outputs=True)
    return record.id


def test_running_batch_has_every_contract_field(tracker: Tracker, service: StatusService) -> None:
    batch = tracker.start_batch("update", total=10)
    answer = service.batch_status(batch.id)
    assert answer["found"] is True
    operation = answer["operation"]
    assert OPERATION_FIELDS <= set(operation)
    assert operation["batch_operation_id"] == batch.id
    assert (operation["operation_type"], operation["status"]) == ("update", "running")
    assert operation["progress"] == {"completed": 0, "total": 10, "percent": 0.0}
    assert operation["successful_ids"] == [] and operation["failed_items"] == []
    assert operation["started_at"].endswith("Z")
    assert not ENDED_FIELDS & set(operation)  # left out while unknown, never null (CONTRACTS.md section 1)
    assert operation["successful_ids_truncated"] is False and operation["successful_ids_next_cursor"] is None


def test_completed_batch_shape_and_failure_keys(tracker: Tracker, service: StatusService) -> None:
    batch = tracker.start_batch("import", total=4)
    batch.record_success("a")
    batch.record_failure("locked", item_id="b")
    batch.record_failure("bad email", row_number=3)
    batch.record_failure("both", item_id="d", row_number=4)
    record = batch.finish()
    operation = service.batch_status(batch.id)["operation"]
    assert operation["status"] == "completed"
    assert operation["progress"] == {"completed": 4, "total": 4, "percent": 100.0}
    assert operation["successful_ids"] == ["a"]
    assert operation["failed_items"] == [
        {"id": "b", "error": "locked"},
        {"row_number": 3, "error": "bad email"},
        {"id": "d", "row_number": 4, "error": "both"},
    ]
    assert operation["execution_time_ms"] == record.execution_time_ms
    assert operation["completed_at"].endswith("Z") and ENDED_FIELDS <= set(operation)
    json.dumps(operation)  # JSON-ready as it is


def test_not_found_message_names_the_retention(tracker: Tracker) -> None:
    assert StatusService(tracker).batch_status("batch_nope") == {
        "found": False,
        "message": 'Batch operation "batch_nope" not found. Operations are kept for 1 hour after completion.',
    }
    two_hours = Tracker(replace(tracker.settings, retention_s=7200))
    try:
        assert "kept for 2 hours after completion" in StatusService(two_hours).batch_status("x")["message"]
    finally:
        two_hours.close()


def test_status_page_is_bounded_by_count_and_bytes(tracker: Tracker, service: StatusService) -> None:
    batch = tracker.start_batch("update", total=300)
    for n in range(200):
        batch.record_success(f"id-{n}")
    for n in range(60):
        batch.record_failure("x" * 4000, item_id=f"f-{n}")
    batch.finish()
    operation = service.batch_status(batch.id)["operation"]
    assert operation["successful_ids"] == [f"id-{n}" for n in range(50)]
    assert operation["successful_ids_truncated"] is True
    assert 0 < len(operation["failed_items"]) < 20  # the byte bound cut it before the count bound
    for failure in operation["failed_items"]:
        assert len(failure["error"]) == STATUS_ERROR_CHARS + 1 and failure["error"].endswith("…")
    assert operation["failed_items_truncated"] is True
    assert len(json.dumps(operation, indent=2).encode()) < 8000

    long_ids = tracker.start_batch("update")
    for n in range(10):
        long_ids.record_success(f"{n}" + "é" * 1023)
    long_ids.finish()
    page = service.batch_status(long_ids.id)["operation"]
    assert 0 < len(page["successful_ids"]) < 10 and page["successful_ids_truncated"] is True


def test_cursor_pages_cover_every_item_once_in_order(tracker: Tracker, service: StatusService) -> None:
    batch = tracker.start_batch("update")
    for n in range(130):
        batch.record_success(f"id-{n}")
        if n % 10 == 0:
            batch.record_failure(f"error {n}", row_number=n + 1)
    batch.finish()
    operation = service.batch_status(batch.id)["operation"]
    seen = list(operation["successful_ids"])
    cursor = operation["successful_ids_next_cursor"]
    while cursor is not None:
        page = service.operation_items(batch.id, "succeeded", cursor, 17)
        assert page["total_count"] == 130 and len(page["items"]) <= 17
        seen += page["items"]
        cursor = page["next_cursor"]
    assert seen == [f"id-{n}" for n in range(130)]
    failures = service.operation_items(batch.id, "failed", None, limits.ITEMS_LIMIT)
    assert [f["row_number"] for f in failures["items"]] == [n + 1 for n in range(0, 130, 10)]
    assert failures["next_cursor"] is None


def test_items_page_of_long_failures_stops_early_but_always_advances(tracker: Tracker, service: StatusService) -> None:
    batch = tracker.start_batch("import")
    for n in range(40):
        batch.record_failure("\x01" * 4000, item_id="é" * 1024, row_number=n + 1)  # escapes to 6 bytes a char
    batch.finish()
    rows: list[int] = []
    cursor = None
    while True:
        page = service.operation_items(batch.id, "failed", cursor, 1000)
        assert 1 <= len(page["items"]) < 40
        rows += [f["row_number"] for f in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert rows == list(range(1, 41))
    assert page["items"][0]["error"] == "\x01" * 4000  # full text here, clipped only in the status page


@pytest.mark.parametrize(
    "check, value, message",
    [
        (lambda v: require_id(v, "batch_operation_id"), "", "batch_operation_id must not be empty"),
        (lambda v: require_id(v, "batch_operation_id"), " \t", "batch_operation_id must not be empty"),
        (lambda v: require_id(v, "batch_operation_id"), "x" * 257, "batch_operation_id is longer than 128"),
        (lambda v: require_id(v, "batch_operation_id"), 7, "batch_operation_id must be a string, not integer"),
        (lambda v: require_id(v, "request_id"), None, "request_id must be a string, not null"),
        (lambda v: require_id(v, "operation_id"), ["a"], "operation_id must be a string, not array"),
        (lambda v: require_limit(v, "limit", limits.LIST_LIMIT, 20), 0, "limit must be a whole number from 1 to 100"),
        (lambda v: require_limit(v, "limit", limits.LIST_LIMIT, 20), 101, "from 1 to 100"),
        (lambda v: require_limit(v, "limit", limits.LIST_LIMIT, 20), True, "from 1 to 100"),
        (lambda v: require_limit(v, "limit", limits.ITEMS_LIMIT, 100), "5", "limit must be a whole number from 1 to 1000"),
        (lambda v: require_limit(v, "limit", limits.ITEMS_LIMIT, 100), 2.5, "from 1 to 1000"),
        (lambda v: optional_choice(v, "kind", ("run", "batch")), "job", "kind must be one of run, batch"),
        (lambda v: optional_operation_type(v), "", "operation_type must be a non-empty string"),
        (lambda v: optional_operation_type(v), "t" * 65, "operation_type is longer than 64"),
        (lambda v: require_outcome(v), "ok", 'outcome must be "succeeded" or "failed"'),
    ],
)
def test_argument_checks_name_the_parameter(check, value, message: str) -> None:  # noqa: ANN001
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        check(value)


def test_argument_checks_pass_good_values() -> None:
    assert require_id("batch_x", "batch_operation_id") == "batch_x"
    assert require_id("x" * limits.ID_CHARS, "operation_id") == "x" * limits.ID_CHARS
    assert require_limit(None, "limit", 100, 20) == 20 and require_limit(100, "limit", 100, 20) == 100
    assert optional_choice(None, "kind", ("run",)) is None and require_outcome(None) == "succeeded"
    assert optional_operation_type(" import ") == "import"


def test_cursor_round_trip_and_every_kind_of_bad_cursor() -> None:
    token = encode_cursor("items", op="batch_a", o="failed", s=41)
    assert decode_cursor(token, "items", "get_operation_items")["s"] == 41
    payload_char = len(token) - 5
    bad = {
        "garbage": "not a cursor!",
        "empty": "",
        "too long": "A" * 5000,
        "checksum edited": ("B" if token[0] != "B" else "C") + token[1:],
        "payload edited": token[:payload_char] + ("A", "B")[token[payload_char] == "A"] + token[payload_char + 1 :],
        "cut short": token[:-6],
    }
    for label, value in bad.items():
        with pytest.raises(InvalidInput, match=r"^cursor ") as raised:
            decode_cursor(value, "items", "get_operation_items")
        assert "omit cursor" in str(raised.value) or "omit it" in str(raised.value), label
    with pytest.raises(InvalidInput, match="cursor of another tool"):
        decode_cursor(encode_cursor("list", t="x", i="y", f=[None, None, None]), "items", "get_operation_items")
    old_version = b'{"v":0,"p":"items","op":"batch_a","o":"failed","s":1}'
    forged = base64.urlsafe_b64encode(status._checksum(old_version) + old_version).decode()
    with pytest.raises(InvalidInput, match="cursor comes from another version of tracker"):
        decode_cursor(forged, "items", "get_operation_items")
    with pytest.raises(InvalidInput, match="cursor must be a string, not integer"):
        decode_cursor(12, "items", "get_operation_items")


def test_items_cursor_must_match_operation_and_outcome(tracker: Tracker, service: StatusService) -> None:
    batch = tracker.start_batch("update")
    other = tracker.start_batch("update")
    for n in range(120):
        batch.record_success(n)
    batch.finish()
    cursor = service.batch_status(batch.id)["operation"]["successful_ids_next_cursor"]
    with pytest.raises(InvalidInput, match="cursor belongs to another operation"):
        service.operation_items(other.id, "succeeded", cursor, 10)
    with pytest.raises(InvalidInput, match='cursor pages succeeded items; pass it with outcome="succeeded"'):
        service.operation_items(batch.id, "failed", cursor, 10)
    assert service.operation_items(batch.id, "succeeded", cursor, 10)["items"][0] == "50"


def test_list_pages_newest_first_with_filters_bound_to_the_cursor(tracker: Tracker, service: StatusService) -> None:
    ids = [tracker.start_batch("import" if n % 2 else "delete").id for n in range(25)]
    seen: list[str] = []
    cursor = None
    while True:
        page = service.list_operations("batch", None, "import", 5, cursor)
        seen += [row["operation_id"] for row in page["operations"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids[1::2]) and len(seen) == len(set(seen))
    started = [tracker.get(i).started_at for i in seen]
    assert started == sorted(started, reverse=True)
    first = service.list_operations("batch", None, "import", 5, None)["next_cursor"]
    with pytest.raises(InvalidInput, match="cursor belongs to a list_operations call with other filters"):
        service.list_operations("batch", None, "delete", 5, first)


def test_run_status_from_the_table(tracker: Tracker) -> None:
    """Without an upstream, get_run_status answers from the table, saying the status is the last recorded."""
    from tracker.errors import OperationNotFound
    from tracker.remote import RunsService

    runs = RunsService(replace(tracker.settings, upstream_key=""), tracker.engine)
    running = create_run(tracker, "req-running")
    create_run(tracker, "req-done", status_outputs={"col_1": {"value": "ACME", "name": "Company"}})
    batch = tracker.start_batch("update")

    async def scenario():  # noqa: ANN202
        try:
            answers = [await runs.get_run_status(i) for i in ("req-running", "req-done", running)]
            for missing in ("req-missing", batch.id):  # a batch is not a run
                with pytest.raises(OperationNotFound, match="no upstream is configured"):
                    await runs.get_run_status(missing)
            return answers
        finally:
            await runs.aclose()

    answer, done, by_id = asyncio.run(scenario())
    assert {k: answer[k] for k in ("mode", "status", "grid_id", "stale")} == {
        "mode": "async", "status": "running", "grid_id": "grid-42", "stale": True
    }
    assert "BITSCALE_API_KEY is not set" in answer["error"]
    assert "outputs" not in answer and answer["operation_id"] == running
    assert done["status"] == "completed" and done["outputs"] == {"col_1": {"value": "ACME", "name": "Company"}}
    assert by_id["request_id"] == "req-running"  # the operation id finds it too


def test_cancel_running_terminal_and_unknown(tracker: Tracker, service: StatusService) -> None:
    batch = tracker.start_batch("update", total=3)
    answer = service.cancel(batch.id)
    assert answer["cancelled"] is True and answer["operation"]["status"] == "cancelled"
    with pytest.raises(OperationClosed, match="is already cancelled; only a running operation can be cancelled"):
        service.cancel(batch.id)
    done = tracker.start_batch("update")
    done.finish()
    with pytest.raises(OperationClosed, match="is already completed"):
        service.cancel(done.id)
    assert service.cancel("batch_unknown")["found"] is False
    assert tracker.get(done.id).status == "completed"


@pytest.mark.parametrize(
    "value",
    ["rec_0001", "", "é ☃ 😀", 'quote " backslash \\ newline \n tab \t nul \x00 \x1f \u2028',
     {"id": "a", "row_number": 7, "error": "bad"}, {"row_number": 2**70, "error": "é\n"}, {"error": "x"},
     {"id": "a", "row_number": True, "error": "bool"}, {"error": None}, {"error": 1.5}, {1: "int key"}, {}, [1, "a"]],
)
def test_page_item_sizes_are_those_of_the_indented_json(value) -> None:  # noqa: ANN001
    """bounded_page sizes an id or a flat failure without the indenting encoder: the same bytes as json.dumps."""
    assert status._json_bytes(value) == len(json.dumps(value, ensure_ascii=False, indent=2).encode()) + 8


def test_a_full_last_page_of_list_operations_says_whether_more_follow(tracker: Tracker, service: StatusService) -> None:
    """limit=limits.LIST_LIMIT fetches one row more than Tracker.list allows, to know if a next page exists."""
    for _ in range(limits.LIST_LIMIT + 1):
        tracker.start_batch("import")
    first = service.list_operations(None, None, None, limits.LIST_LIMIT, None)
    assert first["count"] == limits.LIST_LIMIT and first["next_cursor"] is not None
    rest = service.list_operations(None, None, None, limits.LIST_LIMIT, first["next_cursor"])
    assert rest["count"] == 1 and rest["next_cursor"] is None
    with pytest.raises(InvalidInput, match=f"limit must be a whole number from 1 to {limits.LIST_LIMIT}"):
        tracker.list(limit=limits.LIST_LIMIT + 1)
