"""UTC clock, truncated to milliseconds so stored and in-memory values agree on every backend."""

from datetime import datetime, timezone


def utcnow() -> datetime:
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def iso(value: datetime | None) -> str | None:
    """ISO-8601 UTC with milliseconds and a Z, the form sqlite3 shows too."""
    if value is None:
        return None
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def elapsed_ms(start: datetime, end: datetime) -> int:
    return int(round((end - start).total_seconds() * 1000))
