"""The service's background tasks: every task it starts is held here, so shutdown cancels all of them and none
is garbage-collected mid-run; a task nobody awaits that fails is logged, not lost."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self.closing = False

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def every(self, seconds: float, step: Callable[[], Awaitable[bool]], what: str) -> asyncio.Task[Any]:
        """Run `step` every `seconds` until it returns False (a lease or claim that is no longer ours); a failed
        step is logged and tried again at the next beat."""

        async def beat() -> None:
            while True:
                await asyncio.sleep(seconds)
                try:
                    if not await step():
                        return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the next beat tries again
                    log.warning("%s failed: %s", what, exc)

        return self.spawn(beat())

    async def aclose(self) -> None:
        """Cancel every task and wait for them, including any that a finishing call spawned meanwhile."""
        self.closing = True
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.difference_update(tasks)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Already reported to whoever awaited it; this only keeps asyncio from warning when nobody did.
            log.debug("background task ended with %s", type(task.exception()).__name__)

    def __iter__(self):  # noqa: ANN204 - for tests that inspect what is running
        return iter(list(self._tasks))
