"""Remote grid runs: submit, remember, poll, batch, resume. The service behind run_grid, get_run_status and
run_grid_batch; the MCP layer (server/run_tools.py) only validates nothing and shapes nothing beyond this.

Durability rules
- A single run's row is written before anything is sent; a repeated idempotency_key returns that row.
- A batch's run for input row n is written (with row_number n, unique per batch) after its rate-limit slot is
  granted and right before the POST leaves. Once that row exists the row is never submitted again.
- A run whose row exists but has no request_id and no outcome was interrupted between writing the row and
  storing the upstream's answer (a crash, a kill, a lost connection). The upstream may have received it and
  offers no way to find it (no lookup by input or client token), so it is marked failed
  "unknown: interrupted during submit" instead of being resubmitted: a duplicate would run and bill twice.
- Finishing a run and recording it in its batch is one transaction, so batch counts are exact whichever process
  polls the run to its end.
- A batch is `resumable`: a server starting on the database (or one already running there) adopts a running
  batch whose owner process is gone, fails its interrupted runs as above, and submits the rows that have no run.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from . import liveness
from .db import short_reason
from .errors import (
    DatabaseUnavailable,
    DuplicateRun,
    InvalidInput,
    OperationClosed,
    OperationNotFound,
    TrackerError,
    UpstreamError,
    UpstreamOutcomeUnknown,
)
from .ids import new_operation_id
from .models import COMPLETED, FAILED, RUNNING
from .ratelimit import SharedRateLimiter, workspace_key
from .settings import Settings
from .store import Store
from .store.runs import FIRST_SEEN, RunRecord, RunStore
from .timeutil import iso
from .upstream import UpstreamClient

log = logging.getLogger(__name__)

OPERATION_TYPE = "grid_run"
MODES = ("sync", "async")
MAX_BATCH_ROWS = 10_000
MAX_CONCURRENCY = 16
DEFAULT_BATCH_CONCURRENCY = 4
MAX_ID_CHARS = 128
MAX_KEY_CHARS = 256
MAX_INPUTS = 200
MAX_VALUE_CHARS = 10_000
POLLERS = 2  # concurrent background polls: leaves most of the shared rate to submissions
# A get_run_status whose poll would wait longer than this for a rate-limit slot (many runs polled at once) does
# not wait: the poll goes on in the background and the call answers at once from the table, saying so.
FOREGROUND_QUEUE_S = 0.5
MAX_QUEUED_POLLS = 4  # such background polls per process; past it a call answers from the table without one
# A claimed poll holds its run for this long, renewed while its GET is in flight: no other poll of the run goes out
# until its answer is written, even when the GET outlasts the poll interval; a poller killed mid-GET frees it soon.
POLL_CLAIM_S = 5.0
ADOPT_EVERY_S = 5.0
WORKER_RETRY_S = 1.0  # a batch worker (or row) that hit a database error is tried again after this pause
PERSIST_ATTEMPTS = 6  # tries to record an upstream answer through database errors (about 10 s of pauses)
INTERRUPTED = (
    "unknown: interrupted during submit (the upstream may have received it and offers no lookup, "
    "so it was not resubmitted)"
)

NOT_SENT = "not submitted: the server stopped before the run was sent upstream (nothing was billed); run it again"
NO_UPSTREAM = "no upstream configured (BITSCALE_API_KEY is not set): this is the status last recorded"

T = TypeVar("T")


# -- validation (messages name the parameter, never echo long values) -------------------------------------------


def _text(value: Any, name: str, max_chars: int = MAX_ID_CHARS) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{name} must be a non-empty string")
    if len(value) > max_chars:
        raise InvalidInput(f"{name} is longer than {max_chars} characters")
    _no_nul(value, name)
    return value.strip()


def _no_nul(value: str, name: str) -> None:
    # PostgreSQL text and JSONB cannot hold NUL; refuse it everywhere so every backend answers alike.
    if "\x00" in value:
        raise InvalidInput(f"{name} contains a NUL character")


def _optional_text(value: Any, name: str, max_chars: int = MAX_ID_CHARS) -> str | None:
    return None if value is None else _text(value, name, max_chars)


def _inputs(value: Any, name: str = "inputs") -> dict[str, str]:
    if not isinstance(value, dict) or not value:
        raise InvalidInput(f"{name} must be a non-empty object mapping column labels to string values")
    if len(value) > MAX_INPUTS:
        raise InvalidInput(f"{name} has more than {MAX_INPUTS} entries")
    for label, text in value.items():
        if not isinstance(label, str) or not label.strip():
            raise InvalidInput(f"{name} has an empty label; labels are the grid's input column names")
        _no_nul(label, f"a label of {name}")
        if len(label) > MAX_ID_CHARS:
            raise InvalidInput(f"a label of {name} is longer than {MAX_ID_CHARS} characters")
        if not isinstance(text, str):
            raise InvalidInput(f"{name}[{label[:40]!r}] must be a string, not {type(text).__name__}")
        if len(text) > MAX_VALUE_CHARS:
            raise InvalidInput(f"{name}[{label[:40]!r}] is longer than {MAX_VALUE_CHARS} characters")
        _no_nul(text, f"{name}[{label[:40]!r}]")
    return dict(value)


def _mode(value: Any) -> str:
    if value not in MODES:
        raise InvalidInput("mode must be 'sync' or 'async'")
    return value


def _output_columns(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(c, str) and c.strip() for c in value):
        raise InvalidInput("output_columns must be a list of column ids (non-empty strings), or omitted")
    for column in value:
        _no_nul(column, "output_columns")
        if len(column) > MAX_ID_CHARS:
            raise InvalidInput(f"an output_columns entry is longer than {MAX_ID_CHARS} characters")
    return list(value)


def _rows(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise InvalidInput("rows must be a non-empty list of input objects, one per run")
    if len(value) > MAX_BATCH_ROWS:
        raise InvalidInput(f"rows has {len(value)} entries; a batch takes at most {MAX_BATCH_ROWS} (split it)")
    return [_inputs(row, f"rows[{n}]") for n, row in enumerate(value)]


def _concurrency(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CONCURRENCY:
        raise InvalidInput(f"concurrency must be a whole number from 1 to {MAX_CONCURRENCY}")
    return value


class _BatchStopped(Exception):
    """The batch is no longer running (cancelled): submit nothing more."""


class _RowNotWritten(Exception):
    """A batch row's run could not be written (a database error) before its POST: nothing was sent."""


class RunsService:
    """Runs and run batches over one database. Create inside the event loop that serves tools, call start() to
    poll running runs and resume orphaned batches in the background, and aclose() at shutdown."""

    def __init__(self, settings: Settings, engine: Engine, client: UpstreamClient | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.store = RunStore(engine)
        self.operations = Store(engine)
        self._client = client
        self.process = liveness.current()
        self.host, self.pid = self.process.host, self.process.pid
        self._tasks: set[asyncio.Task[Any]] = set()
        self._workers: dict[str, asyncio.Task[Any]] = {}
        self._queued: set[str] = set()  # runs whose poll waits for its rate-limit slot in the background
        self._closing = False
        self._started = False

    # -- run_grid -----------------------------------------------------------------------------------------------

    async def run_grid(
        self,
        grid_id: str,
        inputs: dict[str, str],
        mode: str = "sync",
        output_columns: list[str] | None = None,
        source_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Submit one run. sync: wait (without blocking other work) up to the upstream's window and return its
        outputs, else its request_id. async: return the request_id at once. A repeated idempotency_key returns
        the run already recorded for it and submits nothing."""
        grid_id = _text(grid_id, "grid_id")
        inputs = _inputs(inputs)
        mode = _mode(mode)
        output_columns = _output_columns(output_columns)
        source_id = _optional_text(source_id, "source_id")
        idempotency_key = _optional_text(idempotency_key, "idempotency_key", MAX_KEY_CHARS)
        params = {"inputs": inputs, "output_columns": output_columns, "source_id": source_id}
        if idempotency_key is not None:
            existing = await self._db(self.store.get_by_idempotency_key, idempotency_key)
            if existing is not None:
                return await self._replay(existing, grid_id, inputs)
        values = {
            "id": new_operation_id("run", OPERATION_TYPE),
            "kind": "run",
            "operation_type": OPERATION_TYPE,
            "inputs": params,
            "grid_id": grid_id,
            "mode": mode,
            "idempotency_key": idempotency_key,
            "owner_host": self.host,
            "owner_pid": self.pid,
            "owner_process": self.process.identity,
        }
        try:
            record = await self._db(self.store.create, values)
        except DuplicateRun:
            existing = await self._db(self.store.get_by_idempotency_key, idempotency_key or "")
            if existing is None:
                raise DatabaseUnavailable("could not record the run: a unique key clashed") from None
            return await self._replay(existing, grid_id, inputs)
        # The submission runs in the service's own task: a client that gives up on the call (or cancels it)
        # does not cut the POST short, and the outcome is still recorded.
        task = self._spawn(self._submit_single(record, params))
        return self._answer(await asyncio.shield(task))

    async def _submit_single(self, record: RunRecord, params: dict[str, Any]) -> RunRecord:
        # Until the upstream answers, the run is this process's alone (nobody else can poll it). A sync POST can
        # last 120 s, longer than the heartbeat lease by which reapers on other hosts judge its owner: keep the
        # heartbeat fresh meanwhile, or such a reaper would fail a run that is still being submitted.
        heartbeat = self._spawn(self._heartbeat(record.id))
        try:
            return await self._send_single(record, params)
        finally:
            heartbeat.cancel()

    async def _send_single(self, record: RunRecord, params: dict[str, Any]) -> RunRecord:
        sent = False

        async def leaving() -> None:  # the POST leaves now (its rate-limit slot came)
            nonlocal sent
            sent = True

        try:
            answer = await self._upstream().submit_run(
                record.grid_id or "", params["inputs"], record.mode or "sync", params["output_columns"],
                params["source_id"], on_send=leaving,
            )
        except UpstreamOutcomeUnknown as exc:
            await self._finish(record.id, FAILED, error=f"unknown: {exc}")
            raise UpstreamOutcomeUnknown(
                f"run {record.id}: {exc}", status_code=exc.status_code, body_excerpt=exc.body_excerpt
            ) from None
        except UpstreamError as exc:
            await self._finish(record.id, FAILED, error=str(exc))
            raise UpstreamError(
                f"run {record.id} was not accepted: {exc}", status_code=exc.status_code, body_excerpt=exc.body_excerpt
            ) from None
        except InvalidInput as exc:  # the upstream settings are unusable: nothing was sent
            await self._finish(record.id, FAILED, error=str(exc))
            raise
        except asyncio.CancelledError:
            # Stopped while waiting for its rate-limit slot, it was never sent: say so, not "unknown".
            self._finish_now(record.id, FAILED, error=INTERRUPTED if sent else NOT_SENT)
            raise
        return await self._persist(lambda: self._apply_submission(record, answer))

    async def _replay(self, existing: RunRecord, grid_id: str, inputs: dict[str, str]) -> dict[str, Any]:
        recorded = existing.inputs.get("inputs") if isinstance(existing.inputs, dict) else None
        if existing.grid_id != grid_id or recorded != inputs:
            raise InvalidInput(
                "idempotency_key was already used for a different run (another grid_id or inputs); use a new key"
            )
        if not existing.is_terminal and existing.request_id is not None:
            return {**await self._status_of(existing), "replayed": True}
        return {**self._answer(existing), "replayed": True}

    # -- get_run_status -----------------------------------------------------------------------------------------

    async def get_run_status(self, request_id: str) -> dict[str, Any]:
        """The run's status. Ended runs come from the table (no upstream request); a running one is re-polled
        when its last poll is older than the poll interval; when the upstream cannot be reached the last known
        status comes back with stale: true and the error. An id tracker never saw is asked upstream once."""
        request_id = _text(request_id, "request_id")
        record = await self._db(self.store.get_by_request_id, request_id)
        if record is None and request_id.startswith("run_"):
            record = await self._db(self.store.get, request_id)  # tracker's own run id works too
        if record is None:
            return await self._look_up(request_id)
        return await self._status_of(record)

    async def _status_of(self, record: RunRecord) -> dict[str, Any]:
        if record.is_terminal or record.request_id is None:
            return self._answer(record)
        if not self.settings.upstream_key:
            return self._answer(record, stale=True, error=NO_UPSTREAM)
        try:
            queue_s = await self._upstream().queue_s()
        except TrackerError:
            queue_s = 0.0  # the poll itself will report what is wrong
        # With the rate limit booked ahead (many runs polled at once) the call answers now from the table. The poll
        # then goes out at its slot in the background, if the claim covers the whole wait (else another process
        # could claim the run meanwhile and poll it twice) and this process has few such polls waiting; otherwise
        # the background poll loop gets to the run in its turn.
        booked = queue_s > FOREGROUND_QUEUE_S
        too_many = len(self._queued) >= MAX_QUEUED_POLLS or self._closing
        if booked and (queue_s > self.settings.poll_interval_s or too_many):
            return self._answer(record, stale=record.error is not None, queued_s=queue_s)
        if booked:
            self._queued.add(record.id)  # before any await, so concurrent calls count it
        claim: str | None = None
        try:
            claim = await self._db(self.store.claim_poll, record.id, self.settings.poll_interval_s, POLL_CLAIM_S)
        finally:
            if booked and claim is None:
                self._queued.discard(record.id)
        if claim is None:
            fresh = await self._db(self.store.get, record.id) or record
            return self._answer(fresh, stale=fresh.status == RUNNING and fresh.error is not None)
        if not booked:
            return await self._poll(record, claim)
        self._spawn(self._queued_poll(record, claim))
        return self._answer(record, stale=record.error is not None, queued_s=queue_s)

    async def _queued_poll(self, record: RunRecord, claim: str) -> None:
        try:
            await self._poll(record, claim)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - nobody awaits it: say what failed; the poll loop retries later
            log.warning("background poll of run %s failed: %s", record.id, exc)
        finally:
            self._queued.discard(record.id)

    async def _poll(self, record: RunRecord, claim: str) -> dict[str, Any]:
        """One GET of a run whose poll claim we hold, and its answer written (which releases the claim)."""
        assert record.request_id is not None
        renewal = self._spawn(self._hold_claim(record.id, claim))
        try:
            answer = await self._upstream().run_status(record.request_id)
        except (UpstreamError, InvalidInput) as exc:
            error = str(exc)
            updated = await self._db(self.store.note_poll, record.id, error, claim) or record
            if updated.is_terminal:
                return self._answer(updated)
            return self._answer(updated, stale=True, error=error)
        finally:
            renewal.cancel()
        if answer is None:
            updated = await self._finish(
                record.id, FAILED, error=f"upstream no longer knows request_id {record.request_id} (HTTP 404)"
            )
        elif answer["status"] == "running":
            updated = await self._db(self.store.note_poll, record.id, None, claim) or record
        else:
            updated = await self._finish_from(record.id, answer)
        return self._answer(updated)

    async def _hold_claim(self, run_id: str, claim: str) -> None:
        """While this process's GET of a run is in flight, keep its poll claim from expiring (a GET can outlast the
        poll interval); a poller that dies stops renewing, and its claim frees the run within POLL_CLAIM_S."""
        while True:
            await asyncio.sleep(POLL_CLAIM_S / 2)
            try:
                if not await self._db(self.store.renew_poll_claim, run_id, claim, POLL_CLAIM_S):
                    return
            except DatabaseUnavailable as exc:
                log.warning("could not renew the poll claim of %s: %s", run_id, exc)

    async def _look_up(self, request_id: str) -> dict[str, Any]:
        if not self.settings.upstream_key:
            raise OperationNotFound(
                "tracker has no record of it, and no upstream is configured to ask (BITSCALE_API_KEY is not set)"
            )
        try:
            answer = await self._upstream().run_status(request_id)
        except UpstreamError as exc:
            raise UpstreamError(
                f"request_id {request_id!r} is not in tracker and the upstream could not be asked: {exc}",
                status_code=exc.status_code,
                body_excerpt=exc.body_excerpt,
            ) from None
        if answer is None:
            raise OperationNotFound("tracker has no record of it and the upstream does not know it")
        terminal = answer["status"] != "running"
        values = {
            "id": new_operation_id("run", OPERATION_TYPE),
            "kind": "run",
            "operation_type": OPERATION_TYPE,
            "status": {"running": RUNNING, "completed": COMPLETED}.get(answer["status"], FAILED),
            # started_at (first seen now: it was started elsewhere) and last_polled_at are the database's now
            "completed_at": FIRST_SEEN if terminal else None,
            "request_id": request_id,
            "grid_id": _optional_str(answer.get("grid_id")),
            "mode": answer.get("mode") if answer.get("mode") in MODES else None,
            "outputs": answer.get("outputs") if answer["status"] == "completed" else None,
            "error": _upstream_failure(answer) if answer["status"] == "failed" else None,
            "last_polled_at": FIRST_SEEN,
            "resumable": True,
        }
        return self._answer(await self._db(self.store.store_found, self._scrub(values)))

    # -- run_grid_batch -----------------------------------------------------------------------------------------

    async def run_grid_batch(
        self,
        grid_id: str,
        rows: list[dict[str, str]],
        mode: str = "async",
        output_columns: list[str] | None = None,
        source_id: str | None = None,
        concurrency: int = DEFAULT_BATCH_CONCURRENCY,
    ) -> dict[str, Any]:
        """Record a batch of runs and return its batch_operation_id at once; a background worker submits each row
        (as a run linked to the batch) and polls the runs until each has ended."""
        params = {
            "grid_id": _text(grid_id, "grid_id"),
            "rows": _rows(rows),
            "mode": _mode(mode),
            "output_columns": _output_columns(output_columns),
            "source_id": _optional_text(source_id, "source_id"),
            "concurrency": _concurrency(concurrency),
        }
        record = await self._db(
            self.operations.create_operation,
            {
                "id": new_operation_id("batch", OPERATION_TYPE),
                "kind": "batch",
                "operation_type": OPERATION_TYPE,
                "total": len(params["rows"]),
                "inputs": params,
                "grid_id": params["grid_id"],
                "mode": params["mode"],
                "owner_host": self.host,
                "owner_pid": self.pid,
                "owner_process": self.process.identity,
                "resumable": True,
            },
        )
        self._start_worker(record.id, resumed=False)
        return {
            "batch_operation_id": record.id,
            "status": record.status,
            "total": record.total,
            "started_at": iso(record.started_at),
            "message": "Submitting in the background; poll get_batch_status with this id every few seconds.",
        }

    def _start_worker(self, batch_id: str, resumed: bool) -> None:
        task = self._spawn(self._batch_worker(batch_id, resumed))
        self._workers[batch_id] = task
        task.add_done_callback(lambda _t: self._workers.pop(batch_id, None))

    async def _batch_worker(self, batch_id: str, resumed: bool) -> None:
        while True:
            try:
                await self._run_batch(batch_id, resumed)
                return
            except asyncio.CancelledError:
                raise
            except OperationClosed:
                return  # cancelled or ended elsewhere
            except DatabaseUnavailable as exc:
                # A passing database error (a cut connection, a timeout): pick the batch up again from the table
                # after a pause, as an adopter would, instead of leaving it idle until the lease runs out.
                log.warning("batch %s worker hit a database error, resuming it in %gs: %s", batch_id, WORKER_RETRY_S, exc)
                await asyncio.sleep(WORKER_RETRY_S)
                resumed = True
            except Exception:  # noqa: BLE001 - the adopt loop restarts it (it still names this process as owner)
                log.exception("batch %s worker stopped; it will be resumed", batch_id)
                return

    async def _run_batch(self, batch_id: str, resumed: bool) -> None:
        batch = await self._db(self.store.get, batch_id)
        if batch is None or batch.is_terminal:
            return
        params = batch.inputs
        rows: list[dict[str, str]] = params["rows"]
        if resumed:
            for child in await self._db(self.store.children, batch_id, True, False):
                log.warning("batch %s row %s was interrupted during submit: marked failed", batch_id, child.row_number)
                await self._finish(child.id, FAILED, error=INTERRUPTED)
            await self._db(self.store.reconcile_batch, batch_id)
        written = await self._db(self.store.submitted_rows, batch_id)
        pending = deque(n for n in range(1, len(rows) + 1) if n not in written)
        if pending:
            log.info("batch %s: %d of %d rows to submit", batch_id, len(pending), len(rows))
        heartbeat = self._spawn(self._heartbeat(batch_id))
        try:

            async def submitter() -> None:
                while pending:
                    number = pending.popleft()
                    try:
                        if not await self._submit_row(batch_id, params, number, rows[number - 1]):
                            pending.clear()
                    except _RowNotWritten as exc:  # a passing database error before anything was sent
                        log.warning("batch %s row %d: %s; trying it again later", batch_id, number, exc)
                        pending.append(number)
                        await asyncio.sleep(WORKER_RETRY_S)

            async with asyncio.TaskGroup() as group:
                for _ in range(min(params.get("concurrency", 1), max(1, len(pending)))):
                    group.create_task(submitter())
            await self._await_runs(batch_id, len(rows))
        finally:
            heartbeat.cancel()

    async def _submit_row(self, batch_id: str, params: dict[str, Any], number: int, inputs: dict[str, str]) -> bool:
        """Submit input row `number`; False when the batch stopped taking rows."""
        child: RunRecord | None = None
        values = {
            "id": new_operation_id("run", OPERATION_TYPE),
            "kind": "run",
            "operation_type": OPERATION_TYPE,
            "inputs": {"inputs": inputs, "output_columns": params["output_columns"], "source_id": params["source_id"]},
            "grid_id": params["grid_id"],
            "mode": params["mode"],
            "row_number": number,
            "owner_host": self.host,
            "owner_pid": self.pid,
            "owner_process": self.process.identity,
            "resumable": True,  # its batch's resumer settles it, not the orphan reaper
        }

        async def write_row() -> None:
            nonlocal child
            try:
                child = await self._db(self.store.create_child, batch_id, values)
            except DatabaseUnavailable as exc:
                raise _RowNotWritten(str(exc)) from None  # nothing was sent: the row can be tried again later
            if child is None:
                raise _BatchStopped()

        try:
            answer = await self._upstream().submit_run(
                params["grid_id"], inputs, params["mode"], params["output_columns"], params["source_id"],
                on_send=write_row,
            )
        except _BatchStopped:
            return False
        except DuplicateRun:
            return True  # this row already has a run: never submit it again
        except asyncio.CancelledError:
            if child is not None:
                self._finish_now(child.id, FAILED, error=INTERRUPTED)
            raise
        except (UpstreamError, InvalidInput) as exc:
            error = f"unknown: {exc}" if isinstance(exc, UpstreamOutcomeUnknown) else str(exc)
            if child is None:  # failed before anything was sent (no key, bad base URL, upstream unreachable)
                try:
                    await write_row()
                except _BatchStopped:
                    return False
                except DuplicateRun:
                    return True  # this row already has a run: never submit it again
            assert child is not None
            await self._persist(lambda: self._finish(child.id, FAILED, error=error))
            return True
        assert child is not None
        await self._persist(lambda: self._apply_submission(child, answer))
        return True

    async def _await_runs(self, batch_id: str, total: int) -> None:
        """Every row has been submitted (or settled): wait until every run has ended (the poller drives them),
        then end the batch. Ending it is one transaction under the batch's row lock that first counts ended runs
        missing from its items, so no run is dropped by a batch that ends while answers are still arriving."""
        while True:
            batch = await self._db(self.operations.get, batch_id)
            if batch is None or batch.is_terminal:
                return
            if await self._db(self.store.running_children, batch_id) == 0:
                if await self._db(self.store.finish_batch_if_done, batch_id, total) is not None:
                    return
            await asyncio.sleep(min(1.0, self.settings.poll_interval_s / 2))

    @property
    def _heartbeat_every_s(self) -> float:
        return max(0.5, min(5.0, self.settings.heartbeat_lease_s / 4))

    async def _heartbeat(self, operation_id: str) -> None:
        """Refresh our lease on a batch, or on a run being submitted, until it is no longer ours to refresh."""
        while True:
            await asyncio.sleep(self._heartbeat_every_s)
            try:
                if not await self._db(self.store.heartbeat, operation_id, self.process):
                    return
            except DatabaseUnavailable as exc:
                log.warning("heartbeat of %s failed: %s", operation_id, exc)

    # -- background: polling and adoption -----------------------------------------------------------------------

    async def start(self) -> None:
        """Begin polling running runs and resuming orphaned batches (call once, inside the serving loop).
        Without an API key there is nothing to poll with, and a resumed batch could only fail its rows: both wait
        for a server that has the key."""
        if self._started:
            return
        self._started = True
        if not self.settings.upstream_key:
            log.info("remote runs: BITSCALE_API_KEY is not set; no polling, no batch resumption in this server")
            return
        # The loops first: a database error in the first adoption pass must not leave this server without them.
        self._spawn(self._poll_loop())
        self._spawn(self._adopt_loop())
        try:
            await self.adopt_orphans()
        except TrackerError as exc:
            log.warning("could not look for orphaned batches yet (the adopt loop retries): %s", exc)

    async def adopt_orphans(self) -> list[str]:
        """Take over running batches whose owner process is gone; returns their ids. Never without an API key."""
        adopted: list[str] = []
        if not self.settings.upstream_key:
            return adopted
        batches = await self._db(self.store.running_batches, OPERATION_TYPE)
        if not batches:
            return adopted
        now = await self._db(self.operations.now)  # leases are judged by the database's clock, once per pass
        for batch in batches:
            if batch.id in self._workers or self._owner_alive(batch, now):
                continue
            if await self._db(self.store.claim_batch, batch, self.process):
                log.warning("resuming batch %s (its owner %s/%s is gone)", batch.id, batch.owner_host, batch.owner_pid)
                self._start_worker(batch.id, resumed=True)
                adopted.append(batch.id)
        return adopted

    def _owner_alive(self, batch: RunRecord, now: datetime) -> bool:
        """Whether the batch's owner still runs; now is the database's time."""
        quiet_s = (now - batch.heartbeat_at).total_seconds() if batch.heartbeat_at is not None else float("inf")
        if quiet_s > self.settings.heartbeat_lease_s:
            return False
        if batch.owner_host != self.host or batch.owner_pid is None:
            return True  # another machine: trust its heartbeat until the lease runs out
        if batch.owner_pid == self.pid and batch.owner_process in (None, self.process.identity):
            # Our own process but not our worker: another service in this process (its heartbeat is fresh), or a
            # worker here that crashed (heartbeat quiet).
            return quiet_s <= 3 * self._heartbeat_every_s
        return liveness.alive(batch.owner_pid, batch.owner_process)

    async def _adopt_loop(self) -> None:
        while True:
            await asyncio.sleep(ADOPT_EVERY_S)
            try:
                await self.adopt_orphans()
            except TrackerError as exc:
                log.warning("could not look for orphaned batches: %s", exc)

    async def _poll_loop(self) -> None:
        """Poll every running run (this process's or not) once per poll interval, within the rate limit."""
        idle = max(0.05, min(0.5, self.settings.poll_interval_s / 4))
        slots = asyncio.Semaphore(POLLERS)

        async def poll_one(record: RunRecord) -> None:
            async with slots:
                claim = await self._db(self.store.claim_poll, record.id, self.settings.poll_interval_s, POLL_CLAIM_S)
                if claim is not None:
                    await self._poll(record, claim)

        while True:
            try:
                due = await self._db(self.store.due_for_poll, self.settings.poll_interval_s, 4 * POLLERS)
                if due:
                    await asyncio.gather(*(poll_one(r) for r in due))
                else:
                    await asyncio.sleep(idle)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep polling; the database or upstream may come back
                log.warning("background poll failed: %s", exc)
                await asyncio.sleep(self.settings.poll_interval_s)

    async def aclose(self) -> None:
        """Stop background work. Runs in flight are marked interrupted; batches stay resumable."""
        self._closing = True
        while self._tasks:  # a call still in progress may have spawned another meanwhile
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.difference_update(tasks)
        if self._client is not None:
            await self._client.aclose()

    # -- helpers ------------------------------------------------------------------------------------------------

    async def _persist(self, write: Callable[[], Any]) -> Any:
        """Write what the upstream answered, through a passing database error: the answer (a request_id, outputs)
        exists only in memory, and losing it would leave a run that was sent but can never be polled."""
        for attempt in range(PERSIST_ATTEMPTS):
            try:
                return await write()
            except DatabaseUnavailable as exc:
                if attempt == PERSIST_ATTEMPTS - 1:
                    raise
                log.warning("could not record an upstream answer, retrying: %s", exc)
                await asyncio.sleep(min(4.0, 0.25 * 2**attempt))
        raise AssertionError("unreachable")

    def _upstream(self) -> UpstreamClient:
        if self._client is None:
            s = self.settings
            limiter = SharedRateLimiter(self.engine, workspace_key(s.upstream_base, s.upstream_key), s.upstream_rate_per_s)
            self._client = UpstreamClient(s.upstream_base, s.upstream_key, limiter)
        return self._client

    async def _apply_submission(self, record: RunRecord, answer: dict[str, Any]) -> RunRecord:
        if answer["status"] == "running":
            updated = await self._db(self.store.mark_submitted, record.id, answer["request_id"])
            return updated or record
        return await self._finish_from(record.id, answer)

    async def _finish_from(self, run_id: str, answer: dict[str, Any]) -> RunRecord:
        if answer["status"] == "completed":
            return await self._finish(run_id, COMPLETED, outputs=answer.get("outputs"))
        return await self._finish(run_id, FAILED, error=_upstream_failure(answer))

    async def _finish(self, run_id: str, status: str, outputs: Any = None, error: str | None = None) -> RunRecord:
        outputs, error = self._scrub(outputs), self._scrub(error)  # the upstream's text: no NUL, never the key
        record = await self._db(self.store.finish, run_id, status, None, outputs, error)
        if record is None:
            raise OperationNotFound(f"run {run_id!r} not found")
        return record

    def _scrub(self, value: Any) -> Any:
        """Text from the upstream, made safe to store and show: NUL removed (PostgreSQL refuses it) and the API
        key masked, in case the upstream echoes it back."""
        if isinstance(value, str):
            value = value.replace("\x00", "")
            key = self.settings.upstream_key
            return value.replace(key, "***") if key else value
        if isinstance(value, dict):
            return {self._scrub(k): self._scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._scrub(v) for v in value]
        return value

    def _finish_now(self, run_id: str, status: str, error: str) -> None:
        """Blocking finish for cancellation paths, where awaiting again would be cancelled too."""
        try:
            self.store.finish(run_id, status, None, None, error)
        except SQLAlchemyError as exc:
            log.warning("could not mark run %s interrupted: %s", run_id, short_reason(exc))

    def _answer(
        self, record: RunRecord, stale: bool = False, error: str | None = None, queued_s: float | None = None
    ) -> dict[str, Any]:
        """The upstream's shape ({mode, status, grid_id, outputs when completed}, request_id and poll_url while
        running), plus what tracker knows."""
        answer: dict[str, Any] = {
            "mode": record.mode,
            "status": record.status,
            "grid_id": record.grid_id,
            "request_id": record.request_id,
        }
        if record.status == COMPLETED:
            answer["outputs"] = record.outputs
        if record.status == RUNNING and record.request_id is not None:
            answer["poll_url"] = self._poll_url(record.request_id)
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
        elif record.status == RUNNING:
            answer["message"] = f"Still running; call get_run_status again in {self.settings.poll_interval_s:g}-5 s."
        return answer

    def _poll_url(self, request_id: str) -> str | None:
        parts = urlsplit(self.settings.upstream_base)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
            return None
        return f"{self.settings.upstream_base.rstrip('/')}/run/status/{request_id}"

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Already reported to whoever awaited it; this only keeps asyncio from warning when nobody did.
            log.debug("background task ended with %s", type(task.exception()).__name__)

    @staticmethod
    async def _db(fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args)
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(f"database error: {short_reason(exc)}") from None


def _optional_str(value: Any) -> str | None:
    return value[:MAX_ID_CHARS] if isinstance(value, str) and value else None


def _upstream_failure(answer: dict[str, Any]) -> str:
    error = answer.get("error")
    return f"upstream reported the run failed: {str(error)[:500]}" if error else "upstream reported the run failed"
