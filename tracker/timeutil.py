"""Time in one form: UTC, truncated to milliseconds so stored and in-memory values agree on every backend, and
written as ISO-8601 with milliseconds and a Z (2026-05-09T07:35:25.123Z), the form sqlite3 shows too. Every
timestamp tracker prints, stores as text (SQLite columns) or puts in a cursor goes through iso(), and every one it
reads back through parse_iso()."""

import re
from datetime import datetime, timezone

ISO_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # what parse_iso reads (iso writes 3 of %f's 6 digits)
# Exactly the form iso() writes, which datetime.fromisoformat reads 50 times faster than strptime (a status read
# parses two): any other text goes through strptime, so the texts accepted and refused stay the same.
_ISO_TEXT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", re.ASCII)


def to_ms(value: datetime) -> datetime:
    """value in UTC, cut to whole milliseconds."""
    value = value.astimezone(timezone.utc)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def utcnow() -> datetime:
    return to_ms(datetime.now(timezone.utc))


def iso(value: datetime | None) -> str | None:
    """ISO-8601 UTC with milliseconds and a Z; None stays None."""
    if value is None:
        return None
    value = value.astimezone(timezone.utc)
    if value.year >= 1000:  # isoformat is 3 times faster; strftime writes a year below 1000 unpadded here
        return value.isoformat(timespec="milliseconds")[:-6] + "Z"  # less "+00:00"
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> datetime:
    """The aware UTC datetime of a text iso() wrote; ValueError for any other text."""
    if not isinstance(text, str):
        raise ValueError(f"not an ISO timestamp: {type(text).__name__}")
    if _ISO_TEXT.fullmatch(text):
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            pass  # no such date: strptime says so in its own words
    return datetime.strptime(text, ISO_FORMAT).replace(tzinfo=timezone.utc)


def elapsed_ms(start: datetime, end: datetime) -> int:
    return int(round((end - start).total_seconds() * 1000))
