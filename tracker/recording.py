"""Recording a batch's items: buffered in memory, flushed in groups, visible to other processes within a bound.

A flush is one transaction that appends the buffered items and bumps the counters. It happens when the buffer
is full, when its oldest item is half the flush interval old (checked on every record), and from a background
thread for handles that went quiet; so other processes see progress within flush_interval_s (250 ms default)."""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from . import limits
from .db import database_errors
from .errors import (
    DatabaseUnavailable,
    InvalidInput,
    OperationCancelled,
    OperationClosed,
    OperationNotFound,
    TrackerError,
)
from .records import NewItem, OperationRecord, Writer
from .store import Store

log = logging.getLogger(__name__)

MAX_BUFFER = 5000
_ESCAPED_NUL = re.compile(r"(?:^|[^\\])(?:\\\\)*\\u0000")  # \u0000 in JSON text, not an escaped backslash + "u0000"


def _item_id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidInput(f"item id must be a string or an integer, not {type(value).__name__}")
    text = str(value)
    if not text.strip():
        raise InvalidInput("item id must not be empty")
    if len(text) > limits.ITEM_ID_CHARS:
        raise InvalidInput(f"item id is longer than {limits.ITEM_ID_CHARS} characters")
    if "\x00" in text:
        # PostgreSQL cannot store it: refused here, on every backend, rather than poisoning the buffered group.
        raise InvalidInput("item id must not contain a NUL character")
    return text


def error_text(error: str) -> str:
    """An error message as stored: clipped, and NUL (which PostgreSQL text cannot hold) shown as U+FFFD."""
    return error[:limits.ERROR_CHARS].replace("\x00", "\ufffd")


def check_json(value: Any, name: str) -> Any:
    """inputs/outputs: plain JSON that every backend stores alike (PostgreSQL's JSONB refuses NaN and NUL)."""
    if value is None:
        return None
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidInput(f"{name} must be JSON: objects, arrays, strings, finite numbers, booleans, null ({exc})") from None
    if _ESCAPED_NUL.search(text):
        raise InvalidInput(f"{name} must not contain a NUL character")
    return value


class BatchHandle:
    """A running batch operation that this process records into. Thread-safe. Use as a context manager:
    a body that raises marks the operation failed with the exception's message; a cancel ends the body quietly."""

    def __init__(
        self, store: Store, record: OperationRecord, writer: Writer, flush_interval_s: float, on_close: Callable
    ) -> None:
        self._store = store
        self.id = record.id
        self.operation_type = record.operation_type
        self.writer_id = writer.writer_id
        self._flush_after_s = flush_interval_s / 2
        self._on_close = on_close
        self._lock = threading.RLock()
        self._buffer: list[NewItem] = []
        # A group whose write failed: (its number, its items). It is retried as it was, under the same number, so a
        # retry after a lost COMMIT reply is recognised by the database and applied once or not at all.
        self._pending: tuple[int, list[NewItem]] | None = None
        self._groups = 0  # groups numbered so far
        # Monotonic time at which the buffer is due for a flush: half the flush interval after its oldest item,
        # -inf while a failed group waits for its retry, +inf while nothing waits. One comparison per record.
        self._flush_at = math.inf
        self._last_write = time.monotonic()
        self._closed: TrackerError | None = None  # set once the operation is known to be terminal
        self.durable_count = 0  # items this handle has committed to the database

    # -- recording ----------------------------------------------------------------------------------------------

    def record_success(self, item_id: str | int) -> None:
        # The common id (a plain str of sane length) is checked here inline: _item_id's checks, without its call.
        if (
            type(item_id) is not str
            or not 0 < len(item_id) <= limits.ITEM_ID_CHARS
            or "\x00" in item_id
            or item_id.isspace()
        ):
            item_id = _item_id(item_id)
        item = (self.id, 1, item_id, None, None)
        # _add's common case inline (its call was a sixth of a success's cost): open, nothing due, room after it.
        lock = self._lock
        lock.acquire()
        try:
            buffer = self._buffer
            if self._closed is None and buffer and len(buffer) < MAX_BUFFER - 1 and time.monotonic() < self._flush_at:
                buffer.append(item)
                return
        finally:
            lock.release()
        self._add(item)

    def record_failure(self, error: str, item_id: str | int | None = None, row_number: int | None = None) -> None:
        if not isinstance(error, str) or not error.strip():
            raise InvalidInput("error must be a non-empty string saying what went wrong")
        if item_id is None and row_number is None:
            raise InvalidInput("a failure needs an item id, a row_number, or both")
        if row_number is not None and (
            isinstance(row_number, bool) or not isinstance(row_number, int) or not 1 <= row_number <= limits.INT32
        ):
            raise InvalidInput(f"row_number must be a whole number from 1 (1-based) to {limits.INT32}")
        self._add((self.id, 0, None if item_id is None else _item_id(item_id), row_number, error_text(error)))

    def _add(self, item: NewItem) -> None:
        # acquire/release rather than `with`: a quarter of this method's cost, which every item pays.
        lock = self._lock
        lock.acquire()
        try:
            if self._closed is not None:
                raise self._closed
            # A retry or a time-due flush goes first, without this item: if it fails, this call's item was never
            # part of a group (the caller may retry it), and the buffered ones stay for the next flush.
            if time.monotonic() >= self._flush_at:
                self.flush()
            buffer = self._buffer
            if not buffer:
                self._flush_at = time.monotonic() + self._flush_after_s
            buffer.append(item)
            if len(buffer) >= MAX_BUFFER:
                try:
                    self.flush()
                except DatabaseUnavailable as exc:
                    # This item is in the group now, which may even have committed (a lost reply): it is accepted,
                    # and the group is retried as it is by the next record (which raises if it still fails).
                    log.warning("flush of %s failed, will retry: %s", self.id, exc)
        finally:
            lock.release()

    def flush(self) -> int:
        """Write buffered items now; returns how many. Raises OperationCancelled/OperationClosed when the
        operation became terminal (the buffered items are refused, never applied), DatabaseUnavailable when the
        write failed (the items stay, and the next flush retries them as the same group)."""
        with self._lock:
            if self._closed is not None:
                raise self._closed
            written = 0
            while self._pending is not None or self._buffer:
                if self._pending is None:
                    self._groups += 1
                    group, items = self._groups, self._buffer
                    self._buffer = []
                else:
                    group, items = self._pending
                try:
                    with database_errors(self._store.location, f"recording items of {self.id}"):
                        self._store.append_items(self.id, items, self.writer_id, group)
                except (OperationClosed, OperationNotFound) as exc:  # ended, or purged: it takes nothing more
                    self._pending, self._buffer = None, []
                    self._flush_at = math.inf
                    self._close(exc)
                    raise
                except DatabaseUnavailable:
                    self._pending = (group, items)
                    self._flush_at = -math.inf
                    raise
                self._pending = None
                self._last_write = time.monotonic()
                self.durable_count += len(items)
                written += len(items)
            self._flush_at = math.inf
            return written

    def _due(self, now: float) -> bool:
        return now >= self._flush_at

    # -- state changes ------------------------------------------------------------------------------------------

    def set_total(self, total: int) -> OperationRecord:
        if isinstance(total, bool) or not isinstance(total, int) or not 0 <= total <= limits.INT32:
            raise InvalidInput(f"total must be a whole number from 0 to {limits.INT32}")
        with self._lock:
            return self._guarded(lambda: self._store.update_running(self.id, {"total": total}))

    def heartbeat(self) -> None:
        """Tell other processes this writer is alive (the background flusher calls it for quiet handles)."""
        with self._lock:
            if self._closed is None:
                self._guarded(lambda: self._store.heartbeat(self.id, self.writer_id))
                self._last_write = time.monotonic()

    def finish(self, outputs: Any = None) -> OperationRecord:
        """Flush everything, then end the operation: `failed` when every processed item failed (at least one
        failure and no success), otherwise `completed`."""
        return self._end(status=None, error=None, outputs=check_json(outputs, "outputs"))

    def fail(self, error: str, outputs: Any = None) -> OperationRecord:
        """Flush everything, then mark the operation failed with this error."""
        if not isinstance(error, str) or not error.strip():
            raise InvalidInput("error must be a non-empty string")
        return self._end(status="failed", error=error_text(error), outputs=check_json(outputs, "outputs"))

    def cancel(self, reason: str = "cancelled") -> OperationRecord:
        return self._end(status="cancelled", error=error_text(str(reason)), outputs=None)

    def _end(self, status: str | None, error: str | None, outputs: Any) -> OperationRecord:
        with self._lock:
            self.flush()
            record = self._guarded(
                lambda: self._store.finish(
                    self.id, status=status, error=error, outputs=outputs, set_outputs=outputs is not None,
                    by=self.writer_id,
                )
            )
            self._close(OperationClosed(f"operation {self.id!r} is already {record.status}; the write was refused"))
            return record

    def _guarded(self, write: Callable[[], OperationRecord]) -> OperationRecord:
        if self._closed is not None:
            raise self._closed
        try:
            with database_errors(self._store.location, f"updating {self.id}"):
                return write()
        except (OperationClosed, OperationNotFound) as exc:
            self._pending, self._buffer = None, []
            self._flush_at = math.inf
            self._close(exc)
            raise

    def detach(self) -> None:
        """Flush, then stop recording into the operation without ending it (another writer will): this process
        no longer keeps it alive, so once every other writer is gone it is an orphan. Later records raise."""
        with self._lock:
            if self._closed is not None:
                return
            self.flush()
            with database_errors(self._store.location, f"detaching from {self.id}"):
                self._store.remove_writer(self.id, self.writer_id)
            self._close(OperationClosed(f"this handle detached from operation {self.id!r}; the write was refused"))

    def _close(self, reason: TrackerError) -> None:
        self._closed = reason
        self._on_close(self)

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def __enter__(self) -> BatchHandle:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:  # noqa: ANN001
        if exc is None:
            if not self.closed:
                self.finish()
            return False
        if isinstance(exc, OperationCancelled):
            return True  # cancelled elsewhere: the body stops quietly
        if isinstance(exc, OperationClosed):
            return False
        if not self.closed:
            try:
                self.fail(str(exc) or type(exc).__name__)
            except TrackerError:
                log.exception("could not mark %s failed", self.id)
        return False


class Flusher:
    """One daemon thread per Tracker: flushes quiet handles in time and keeps their heartbeats fresh."""

    def __init__(self, flush_interval_s: float, heartbeat_every_s: float) -> None:
        self._period = max(0.005, flush_interval_s / 4)
        self._heartbeat_every_s = heartbeat_every_s
        self._handles: weakref.WeakSet[BatchHandle] = weakref.WeakSet()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def add(self, handle: BatchHandle) -> None:
        with self._lock:
            self._handles.add(handle)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tracker-flusher", daemon=True)
                self._thread.start()

    def remove(self, handle: BatchHandle) -> None:
        with self._lock:
            self._handles.discard(handle)

    def handles(self) -> list[BatchHandle]:
        with self._lock:
            return list(self._handles)

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            now = time.monotonic()
            for handle in self.handles():
                try:
                    if handle._due(now):
                        handle.flush()
                    elif now - handle._last_write >= self._heartbeat_every_s:
                        handle.heartbeat()
                except (OperationClosed, OperationNotFound):
                    pass  # the handle remembers; its owner's next record raises
                except TrackerError as exc:
                    log.warning("background flush of %s failed, will retry: %s", handle.id, exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
