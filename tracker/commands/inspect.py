"""The operator's read commands: `tracker ls` (a table), `tracker show ID` (the full record, ids paged) and
`tracker watch ID` (a live progress bar read from the database until the operation ends). Human output by
default, --json for scripts."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields
from datetime import datetime
from typing import Any

from .. import limits
from ..api import Tracker
from ..errors import OperationNotFound
from ..models import COMPLETED, KINDS, STATUSES
from ..records import ItemRecord, OperationRecord
from ..settings import Settings
from ..timeutil import iso
from ._operator import (
    add_db_flag,
    add_json_flag,
    duration,
    int_range,
    item_json,
    operation_detail,
    operation_summary,
    print_json,
)

OUTCOMES = {"succeeded": True, "failed": False}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    ls = subparsers.add_parser("ls", help="list operations, newest first", description="List operations, newest first.")
    ls.add_argument("--status", choices=STATUSES, help="only operations in this state")
    ls.add_argument("--kind", choices=KINDS, help="only batches or only runs")
    ls.add_argument("--type", dest="operation_type", metavar="TYPE", help="only this operation_type (e.g. import)")
    ls.add_argument(
        "--limit", type=int_range(1, limits.LIST_LIMIT), default=limits.LIST_LIMIT_DEFAULT,
        help=f"at most this many rows (1-{limits.LIST_LIMIT}, default {limits.LIST_LIMIT_DEFAULT})",
    )
    add_db_flag(ls)
    add_json_flag(ls)
    ls.set_defaults(run=run_ls)

    show = subparsers.add_parser(
        "show", help="one operation's full record, with its ids and failures paged",
        description="One operation's full record and the first page of its successful ids and failed items; "
        "--page with --after pages on through either list.",
    )
    show.add_argument("id", help="the operation id (batch_operation_id)")
    show.add_argument("--page", choices=sorted(OUTCOMES), help="print only this list, from --after on")
    show.add_argument("--after", type=int_range(0, limits.MAX_SEQ - 1), default=0, metavar="SEQ",
                      help="continue after this item (the number a previous page ended with)")
    show.add_argument(
        "--limit", type=int_range(1, limits.ITEMS_LIMIT), default=20,
        help=f"items per list (1-{limits.ITEMS_LIMIT}, default 20)",
    )
    add_db_flag(show)
    add_json_flag(show)
    show.set_defaults(run=run_show)

    watch = subparsers.add_parser(
        "watch", help="a live progress bar until the operation ends",
        description="Follow an operation's progress from the database until it ends. Exit 0 when it completed, "
        "1 when it failed or was cancelled, 3 on --timeout.",
    )
    watch.add_argument("id", help="the operation id")
    watch.add_argument("--interval", type=duration, default=0.25, metavar="D", help="how often to read (default 0.25s)")
    watch.add_argument("--timeout", type=duration, default=None, metavar="D", help="give up after D (exit 3)")
    add_db_flag(watch)
    watch.add_argument("--json", action="store_true", help="one JSON line per change instead of a bar")
    watch.set_defaults(run=run_watch)


def _open(settings: Settings) -> Tracker:
    return Tracker(settings, create=False)


def _get(tracker: Tracker, operation_id: str, summary: bool = False) -> OperationRecord:
    record = tracker.summary(operation_id) if summary else tracker.get(operation_id)
    if record is None:
        raise OperationNotFound(
            f"operation {operation_id!r} not found (never existed, or purged after the retention)"
        )
    return record


# -- ls -------------------------------------------------------------------------------------------------------------


def run_ls(args: argparse.Namespace, settings: Settings) -> int:
    with _open(settings) as tracker:
        records = tracker.list(kind=args.kind, status=args.status, operation_type=args.operation_type, limit=args.limit)
    if args.json:
        print_json([operation_summary(r) for r in records])
        return 0
    if not records:
        print("no operations")
        return 0
    header = ("ID", "KIND", "TYPE", "STATUS", "DONE/TOTAL", "%", "FAILED", "STARTED (UTC)", "TOOK")
    rows = [
        (
            r.id, r.kind, r.operation_type, r.status, f"{r.completed}/{r.total}", f"{r.percent:g}",
            str(r.failed_count), iso(r.started_at) or "",
            "-" if r.execution_time_ms is None else f"{r.execution_time_ms / 1000:.2f}s",
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


# -- show -----------------------------------------------------------------------------------------------------------


def _page(
    tracker: Tracker, record: OperationRecord, ok: bool, after: int, limit: int
) -> tuple[list[ItemRecord], int | None]:
    items = tracker.items(record.id, ok=ok, after_seq=after, limit=limit + 1)
    next_after = items[limit - 1].seq if len(items) > limit else None
    return items[:limit], next_after


def run_show(args: argparse.Namespace, settings: Settings) -> int:
    with _open(settings) as tracker:
        record = _get(tracker, args.id)
        if args.page:
            items, next_after = _page(tracker, record, OUTCOMES[args.page], args.after, args.limit)
            return _print_page(args, record, items, next_after)
        succeeded, succeeded_next = _page(tracker, record, True, 0, args.limit)
        failed, failed_next = _page(tracker, record, False, 0, args.limit)
    lists = {
        "successful_ids": (succeeded, succeeded_next, record.succeeded_count, "succeeded"),
        "failed_items": (failed, failed_next, record.failed_count, "failed"),
    }
    if args.json:
        print_json(
            {
                "operation": operation_detail(record),
                **{
                    key: {
                        "items": [item.item_id for item in items] if key == "successful_ids" else
                        [{k: v for k, v in item_json(item).items() if k != "seq"} for item in items],
                        "more": max(0, count - len(items)),
                        "next_after": next_after,
                    }
                    for key, (items, next_after, count, _) in lists.items()
                },
            }
        )
        return 0
    _print_record(record)
    for key, (items, next_after, count, page) in lists.items():
        title = "successful ids" if page == "succeeded" else "failed items"
        print(f"{title} ({count}):" if len(items) == count else f"{title} (first {len(items)} of {count}):")
        for item in items:
            print(f"  {_item_text(item)}")
        if next_after is not None:
            print(f"  ... {count - len(items)} more, use: tracker show {record.id} --page {page} --after {next_after}")
    return 0


def _print_page(
    args: argparse.Namespace, record: OperationRecord, items: list[ItemRecord], next_after: int | None
) -> int:
    if args.json:
        print_json(
            {"operation_id": record.id, "page": args.page, "after": args.after,
             "items": [item_json(item) for item in items], "next_after": next_after}
        )
        return 0
    for item in items:
        print(f"{item.seq}  {_item_text(item)}")
    if next_after is not None:
        print(f"... more, use: tracker show {record.id} --page {args.page} --after {next_after}")
    elif not items:
        print(f"no {args.page} items after {args.after}")
    return 0


def _item_text(item: ItemRecord) -> str:
    if item.ok:
        return str(item.item_id)
    where = " ".join(part for part in (
        f"id {item.item_id}" if item.item_id is not None else "",
        f"row {item.row_number}" if item.row_number is not None else "",
    ) if part)
    return f"{where}: {item.error}"


def _value_text(value: Any) -> str:
    if isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False, default=str)
        return text if len(text) <= 2000 else text[:2000] + "... (truncated; --json has it all)"
    return "-" if value is None else str(iso(value) if isinstance(value, datetime) else value)


def _print_record(record: OperationRecord) -> None:
    print(record.id)
    lines: list[tuple[str, str]] = [
        ("status", record.status + (f" ({record.error})" if record.error else "")),
        ("progress", f"{record.completed}/{record.total} ({record.percent:g}%), "
                     f"{record.succeeded_count} succeeded, {record.failed_count} failed"),
    ]
    shown = {"id", "status", "error", "total", "succeeded_count", "failed_count"}
    for field in fields(record):
        value = getattr(record, field.name)
        if field.name in shown or (value is None and field.name not in ("completed_at", "execution_time_ms")):
            continue
        lines.append((field.name, _value_text(value)))
    width = max(len(name) for name, _ in lines)
    for name, text in lines:
        print(f"  {name.ljust(width)}  {text}")


# -- watch ----------------------------------------------------------------------------------------------------------


def _watch_json(record: OperationRecord) -> dict[str, Any]:
    summary = operation_summary(record)
    return {k: summary[k] for k in ("id", "status", "progress", "succeeded", "failed", "completed_at",
                                     "execution_time_ms", "error")}


def run_watch(args: argparse.Namespace, settings: Settings) -> int:
    interval = max(0.02, args.interval)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    with _open(settings) as tracker:
        record = _get(tracker, args.id, summary=True)  # watching shows counts, never inputs or outputs
        if args.json:
            record = _watch_lines(tracker, record, interval, deadline)
        else:
            record = _watch_bar(tracker, record, interval, deadline)
    if not record.is_terminal:
        print(f"tracker: gave up watching after {args.timeout:g}s; {record.id} is still running", file=sys.stderr)
        return 3
    if not args.json:
        took = "" if record.execution_time_ms is None else f" in {record.execution_time_ms / 1000:.2f}s"
        error = f": {record.error}" if record.error and record.status != COMPLETED else ""
        print(f"{record.status}{error}: {record.succeeded_count} succeeded, {record.failed_count} failed{took}")
    return 0 if record.status == COMPLETED else 1


def _reread(tracker: Tracker, record: OperationRecord) -> OperationRecord:
    fresh = tracker.summary(record.id)
    if fresh is None:
        raise OperationNotFound(f"operation {record.id!r} disappeared while watching (purged)")
    return fresh


def _watch_lines(tracker: Tracker, record: OperationRecord, interval: float, deadline: float | None) -> OperationRecord:
    last: dict[str, Any] | None = None
    while True:
        line = _watch_json(record)
        if line != last:
            print_json(line)
            last = line
        if record.is_terminal or (deadline is not None and time.monotonic() >= deadline):
            return record
        time.sleep(interval)
        record = _reread(tracker, record)


def _watch_bar(tracker: Tracker, record: OperationRecord, interval: float, deadline: float | None) -> OperationRecord:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    console = Console()
    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
        TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(),
    )
    console.print(f"{record.id} ({record.kind} {record.operation_type})")
    with Progress(*columns, console=console, refresh_per_second=max(1, min(10, int(1 / interval)))) as progress:
        task = progress.add_task(record.operation_type, total=record.total or None, failed=record.failed_count)
        while True:
            total = record.total or (record.completed if record.is_terminal else None)  # unknown: a pulsing bar
            progress.update(task, completed=record.completed, total=total, failed=record.failed_count)
            if record.is_terminal or (deadline is not None and time.monotonic() >= deadline):
                return record
            time.sleep(interval)
            record = _reread(tracker, record)
