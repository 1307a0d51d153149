"""The library API for an MCP server author: open a Tracker, start batches, record, read, list, cancel."""

from __future__ import annotations

import atexit
import logging
import secrets
import threading
from collections.abc import Mapping
from typing import Any

from . import checks, limits, liveness
from .db import database_errors, open_engine
from .errors import InvalidInput, OperationClosed, OperationNotFound
from .ids import new_operation_id
from .models import KINDS, STATUSES
from .records import ItemRecord, OperationDetail, OperationRecord, RunRecord, Viewer, Writer
from .recording import BatchHandle, Flusher, check_json, error_text
from .settings import Settings
from .store import Store

log = logging.getLogger(__name__)


def _total(value: Any) -> int:
    return checks.require_count(value, "total", 0, limits.INT32)


def _unstorable(operation_id: Any, name: str = "operation_id") -> bool:
    """True for an id no operation can have (PostgreSQL cannot even compare text holding NUL), which is answered
    as not found; InvalidInput for a value that is not an id at all."""
    if not isinstance(operation_id, str):
        raise InvalidInput(f"{name} must be a string, not {type(operation_id).__name__}")
    return "\x00" in operation_id


def _new_writer() -> Writer:
    return Writer(secrets.token_hex(16), liveness.current())


class Tracker:
    """Durable operation status over one database. Safe to share between threads; open one per process."""

    def __init__(self, settings: Settings, create: bool = True) -> None:
        """create=False: a SQLite file that does not exist is DatabaseUnavailable, not a new database (for readers
        such as the operator commands)."""
        self.settings = settings
        self.engine = open_engine(settings, create=create)
        self.store = Store(self.engine)
        self._flusher = Flusher(settings.flush_interval_s, heartbeat_every_s=max(1.0, settings.heartbeat_lease_s / 4))
        self._closed = threading.Event()
        atexit.register(self.close)

    @classmethod
    def open(cls, db: str | None = None, env: Mapping[str, str] | None = None, **overrides: Any) -> Tracker:
        """Open (creating and migrating if needed) the database at `db`, else TRACKER_DB, else the default path."""
        return cls(Settings.from_env(env, db=db, **overrides))

    # -- batches ------------------------------------------------------------------------------------------------

    def start_batch(
        self,
        operation_type: str,
        total: int = 0,
        inputs: Any = None,
        resumable: bool = False,
        subject: str | None = None,
    ) -> BatchHandle:
        """Record a new running batch and return the handle to record its items into. `subject`: the
        authenticated caller it is started for (tracker.server.caller.current_subject() in a tool); then only
        that caller (and callers without a subject) see it. Without one, every caller does."""
        operation_type = checks.operation_type(operation_type)
        total = _total(total)
        inputs = check_json(inputs, "inputs")
        subject = checks.optional_subject(subject)
        writer = _new_writer()
        record = self._write(
            lambda: self.store.create_operation(
                {
                    "id": new_operation_id("batch", operation_type),
                    "kind": "batch",
                    "operation_type": operation_type,
                    "total": total,
                    "inputs": inputs,
                    "owner_host": writer.process.host,
                    "owner_pid": writer.process.pid,
                    "owner_process": writer.process.identity,
                    "resumable": bool(resumable),
                    "subject": subject,
                },
                writer,
            )
        )
        return self._handle(record, writer)

    def attach(self, operation_id: str) -> BatchHandle:
        """A handle on an existing running batch, for another process or thread that records into it too.

        The rule for several writers: an operation is an orphan only when every process recording into it is
        gone. attach() registers this process as a writer; while it runs (judged by its pid on its own host) or
        keeps writing or heartbeating (seen from another host: the background flusher heartbeats quiet handles),
        the operation is not failed by orphan recovery, even after the process that started it exits."""
        if _unstorable(operation_id):
            raise OperationNotFound(f"operation {operation_id!r} not found")
        writer = _new_writer()
        record = self._write(lambda: self.store.add_writer(operation_id, writer))
        handle = self._handle(record, writer)
        if record.is_terminal:
            handle._close(OperationClosed(f"operation {operation_id!r} is already {record.status}; the write was refused"))
        return handle

    def handle_for(self, record: OperationRecord, writer: Writer) -> BatchHandle:
        """A handle for `writer`, which another store call registered on the running operation `record` in its own
        transaction (a task's creation, takeover or resumption: tracker.store.tasks)."""
        return self._handle(record, writer)

    def new_writer(self) -> Writer:
        """A writer identity of this process, for such a call to register."""
        return _new_writer()

    def _handle(self, record: OperationRecord, writer: Writer) -> BatchHandle:
        handle = BatchHandle(self.store, record, writer, self.settings.flush_interval_s, on_close=self._flusher.remove)
        self._flusher.add(handle)
        return handle

    # -- reads and cancel ---------------------------------------------------------------------------------------
    # Each takes the reader's `subject` (an authenticated caller's; None: a reader who sees every operation) and
    # answers an operation it may not see (records.Viewer) exactly as one that does not exist.

    def viewer(self, subject: str | None = None) -> Viewer:
        """The reader with this subject, under this tracker's settings (TRACKER_SUBJECT_BOUND_ONLY)."""
        return Viewer.of(subject, self.settings)

    def get(self, operation_id: str, subject: str | None = None) -> OperationDetail | None:
        viewer = self.viewer(subject)
        if _unstorable(operation_id):
            return None
        return self._read(lambda: self.store.get(operation_id, viewer))

    def summary(self, operation_id: str, subject: str | None = None) -> OperationRecord | None:
        """As get(), without inputs and outputs: for polling a status without reading what may be large."""
        viewer = self.viewer(subject)
        if _unstorable(operation_id):
            return None
        return self._read(lambda: self.store.get_summary(operation_id, viewer))

    def get_by_request_id(self, request_id: str, subject: str | None = None) -> RunRecord | None:
        viewer = self.viewer(subject)
        if _unstorable(request_id, "request_id"):
            return None
        return self._read(lambda: self.store.get_by_request_id(request_id, viewer))

    def items(
        self,
        operation_id: str,
        ok: bool,
        after_seq: int = 0,
        limit: int = limits.ITEMS_LIMIT_DEFAULT,
        subject: str | None = None,
    ) -> list[ItemRecord]:
        viewer = self.viewer(subject)
        if _unstorable(operation_id) or after_seq >= limits.MAX_SEQ:  # seq is a 64-bit column
            return []
        return self._read(lambda: self.store.items(operation_id, ok, after_seq, limit, viewer))

    def list(
        self,
        kind: str | None = None,
        status: str | None = None,
        operation_type: str | None = None,
        limit: int = limits.LIST_LIMIT_DEFAULT,
        before: Any = None,
        subject: str | None = None,
    ) -> list[OperationRecord]:
        """Newest first. `before` is (started_at, id) of the last row already seen."""
        viewer = self.viewer(subject)
        if kind is not None and kind not in KINDS:
            raise InvalidInput(f"kind must be one of {', '.join(KINDS)}")
        if status is not None and status not in STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(STATUSES)}")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= limits.LIST_LIMIT:
            raise InvalidInput(f"limit must be a whole number from 1 to {limits.LIST_LIMIT}")
        if operation_type is not None:
            operation_type = checks.operation_type(operation_type)
        return self._read(lambda: self.store.list_operations(kind, status, operation_type, before, limit, viewer))

    def cancel(self, operation_id: str, reason: str = "cancelled", subject: str | None = None) -> OperationRecord:
        """Cancel a running operation; its worker's next record raises OperationCancelled.
        Raises OperationClosed if it already ended, OperationNotFound if there is no such operation (or `subject`
        may not see it: then nothing changes)."""
        viewer = self.viewer(subject)
        if _unstorable(operation_id):
            raise OperationNotFound(f"operation {operation_id!r} not found")
        reason = error_text(str(reason))
        return self._write(lambda: self.store.cancel(operation_id, reason, viewer))

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Flush and detach every open handle (this process records no more: its writers stop keeping their
        operations alive) and release the database. Called at exit too."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._flusher.stop()
        for handle in self._flusher.handles():
            try:
                handle.detach()
            except Exception as exc:  # noqa: BLE001 - best effort at shutdown
                log.warning("final flush of %s failed: %s", handle.id, exc)
        self.engine.dispose()
        atexit.unregister(self.close)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self, fn):  # noqa: ANN001, ANN202
        with database_errors(self.store.location):
            return fn()

    _write = _read
