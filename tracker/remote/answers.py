"""The one answer of get_run_status (and of run_grid), built from a run's row, and the text tracker stores for a
run's end. CONTRACTS.md section 2: the upstream's shape ({mode, status, grid_id, outputs when completed},
request_id and poll_url while running), plus what tracker knows."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from ..limits import UPSTREAM_ERROR_CHARS
from ..models import COMPLETED, RUNNING
from ..records import OperationRecord
from ..settings import Settings
from ..shapes import Run
from ..timeutil import iso

INTERRUPTED = (
    "unknown: interrupted during submit (the upstream may have received it and offers no lookup, "
    "so it was not resubmitted)"
)
NOT_SENT = "not submitted: the server stopped before the run was sent upstream (nothing was billed); run it again"
NO_UPSTREAM = "no upstream configured (BITSCALE_API_KEY is not set): this is the status last recorded"


def run_answer(
    record: OperationRecord,
    settings: Settings,
    stale: bool = False,
    error: str | None = None,
    queued_s: float | None = None,
) -> Run:
    """The run as get_run_status (and run_grid) shows it: shapes.Run, each optional field only once known. stale:
    the status is the last one known (the upstream could not be asked); queued_s: the answer is from the table
    because the rate limit is booked that far ahead."""
    answer: dict[str, Any] = {
        "mode": record.mode, "status": record.status, "grid_id": record.grid_id, "request_id": record.request_id
    }
    if record.status == COMPLETED:
        answer["outputs"] = record.outputs
    if record.status == RUNNING and record.request_id is not None:
        answer["poll_url"] = poll_url(settings.upstream_base, record.request_id)
    if record.status != COMPLETED and (error or record.error):
        answer["error"] = error or record.error
    answer.update(
        {
            "stale": stale,
            "operation_id": record.id,
            "batch_operation_id": record.parent_id,
            "row_number": record.row_number,
            "started_at": iso(record.started_at),
            "completed_at": iso(record.completed_at),
            "last_polled_at": iso(record.last_polled_at),
        }
    )
    if record.status == RUNNING and queued_s is not None:
        answer["message"] = (
            f"Still running as of last_polled_at (this answer is from tracker's table: the upstream's rate limit"
            f" is booked about {queued_s:.0f} s ahead). Call get_run_status again in 5 s."
        )
    elif record.status == RUNNING and record.request_id is None:
        answer["message"] = (
            "Still running: the upstream has not answered the submission yet. Call get_run_status with this"
            f" operation_id as request_id in {settings.poll_interval_s:g}-5 s."
        )
    elif record.status == RUNNING:
        answer["message"] = f"Still running; call get_run_status again in {settings.poll_interval_s:g}-5 s."
    return {name: value for name, value in answer.items() if value is not None}  # type: ignore[return-value]


def poll_url(base_url: str, request_id: str) -> str | None:
    """The upstream's own status URL, unless the base URL is not a plain http(s) one (it may carry credentials)."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        return None
    return f"{base_url.rstrip('/')}/run/status/{request_id}"


def upstream_failure(answer: dict[str, Any]) -> str:
    """The stored error of a run the upstream reported failed."""
    error = answer.get("error")
    if not error:
        return "upstream reported the run failed"
    return f"upstream reported the run failed: {str(error)[:UPSTREAM_ERROR_CHARS]}"


def scrub(value: Any, key: str | None) -> Any:
    """Text from the upstream, made safe to store and show: NUL removed (PostgreSQL refuses it) and the API key
    masked, in case the upstream echoes it back."""
    if isinstance(value, str):
        value = value.replace("\x00", "")
        return value.replace(key, "***") if key else value
    if isinstance(value, dict):
        return {scrub(k, key): scrub(v, key) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, key) for v in value]
    return value
