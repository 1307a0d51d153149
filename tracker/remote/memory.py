"""The Upstream in memory: runs kept in a dict, no rate limit, no network. For tests of batch and poll logic, and
for embedding tracker where no grid API exists. Behaves as the grid API does (CONTRACTS.md section 2): a sync run
completes at once unless it is slow, an async run is running until polled `polls_to_finish` times. The reads
answer a configurable workspace and grids in the fake upstream's shapes (tracker/testing/fake_upstream.py), built
by memory_grid()."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .upstream import Answer, RunRequest, Slot


@dataclass
class MemoryRun:
    request: RunRequest
    request_id: str
    polls_left: int
    outcome: Answer = field(default_factory=dict)


class MemoryUpstream:
    """Every method keeps the Upstream contract. `outcome(request)` decides how a run ends (default: completed,
    echoing its inputs as outputs); `fail_next` raises the given errors from the next calls, in order. `grids` are
    grid details (memory_grid()), `workspace` the workspace answer; `reads` lists every read asked for."""

    def __init__(
        self,
        polls_to_finish: int = 1,
        outcome: Callable[[RunRequest], Answer] | None = None,
        submit_delay_s: float = 0.0,
        grids: Iterable[Answer] = (),
        workspace: Answer | None = None,
    ) -> None:
        self.polls_to_finish = polls_to_finish
        self._outcome = outcome or _echo
        self.submit_delay_s = submit_delay_s
        self.runs: dict[str, MemoryRun] = {}
        self.submitted: list[RunRequest] = []
        self.polled: list[str] = []
        self.fail_next: list[Exception] = []
        self.grids: dict[str, Answer] = {grid["id"]: grid for grid in grids}
        self.workspace_answer: Answer = workspace or {"id": "ws-memory", "name": "In-memory workspace"}
        self.reads: list[tuple[Any, ...]] = []
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

    async def workspace(self) -> Answer:
        self._raise_scripted()
        self.reads.append(("workspace",))
        return dict(self.workspace_answer)

    async def list_grids(self, search: str | None, page: int, limit: int) -> Answer:
        self._raise_scripted()
        self.reads.append(("list_grids", search, page, limit))
        found = [g for g in self.grids.values() if search is None or search.lower() in str(g.get("name", "")).lower()]
        start = (page - 1) * limit
        return {"grids": [grid_summary(g) for g in found[start:start + limit]], "page": page, "limit": limit,
                "total": len(found)}

    async def grid(self, grid_id: str) -> Answer | None:
        self._raise_scripted()
        self.reads.append(("grid", grid_id))
        grid = self.grids.get(grid_id)
        return None if grid is None else dict(grid)

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


def memory_grid(
    grid_id: str, name: str, inputs: Iterable[str] = ("email",), outputs: Iterable[str] = ("enriched", "score")
) -> Answer:
    """A grid's details in the fake upstream's shape: one text column per input label, then the output columns."""
    columns: list[Answer] = [
        {"id": f"col-{label}", "name": label, "type": "text", "is_input": True, "label": label} for label in inputs
    ]
    columns += [{"id": column, "name": column.title(), "type": "enrichment", "is_input": False} for column in outputs]
    return {"id": grid_id, "name": name, "description": "", "row_count": 0, "columns": columns}


def grid_summary(grid: Answer) -> Answer:
    """A grid as list_grids shows it: its details without the columns, with their count."""
    summary = {k: v for k, v in grid.items() if k not in ("columns", "settings", "sources")}
    return {**summary, "column_count": len(grid.get("columns") or [])}
