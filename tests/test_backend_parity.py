"""Contract tests that run on SQLite and on a real PostgreSQL server: cursor paging through tracker/status.py
(list_operations, get_operation_items, the status answer's *_next_cursor), with ties and with writers between
pages. Each page is a separate read, as it is for an MCP client, so nothing relies on one snapshot."""

from __future__ import annotations

from typing import Any

import pytest

from tracker import InvalidInput, Tracker
from tracker.status import STATUS_PAGE_IDS, StatusService


@pytest.fixture
def tracker(backend_tracker: Tracker) -> Tracker:
    return backend_tracker


@pytest.fixture
def service(tracker: Tracker) -> StatusService:
    return StatusService(tracker)


def all_pages(fetch: Any, key: str) -> tuple[list[Any], int]:
    """Follow next_cursor to the end; returns every row and the number of pages."""
    rows: list[Any] = []
    cursor = None
    pages = 0
    while True:
        page = fetch(cursor)
        pages += 1
        rows += page[key]
        cursor = page["next_cursor"]
        if cursor is None:
            return rows, pages
        assert pages < 1000


def test_list_pages_cover_every_operation_once_newest_first_despite_ties(
    tracker: Tracker, service: StatusService
) -> None:
    # Created back to back: many share a millisecond, so order within a tie rests on the id.
    ids = {tracker.start_batch("import" if n % 2 else "update").id for n in range(40)}
    rows, pages = all_pages(lambda cursor: service.list_operations(None, None, None, 3, cursor), "operations")
    listed = [(row["started_at"], row["operation_id"]) for row in rows]
    assert [op_id for _, op_id in listed] == [r.id for r in tracker.list(limit=100)]
    assert len(listed) == len(set(listed)) == 40 and {op_id for _, op_id in listed} == ids
    assert listed == sorted(listed, reverse=True)
    assert pages == 14


def test_list_paging_has_no_gaps_or_repeats_while_operations_start(tracker: Tracker, service: StatusService) -> None:
    old = {tracker.start_batch("import").id for _ in range(12)}
    seen: list[str] = []
    cursor = None
    started_meanwhile = set()
    while True:
        page = service.list_operations("batch", None, "import", 5, cursor)
        seen += [row["operation_id"] for row in page["operations"]]
        started_meanwhile.add(tracker.start_batch("import").id)  # newer than every page still to come
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) and set(seen) == old
    assert not started_meanwhile & set(seen)
    with pytest.raises(InvalidInput, match="other filters"):
        first = service.list_operations("batch", None, "import", 5, None)
        service.list_operations("batch", None, "update", 5, first["next_cursor"])


def test_list_filters_page_the_same_on_both_backends(tracker: Tracker, service: StatusService) -> None:
    done = [tracker.start_batch("delete") for _ in range(7)]
    for batch in done:
        batch.record_success("x")
        batch.finish()
    cancelled = [tracker.start_batch("delete") for _ in range(4)]
    for batch in cancelled:
        tracker.cancel(batch.id)
    tracker.start_batch("delete")
    rows, _ = all_pages(lambda c: service.list_operations(None, "completed", "delete", 2, c), "operations")
    assert {row["operation_id"] for row in rows} == {b.id for b in done}
    rows, _ = all_pages(lambda c: service.list_operations("batch", "cancelled", None, 3, c), "operations")
    assert {row["operation_id"] for row in rows} == {b.id for b in cancelled}
    assert all(row["status"] == "cancelled" for row in rows)
    assert service.list_operations("run", None, None, 5, None) == {"operations": [], "count": 0, "next_cursor": None}


@pytest.mark.parametrize("outcome", ["succeeded", "failed"])
def test_item_pages_cover_every_item_once_in_completion_order_while_recording(
    tracker: Tracker, service: StatusService, outcome: str
) -> None:
    batch = tracker.start_batch("import", total=300)
    expected: list[Any] = []

    def record(n: int) -> None:
        if n % 4 == 0:
            batch.record_failure(f"row {n} rejected: ' OR 1=1 --", item_id=f"f{n}", row_number=n)
            if outcome == "failed":
                expected.append({"id": f"f{n}", "row_number": n, "error": f"row {n} rejected: ' OR 1=1 --"})
        else:
            batch.record_success(f"s{n}")
            if outcome == "succeeded":
                expected.append(f"s{n}")

    for n in range(1, 201):
        record(n)
    batch.flush()
    got: list[Any] = []
    cursor = None
    n = 201
    while True:
        page = service.operation_items(batch.id, outcome, cursor, 7)
        assert page["found"] is True and len(page["items"]) <= 7
        got += page["items"]
        cursor = page["next_cursor"]
        if n <= 300:  # more items land between pages; they come after everything already paged
            for _ in range(10):
                record(n)
                n += 1
            batch.flush()
        if cursor is None:
            break
    assert got == expected[: len(got)]
    batch.finish()
    rest, _ = all_pages(lambda c: service.operation_items(batch.id, outcome, c, 1000), "items")
    assert rest == expected and len(expected) == (225 if outcome == "succeeded" else 75)


def test_status_answer_cursor_continues_right_after_its_first_page(tracker: Tracker, service: StatusService) -> None:
    batch = tracker.start_batch("import", total=500)
    for n in range(500):
        batch.record_success(f"id-{n:03d}")
    batch.finish()
    status = service.batch_status(batch.id)["operation"]
    first = status["successful_ids"]
    assert status["successful_ids_truncated"] is True and len(first) <= STATUS_PAGE_IDS
    rest, _ = all_pages(
        lambda c: service.operation_items(batch.id, "succeeded", c or status["successful_ids_next_cursor"], 100),
        "items",
    )
    assert first + rest == [f"id-{n:03d}" for n in range(500)]
    assert service.batch_status(batch.id)["operation"]["failed_items_next_cursor"] is None
