"""Status answers for readers such as the MCP tools: an operation in the CONTRACTS.md shapes, bounded pages of
its items, opaque cursors, and argument checks. No protocol here; tracker/server/ turns these into MCP tools.

Every check raises InvalidInput naming the parameter, before anything is read or written."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

from . import limits
from .api import Tracker
from .db import database_errors
from .checks import type_name
from .errors import InvalidInput, OperationClosed, OperationNotFound
from .records import ItemRecord, OperationRecord, StatusRecord
from .settings import format_duration
from .shapes import (
    BatchStatus,
    Cancelled,
    FailedItem,
    Operation,
    OperationItems,
    OperationPage,
    OperationSummary,
    Progress,
)
from .timeutil import iso, parse_iso

OUTCOMES = ("succeeded", "failed")

# A status answer keeps a 100,000-item batch far under 16 KB (text and structured copies together):
# at most this many ids/failures, and at most this many bytes of each list.
STATUS_PAGE_IDS = 50
STATUS_PAGE_FAILURES = 20
STATUS_PAGE_BYTES = 3000
STATUS_ERROR_CHARS = 200  # error text per failure in a status page; get_operation_items has the full text
SUMMARY_ERROR_CHARS = 300
ITEMS_PAGE_BYTES = 64_000  # a get_operation_items page stops early when its items are long

_CURSOR_VERSION = 1
# The checksum catches cursors that were edited or cut short. It is not a secret: a cursor is only a position,
# and grants nothing a fresh call without one would not.
_CURSOR_KEY = b"tracker cursor v1"
_CHECKSUM_BYTES = 8


# -- argument checks ------------------------------------------------------------------------------------------------


def require_outcome(value: Any, name: str = "outcome") -> str:
    if value is None:
        return OUTCOMES[0]
    if not isinstance(value, str) or value not in OUTCOMES:
        raise InvalidInput(f"{name} must be \"succeeded\" or \"failed\"")
    return value


# -- cursors --------------------------------------------------------------------------------------------------------


def _checksum(payload: bytes) -> bytes:
    return hmac.new(_CURSOR_KEY, payload, hashlib.sha256).digest()[:_CHECKSUM_BYTES]


def encode_cursor(purpose: str, **position: Any) -> str:
    """urlsafe base64 of a short checksum and the compact JSON of the position."""
    payload = json.dumps({"v": _CURSOR_VERSION, "p": purpose, **position}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(_checksum(payload) + payload).decode().rstrip("=")


def decode_cursor(token: Any, purpose: str, tool: str, name: str = "cursor") -> dict[str, Any]:
    """The position a cursor of `purpose` holds; InvalidInput naming `name` if it is malformed, edited or foreign."""
    start_over = f"pass the next_cursor of the previous {tool} answer unchanged, or omit {name} to start over"
    if not isinstance(token, str):
        raise InvalidInput(f"{name} must be a string, not {type_name(token)}")
    if not token.strip() or len(token) > limits.CURSOR_CHARS:
        raise InvalidInput(f"{name} is not a cursor from {tool}; {start_over}")
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{name} is not a cursor from {tool}; {start_over}") from None
    checksum, payload = raw[:_CHECKSUM_BYTES], raw[_CHECKSUM_BYTES:]
    if len(checksum) < _CHECKSUM_BYTES or not hmac.compare_digest(checksum, _checksum(payload)):
        raise InvalidInput(f"{name} was altered or cut short; {start_over}")
    try:
        position = json.loads(payload)
    except ValueError:
        raise InvalidInput(f"{name} is not a cursor from {tool}; {start_over}") from None
    if not isinstance(position, dict) or position.get("v") != _CURSOR_VERSION:
        raise InvalidInput(f"{name} comes from another version of tracker; {start_over}")
    if position.get("p") != purpose:
        raise InvalidInput(f"{name} is a cursor of another tool, not of {tool}; {start_over}")
    return position


# -- shapes ---------------------------------------------------------------------------------------------------------


def _clip(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + "…"


_encode_str = json.encoder.encode_basestring  # what json.dumps(ensure_ascii=False) writes for a str


def _json_bytes(value: Any) -> int:
    """The size of `value` in the indented form the MCP text content uses, plus its nesting inside the answer.
    The values of a page, an id or a flat failure dict, are written here as that encoder would write them (it
    runs in pure Python when it indents, and sizing each item with it was a third of a status answer's cost)."""
    if type(value) is str:
        return len(_encode_str(value).encode()) + 8
    if type(value) is dict and value and all(
        type(key) is str and (type(v) is str or type(v) is int) for key, v in value.items()
    ):
        members = ",\n  ".join(
            f"{_encode_str(key)}: {_encode_str(v) if type(v) is str else int.__repr__(v)}" for key, v in value.items()
        )
        return len(("{\n  " + members + "\n}").encode()) + 8
    return len(json.dumps(value, ensure_ascii=False, indent=2).encode()) + 8


def progress(record: OperationRecord | StatusRecord) -> Progress:
    return {"completed": record.completed, "total": record.total, "percent": record.percent}


def failure_dict(item: ItemRecord, error_chars: int | None = None) -> FailedItem:
    """{id?, row_number?, error}: a key only when the failure has it."""
    failure: dict[str, Any] = {}  # shapes.FailedItem
    if item.item_id is not None:
        failure["id"] = item.item_id
    if item.row_number is not None:
        failure["row_number"] = item.row_number
    failure["error"] = item.error if error_chars is None else _clip(item.error, error_chars)
    return failure  # type: ignore[return-value]


def bounded_page(
    items: list[ItemRecord], limit: int, max_bytes: int, render: Callable[[ItemRecord], Any], at_least_one: bool
) -> tuple[list[Any], int | None, bool]:
    """The first items (up to `limit`, and up to `max_bytes` rendered) from `items`, which was fetched with one
    extra row. Returns the rendered page, the seq of its last item, and whether more items follow it."""
    page: list[Any] = []
    used = 0
    last_seq: int | None = None
    for item in items[:limit]:
        value = render(item)
        size = _json_bytes(value)
        if used + size > max_bytes and (page or not at_least_one):
            break
        page.append(value)
        used += size
        last_seq = item.seq
    return page, last_seq, len(page) < len(items)


def operation_dict(
    record: OperationRecord | StatusRecord, successful: list[ItemRecord], failures: list[ItemRecord]
) -> Operation:
    """CONTRACTS.md section 1 OPERATION plus tracker's own fields: counts, the error, and for each list a
    truncation flag and the get_operation_items cursor for the rest. The original's optional fields
    (completed_at, execution_time_ms) are left out while unknown, never null: clients typed against it read a null
    as a value. `successful` and `failures` are the first items, fetched with one row more than a page."""
    ids, last_ok, ok_truncated = bounded_page(
        successful, STATUS_PAGE_IDS, STATUS_PAGE_BYTES, lambda item: item.item_id, at_least_one=False
    )
    failed, last_failed, failed_truncated = bounded_page(
        failures,
        STATUS_PAGE_FAILURES,
        STATUS_PAGE_BYTES,
        lambda item: failure_dict(item, STATUS_ERROR_CHARS),
        at_least_one=False,
    )
    return {
        "batch_operation_id": record.id,
        **_core(record),
        "successful_ids": ids,
        "failed_items": failed,
        **_counts(record),
        "successful_ids_truncated": ok_truncated,
        "successful_ids_next_cursor": _items_cursor(record.id, "succeeded", last_ok) if ok_truncated else None,
        "failed_items_truncated": failed_truncated,
        "failed_items_next_cursor": _items_cursor(record.id, "failed", last_failed) if failed_truncated else None,
    }


def _core(record: OperationRecord | StatusRecord) -> dict[str, Any]:
    """The contract's fields of shapes.OperationCore; the end times only once it has ended."""
    core: dict[str, Any] = {
        "operation_type": record.operation_type,
        "status": record.status,
        "progress": progress(record),
        "started_at": iso(record.started_at),
    }
    if record.completed_at is not None:
        core["completed_at"] = iso(record.completed_at)
    if record.execution_time_ms is not None:
        core["execution_time_ms"] = record.execution_time_ms
    return core


def _counts(record: OperationRecord | StatusRecord) -> dict[str, Any]:
    return {
        "kind": record.kind,
        "succeeded_count": record.succeeded_count,
        "failed_count": record.failed_count,
        "error": _clip(record.error, SUMMARY_ERROR_CHARS),
    }


def summary_dict(record: OperationRecord) -> OperationSummary:
    """One row of list_operations: counts and times, no item lists; a run's fields only once known."""
    summary: dict[str, Any] = {"operation_id": record.id, **_core(record), **_counts(record)}
    if record.kind == "run":
        run = {"request_id": record.request_id, "grid_id": record.grid_id, "mode": record.mode}
        summary.update({name: value for name, value in run.items() if value is not None})
    return summary  # type: ignore[return-value]


def _items_cursor(operation_id: str, outcome: str, after_seq: int | None) -> str:
    return encode_cursor("items", op=operation_id, o=outcome, s=after_seq or 0)


# -- the service ----------------------------------------------------------------------------------------------------


class StatusService:
    """Reads (and the cancel) behind the status tools, over one Tracker. Arguments arrive already checked by the
    functions above, except cursors, which are checked here against the call they are used with. `subject` is the
    caller's (tracker.server.caller.current_subject()): an operation it may not see (records.Viewer) gets the same
    answer as an id that never existed."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.retention = format_duration(tracker.settings.retention_s)

    def not_found(self, noun: str, operation_id: str, kept: str = "Operations") -> Any:
        return {
            "found": False,
            "message": f'{noun} "{operation_id}" not found. {kept} are kept for {self.retention} after completion.',
        }

    def status_read_at_once(self) -> bool:
        """Whether batch_status would run now without waiting on anything (Store.status_read_at_once): a caller on
        an event loop may then run it there, as its own bounded work."""
        return self.tracker.store.status_read_at_once()

    def batch_status(self, operation_id: str, subject: str | None = None) -> BatchStatus:
        viewer = self.tracker.viewer(subject)
        # One snapshot read: a status poll is the hot read path (figure 2 of scripts/bench.py).
        with database_errors(self.tracker.store.location):
            found = self.tracker.store.get_with_first_items(
                operation_id, STATUS_PAGE_IDS + 1, STATUS_PAGE_FAILURES + 1, viewer
            )
        if found is None:
            return self.not_found("Batch operation", operation_id)
        return {"found": True, "operation": operation_dict(*found)}

    def list_operations(
        self,
        kind: str | None,
        status: str | None,
        operation_type: str | None,
        limit: int,
        cursor: Any,
        subject: str | None = None,
    ) -> OperationPage:
        viewer = self.tracker.viewer(subject)
        filters = [kind, status, operation_type]
        before = None
        if cursor is not None:
            position = decode_cursor(cursor, "list", "list_operations")
            if position.get("f") != filters:
                raise InvalidInput(
                    "cursor belongs to a list_operations call with other filters (kind, status, operation_type); "
                    "pass the same filters with it, or omit cursor to start over"
                )
            try:
                before = (parse_iso(position["t"]), str(position["i"]))
                if "\x00" in before[1]:
                    raise ValueError("NUL")
            except (KeyError, ValueError):
                raise InvalidInput("cursor is not a cursor from list_operations; omit it to start over") from None
        # One row more than the page says whether another follows; Tracker.list stops at limits.LIST_LIMIT.
        with database_errors(self.tracker.store.location):
            rows = self.tracker.store.list_operations(kind, status, operation_type, before, limit + 1, viewer)
        page = rows[:limit]
        next_cursor = None
        if len(rows) > limit:
            last = page[-1]
            next_cursor = encode_cursor("list", t=iso(last.started_at), i=last.id, f=filters)
        return {"operations": [summary_dict(r) for r in page], "count": len(page), "next_cursor": next_cursor}

    def operation_items(
        self, operation_id: str, outcome: str, cursor: Any, limit: int, subject: str | None = None
    ) -> OperationItems:
        after_seq = 0
        if cursor is not None:
            position = decode_cursor(cursor, "items", "get_operation_items")
            if position.get("op") != operation_id:
                raise InvalidInput("cursor belongs to another operation; pass it with the operation_id it came from")
            if position.get("o") != outcome:
                other = position.get("o")
                raise InvalidInput(f'cursor pages {other} items; pass it with outcome="{other}"')
            after_seq = position.get("s")
            # The cursor key is public, so a well-formed cursor may still hold any number: seq is a 64-bit column.
            if isinstance(after_seq, bool) or not isinstance(after_seq, int) or not 0 <= after_seq < limits.MAX_SEQ:
                raise InvalidInput("cursor is not a cursor from get_operation_items; omit it to start over")
        record = self.tracker.summary(operation_id, subject)
        if record is None:
            return self.not_found("Operation", operation_id)
        ok = outcome == "succeeded"
        rows = self.tracker.items(operation_id, ok=ok, after_seq=after_seq, limit=limit + 1, subject=subject)
        render = (lambda item: item.item_id) if ok else failure_dict
        items, last_seq, more = bounded_page(rows, limit, ITEMS_PAGE_BYTES, render, at_least_one=True)
        return {
            "found": True,
            "operation_id": operation_id,
            "outcome": outcome,
            "status": record.status,
            "total_count": record.succeeded_count if ok else record.failed_count,
            "items": items,
            "next_cursor": _items_cursor(operation_id, outcome, last_seq) if more else None,
        }

    def cancel(self, operation_id: str, subject: str | None = None) -> Cancelled:
        try:
            self.tracker.cancel(operation_id, "cancelled by cancel_operation", subject)
        except OperationNotFound:
            return self.not_found("Operation", operation_id)
        except OperationClosed:
            current = self.tracker.summary(operation_id, subject)
            status = current.status if current is not None else "ended"
            raise OperationClosed(
                f"operation_id names an operation that is already {status}; only a running operation can be cancelled"
            ) from None
        return {"cancelled": True, **self.batch_status(operation_id, subject)}
