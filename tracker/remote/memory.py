"""The Upstream in memory: runs kept in a dict, no rate limit, no network. For tests of batch and poll logic, and
for embedding tracker where no grid API exists. Behaves as the grid API does (CONTRACTS.md section 2): a sync run
completes at once unless it is slow, an async run is running until polled `polls_to_finish` times."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from .upstream import Answer, RunRequest, Slot


@dataclass
class MemoryRun:
    request: RunRequest
    request_id: str
    polls_left: int
    outcome: Answer = field(default_factory=dict)


class MemoryUpstream:
    """Every method keeps the Upstream contract. `outcome(request)` decides how a run ends (default: completed,
    echoing its inputs as outputs); `fail_next` raises the given errors from the next calls, in order."""

    def __init__(
        self,
        polls_to_finish: int = 1,
        outcome: Callable[[RunRequest], Answer] | None = None,
        submit_delay_s: float = 0.0,
    ) -> None:
        self.polls_to_finish = polls_to_finish
        self._outcome = outcome or _echo
        self.submit_delay_s = submit_delay_s
        self.runs: dict[str, MemoryRun] = {}
        self.submitted: list[RunRequest] = []
        self.polled: list[str] = []
        self.fail_next: list[Exception] = []
        self._ids = itertools.count(1)
        self.closed = False

    async def reserve(self) -> Slot:
        return object()

    def on_time(self, slot: Slot) -> bool:
        return True

    async def queue_s(self) -> float:
        return 0.0

    async def submit_run(self, request: RunRequest, slot: Slot | None = None) -> Answer:
        self._raise_scripted()
        if self.submit_delay_s:
            await asyncio.sleep(self.submit_delay_s)
        self.submitted.append(request)
        outcome = self._outcome(request)
        if request.mode == "sync" and self.polls_to_finish == 0:
            return {"mode": "sync", **outcome}
        request_id = f"mem-{next(self._ids)}"
        self.runs[request_id] = MemoryRun(request, request_id, self.polls_to_finish, outcome)
        return {"mode": request.mode, "status": "running", "request_id": request_id}

    async def run_status(self, request_id: str) -> Answer | None:
        self._raise_scripted()
        self.polled.append(request_id)
        run = self.runs.get(request_id)
        if run is None:
            return None
        run.polls_left -= 1
        if run.polls_left > 0:
            return {"mode": run.request.mode, "status": "running", "grid_id": run.request.grid_id}
        return {"mode": run.request.mode, "grid_id": run.request.grid_id, **run.outcome}

    async def aclose(self) -> None:
        self.closed = True

    def _raise_scripted(self) -> None:
        if self.fail_next:
            raise self.fail_next.pop(0)


def _echo(request: RunRequest) -> Answer:
    return {
        "status": "completed",
        "outputs": {name: {"value": value, "name": name} for name, value in request.inputs.items()},
    }

