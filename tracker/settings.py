"""One settings object, read from the environment (and CLI flags) once, in main(); passed down as arguments."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import InvalidInput
from .limits import HTTP_CONCURRENCY_DEFAULT

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, name: str = "duration") -> float:
    """'90s', '30m', '1h', '7d' or a number of seconds -> seconds."""
    match = _DURATION.match(str(text).lower())
    if not match:
        raise InvalidInput(f"{name} must look like 90s, 30m, 1h or 7d (got {str(text)[:40]!r})")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _positive_number(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise InvalidInput(f"{name} must be a positive number (requests per second), got {str(text)[:40]!r}")
    return value


def _positive_int(text: str, name: str) -> int:
    value = text.strip()
    if not value.isdigit() or int(value) < 1 or len(value) > 6:
        raise InvalidInput(f"{name} must be a whole number from 1 to 999999, got {text[:40]!r}")
    return int(value)


def host_names(text: str) -> tuple[str, ...]:
    """'a.example, b.example' -> ('a.example', 'b.example')."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _flag(text: str, name: str) -> bool:
    word = str(text).strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off", ""):
        return False
    raise InvalidInput(f"{name} must be 1 or 0 (true or false), got {str(text)[:40]!r}")


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            word = {"d": "day", "h": "hour", "m": "minute"}[unit]
            return f"{count} {word}{'s' if count != 1 else ''}"
    return f"{seconds:g} seconds"


def default_db_path(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME") or Path.home()) / ".local" / "share")
    return Path(base) / "tracker" / "tracker.db"


@dataclass(frozen=True)
class Settings:
    db: str  # a filesystem path or a SQLAlchemy URL
    db_is_default: bool = False
    retention_s: float = 3600.0
    flush_interval_s: float = 0.25
    reap_interval_s: float = 300.0  # 0 turns the in-server reaper off
    # A recorder on another host counts as alive while its heartbeat is younger than this; a dead owner on this host
    # is judged gone once its heartbeat is quiet for min(this, reaper.OWNER_GONE_GRACE_S).
    heartbeat_lease_s: float = 60.0
    upstream_base: str = "https://api.bitscale.ai/api/v1"
    upstream_key: str = ""
    upstream_rate_per_s: float = 5.0
    poll_interval_s: float = 2.0
    # A sync run_grid answers within this long: with the outputs, or "running" and the ids to poll. Under the 60 s
    # a default MCP client waits for a request, whatever the upstream's own sync window (120 s).
    sync_wait_s: float = 50.0
    # Longest wait for a database server (PostgreSQL): connecting, each statement or commit, a lock. After it,
    # DatabaseUnavailable, whether the server is slow, silent or partitioned away.
    db_timeout_s: float = 10.0
    # tracker serve --http: the tokens file ("" = none: served unauthenticated, on loopback only), Host names to
    # accept besides loopback ones (a reverse proxy's public name), requests one subject may have in flight, and how
    # long in-flight calls may take to finish after SIGTERM.
    http_tokens: str = ""
    http_allowed_hosts: tuple[str, ...] = ()
    http_concurrency: int = HTTP_CONCURRENCY_DEFAULT
    http_shutdown_grace_s: float = 20.0
    # An authenticated caller sees only the operations carrying its own subject, not also those recorded without
    # one (callers without a subject, over stdio, still see every operation).
    subject_bound_only: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        env = os.environ if env is None else env
        db = env.get("TRACKER_DB", "").strip()
        values: dict[str, object] = {"db": db or str(default_db_path(env)), "db_is_default": not db}
        if env.get("TRACKER_RETENTION"):
            values["retention_s"] = parse_duration(env["TRACKER_RETENTION"], "TRACKER_RETENTION")
        if env.get("TRACKER_REAP_INTERVAL"):
            values["reap_interval_s"] = parse_duration(env["TRACKER_REAP_INTERVAL"], "TRACKER_REAP_INTERVAL")
        if env.get("TRACKER_FLUSH_INTERVAL"):
            values["flush_interval_s"] = parse_duration(env["TRACKER_FLUSH_INTERVAL"], "TRACKER_FLUSH_INTERVAL")
        if env.get("TRACKER_HEARTBEAT_LEASE"):
            values["heartbeat_lease_s"] = parse_duration(env["TRACKER_HEARTBEAT_LEASE"], "TRACKER_HEARTBEAT_LEASE")
            if not values["heartbeat_lease_s"] > 0:
                raise InvalidInput("TRACKER_HEARTBEAT_LEASE must be more than 0 (e.g. 60s)")
        if env.get("BITSCALE_API_BASE"):
            values["upstream_base"] = env["BITSCALE_API_BASE"].strip()
        if env.get("BITSCALE_API_KEY"):
            values["upstream_key"] = env["BITSCALE_API_KEY"].strip()
        if env.get("BITSCALE_RATE_LIMIT"):
            values["upstream_rate_per_s"] = _positive_number(env["BITSCALE_RATE_LIMIT"], "BITSCALE_RATE_LIMIT")
        if env.get("TRACKER_POLL_INTERVAL"):
            values["poll_interval_s"] = parse_duration(env["TRACKER_POLL_INTERVAL"], "TRACKER_POLL_INTERVAL")
        if env.get("TRACKER_SYNC_WAIT"):
            values["sync_wait_s"] = parse_duration(env["TRACKER_SYNC_WAIT"], "TRACKER_SYNC_WAIT")
        if env.get("TRACKER_DB_TIMEOUT"):
            values["db_timeout_s"] = parse_duration(env["TRACKER_DB_TIMEOUT"], "TRACKER_DB_TIMEOUT")
            if not values["db_timeout_s"] > 0:
                raise InvalidInput("TRACKER_DB_TIMEOUT must be more than 0 (e.g. 10s)")
        if env.get("TRACKER_HTTP_TOKENS", "").strip():
            values["http_tokens"] = env["TRACKER_HTTP_TOKENS"].strip()
        if env.get("TRACKER_HTTP_ALLOWED_HOSTS"):
            values["http_allowed_hosts"] = host_names(env["TRACKER_HTTP_ALLOWED_HOSTS"])
        if env.get("TRACKER_HTTP_CONCURRENCY"):
            values["http_concurrency"] = _positive_int(env["TRACKER_HTTP_CONCURRENCY"], "TRACKER_HTTP_CONCURRENCY")
        if env.get("TRACKER_HTTP_SHUTDOWN_GRACE"):
            grace = env["TRACKER_HTTP_SHUTDOWN_GRACE"]
            values["http_shutdown_grace_s"] = parse_duration(grace, "TRACKER_HTTP_SHUTDOWN_GRACE")
        if env.get("TRACKER_SUBJECT_BOUND_ONLY"):
            values["subject_bound_only"] = _flag(env["TRACKER_SUBJECT_BOUND_ONLY"], "TRACKER_SUBJECT_BOUND_ONLY")
        settings = cls(**values)  # type: ignore[arg-type]
        extra = {k: v for k, v in overrides.items() if v is not None}
        if "db" in extra:
            extra["db_is_default"] = False
        return replace(settings, **extra) if extra else settings
