"""How a tool takes part in tasks: its task support, its synchronous wait, whether it is safe to run again."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import InvalidInput

SUPPORTS = ("forbidden", "optional", "required")


@dataclass(frozen=True)
class TaskPolicy:
    """`support`: forbidden (never a task), optional (a task for a client that can take one, else a plain call),
    required (a task or, for a client that cannot take one, the spec's error). `sync_wait_s`: run the call inline
    for up to this long first; a result (or a request for input) within it is answered as a plain call, and only
    a call still running then becomes a task. `rerun`: the tool is safe to run again from the start; a task whose
    server died is then taken over and run again once by a live server, instead of failed."""

    support: str = "optional"
    sync_wait_s: float = 0.0
    rerun: bool = False

    def __post_init__(self) -> None:
        if self.support not in SUPPORTS:
            raise InvalidInput(f"support must be one of {', '.join(SUPPORTS)}")
        if not 0 <= self.sync_wait_s <= 3600:
            raise InvalidInput("sync_wait_s must be from 0 to 3600 seconds")

    @property
    def takes_tasks(self) -> bool:
        return self.support != "forbidden"
