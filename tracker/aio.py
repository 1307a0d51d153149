"""The one bridge from the event loop to blocking code (database calls, file reads): off_loop(fn, *args) runs
fn(*args) in a worker thread and awaits its result, so the loop keeps serving other calls meanwhile.

Cancelling the awaiting task ends the wait at once (as asyncio.to_thread does); the thread runs its call to the end
and its result is dropped: a database call cannot be interrupted halfway, and each one is a whole transaction.
wait_on_cancel=True instead holds the cancellation until the call has returned, for a caller that must see what
the call did (opening the database: a half-known open would be opened twice)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread

T = TypeVar("T")


async def off_loop(fn: Callable[..., T], *args: Any, wait_on_cancel: bool = False) -> T:
    """fn(*args) in a worker thread (anyio's pool, shared by the whole process; contextvars are copied)."""
    return await anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=not wait_on_cancel)
