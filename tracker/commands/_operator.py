"""Shared by the operator's commands (reap, ls, show, watch): argument types, opening an existing database, and
the stable JSON shape of an operation. Not a command itself (not in COMMAND_MODULES)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from datetime import datetime
from typing import Any

from ..errors import InvalidInput
from ..records import ItemRecord, OperationRecord
from ..settings import parse_duration
from ..timeutil import iso


def add_db_flag(parser: argparse.ArgumentParser) -> None:
    """`tracker reap --db X` as well as `tracker --db X reap`; SUPPRESS keeps the global value when absent."""
    parser.add_argument("--db", default=argparse.SUPPRESS, help="database path or SQLAlchemy URL (as the global --db)")


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable JSON on stdout (stable keys)")


MAX_DURATION_S = 100 * 365 * 86400.0  # beyond this, date arithmetic overflows


def duration(text: str) -> float:
    """argparse type for 90s / 30m / 1h / 7d; a bad value is a usage error (exit 2)."""
    try:
        seconds = parse_duration(text)
    except InvalidInput:
        raise argparse.ArgumentTypeError(f"must look like 90s, 30m, 1h or 7d (got {text[:40]!r})") from None
    if seconds > MAX_DURATION_S:
        raise argparse.ArgumentTypeError(f"must be at most 36500d (got {text[:40]!r})")
    return seconds


def int_range(low: int, high: int):  # noqa: ANN201 - an argparse type factory
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number from {low} to {high}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be a whole number from {low} to {high}")
        return value

    return parse


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, ensure_ascii=False, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()


def _plain(value: Any) -> Any:
    return iso(value) if isinstance(value, datetime) else value


def operation_summary(record: OperationRecord) -> dict[str, Any]:
    """The row `tracker ls --json` prints for each operation: these keys, always present (null when unknown)."""
    return {
        "id": record.id,
        "kind": record.kind,
        "operation_type": record.operation_type,
        "status": record.status,
        "progress": {"completed": record.completed, "total": record.total, "percent": record.percent},
        "succeeded": record.succeeded_count,
        "failed": record.failed_count,
        "started_at": iso(record.started_at),
        "completed_at": iso(record.completed_at),
        "execution_time_ms": record.execution_time_ms,
        "error": record.error,
    }


def operation_detail(record: OperationRecord) -> dict[str, Any]:
    """Every stored field of the operation (those of operation_summary first), for `tracker show --json`."""
    detail = operation_summary(record)
    for field in fields(record):
        detail.setdefault(field.name, _plain(getattr(record, field.name)))
    return detail


def item_json(item: ItemRecord) -> dict[str, Any]:
    if item.ok:
        return {"seq": item.seq, "id": item.item_id}
    return {"seq": item.seq, "id": item.item_id, "row_number": item.row_number, "error": item.error}
