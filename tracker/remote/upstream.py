"""What tracker needs from the upstream grid API, as an interface: the HTTP client (http.py) and the in-memory one
(memory.py) both implement it, so batch and poll logic can be tested without a network or a subprocess.

An answer is the upstream's JSON object as the grid API sends it: `{"status": "running", "request_id": ...}`,
`{"status": "completed", "outputs": {...}}` or `{"status": "failed", "error": ...}` (CONTRACTS.md section 2). The
read endpoints answer the workspace, a page of grids and one grid's details (their shapes: grids.py and
tracker/testing/fake_upstream.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

RUN_STATUSES = ("running", "completed", "failed")
Answer = dict[str, Any]


@dataclass(frozen=True)
class RunRequest:
    """One run to submit: what POST /grids/{grid_id}/run carries."""

    grid_id: str
    inputs: dict[str, str]
    mode: str = "sync"
    output_columns: list[str] | None = None
    source_id: str | None = None

    def params(self) -> dict[str, Any]:
        """What a run's row keeps in `inputs` (enough to compare a replayed idempotency_key)."""
        return {"inputs": self.inputs, "output_columns": self.output_columns, "source_id": self.source_id}


class Slot(Protocol):
    """A granted turn of the shared rate limit: one request may be sent with it."""


class Upstream(Protocol):
    async def reserve(self) -> Slot:
        """Wait for a rate-limit slot (shared by every process on the database) and return it. Raises
        DatabaseUnavailable when the slot cannot be claimed; nothing is sent."""
        ...

    def on_time(self, slot: Slot) -> bool:
        """Whether a request sent now is still within `slot` (a caller that did work after reserve() asks this,
        and reserves again when it is late, so late requests never crowd one second)."""
        ...

    async def queue_s(self) -> float:
        """Seconds a request reserved now would wait for its slot (0 when one is free)."""
        ...

    async def submit_run(self, request: RunRequest, slot: Slot | None = None) -> Answer:
        """POST the run, the first attempt within `slot` (else a slot is reserved first). Returns the answer:
        completed with outputs, failed, or running with a usable request_id. Raises UpstreamOutcomeUnknown when the
        run may exist upstream without our knowing its request_id (never resubmit then), UpstreamError when the
        upstream refused it (nothing runs), InvalidInput when the configuration is unusable (nothing was sent)."""
        ...

    async def run_status(self, request_id: str) -> Answer | None:
        """GET the run's status: an answer, or None when the upstream does not know the id. Raises UpstreamError
        when it cannot be asked (after bounded retries)."""
        ...

    async def workspace(self) -> Answer:
        """GET /workspace: the workspace the API key belongs to, as the upstream sends it. Takes a rate-limit slot;
        retried as run_status is. Raises UpstreamError when it cannot be read."""
        ...

    async def list_grids(self, search: str | None, page: int, limit: int) -> Answer:
        """GET /grids?search=&page=&limit=: one page of the workspace's grids (search None: no filter; the text is
        sent as given, URL-encoded). Arguments are checked by the caller. Raises UpstreamError as workspace()."""
        ...

    async def grid(self, grid_id: str) -> Answer | None:
        """GET /grids/{grid_id}: the grid's details (its columns, which of them are inputs), or None when the
        upstream has no such grid. Raises UpstreamError as workspace()."""
        ...

    async def aclose(self) -> None:
        """Release connections; the object is not used afterwards."""
        ...
