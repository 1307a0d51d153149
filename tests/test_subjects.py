"""Each caller sees its own: operations started through an authenticated call carry the caller's subject, and every
other subject's operation is answered exactly as an id that never existed. On SQLite and PostgreSQL.

Authenticated calls are made the way the SDK's auth middleware marks them: its auth_context_var holds an
AuthenticatedUser around the call (set in the calling task: the in-process session runs the tool in that context).
A call without it is what stdio is: no subject."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.mcpserver import MCPServer
from sqlalchemy import event

from tracker import InvalidInput, OperationNotFound, Settings, Tracker
from tracker.ids import new_operation_id
from tracker.limits import SUBJECT_CHARS
from tracker.models import COMPLETED, RUNNING
from tracker.records import EVERYONE, Viewer
from tracker.remote import MemoryUpstream, RunRequest, RunsService
from tracker.server.caller import current_subject
from tracker.server.run_tools import mount_run_tools, run_lifespan
from tracker.server.status_tools import StatusTools
from tracker.status import StatusService
from tracker.store.runs import RunStore
from tracker.testing.client import ToolAnswer, ToolClient, in_process

from .reap_helpers import set_times


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def tracker(backend_tracker: Tracker) -> Tracker:
    return backend_tracker


@contextmanager
def caller(subject: str | None) -> Iterator[None]:
    """Calls made inside come from the authenticated caller `subject` (None: no caller, as over stdio)."""
    if subject is None:
        yield
        return
    token = AccessToken(token=f"token-{subject}", client_id=f"client-{subject}", scopes=[], subject=subject)
    reset = auth_context_var.set(AuthenticatedUser(token))
    try:
        yield
    finally:
        auth_context_var.reset(reset)


async def call(client: ToolClient, subject: str | None, tool: str, **arguments: Any) -> ToolAnswer:
    with caller(subject):
        return await client.call(tool, arguments)


async def answer(client: ToolClient, subject: str | None, tool: str, **arguments: Any) -> Any:
    answered = await call(client, subject, tool, **arguments)
    assert not answered.is_error, answered.text
    return answered.value


def without_id(answered: ToolAnswer, operation_id: str) -> tuple[bool, str, str]:
    """The answer with the id it names replaced: what must be byte-identical between two ids."""
    value = json.dumps(answered.value, sort_keys=True)
    return answered.is_error, answered.text.replace(operation_id, "<id>"), value.replace(operation_id, "<id>")


@asynccontextmanager
async def tools(tracker: Tracker, upstream: MemoryUpstream | None = None) -> AsyncIterator[ToolClient]:
    """The status and run tools over `tracker`'s database, runs going to an in-memory upstream."""
    runs = RunsService(tracker.settings, tracker.engine, upstream or MemoryUpstream())
    server = MCPServer(name="subjects", lifespan=run_lifespan(runs))
    StatusTools(tracker).register(server)
    mount_run_tools(server, runs)
    async with in_process(server) as client:
        yield client


async def listed(client: ToolClient, subject: str | None, **filters: Any) -> set[str]:
    page = await answer(client, subject, "list_operations", limit=100, **filters)
    return {row["operation_id"] for row in page["operations"]}


async def assert_not_found_as_never_existed(client: ToolClient, subject: str, operation_id: str, kind: str) -> None:
    """Every tool that takes the id answers `subject` about it byte for byte as about a fresh id never stored."""
    never = new_operation_id(kind, "import" if kind == "batch" else "grid_run")
    calls = [
        ("get_batch_status", {}, "batch_operation_id"),
        ("get_operation_items", {"outcome": "succeeded"}, "operation_id"),
        ("get_operation_items", {"outcome": "failed", "limit": 5}, "operation_id"),
        ("cancel_operation", {}, "operation_id"),
    ]
    for tool, extra, name in calls:
        theirs = await call(client, subject, tool, **{name: operation_id, **extra})
        unknown = await call(client, subject, tool, **{name: never, **extra})
        assert theirs.value is not None and theirs.value["found"] is False, (tool, theirs)
        assert without_id(theirs, operation_id) == without_id(unknown, never), tool
    assert operation_id not in await listed(client, subject)


# -- batches ---------------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_another_subjects_batch_is_answered_as_an_id_that_never_existed(tracker: Tracker) -> None:
    batch = tracker.start_batch("import", total=3, subject="alice")
    batch.record_success("a-1")
    batch.record_failure("bad row", row_number=2)
    batch.flush()
    async with tools(tracker) as client:
        await assert_not_found_as_never_existed(client, "bob", batch.id, "batch")
        # bob's cancel changed nothing: alice's batch runs on and takes items.
        assert tracker.summary(batch.id).status == RUNNING and tracker.summary(batch.id).error is None
        batch.record_success("a-3")
        batch.finish()
        for subject in ("alice", None):  # its own caller, and stdio
            status = await answer(client, subject, "get_batch_status", batch_operation_id=batch.id)
            assert status["found"] is True and status["operation"]["successful_ids"] == ["a-1", "a-3"]
            assert batch.id in await listed(client, subject)
        assert batch.id not in await listed(client, "bob", kind="batch", status="completed")


@pytest.mark.anyio
async def test_alice_cancels_her_own_batch_and_bob_cannot(tracker: Tracker) -> None:
    batch = tracker.start_batch("update", total=2, subject="alice")
    async with tools(tracker) as client:
        refused = await answer(client, "bob", "cancel_operation", operation_id=batch.id)
        assert refused["found"] is False and tracker.summary(batch.id).status == RUNNING
        cancelled = await answer(client, "alice", "cancel_operation", operation_id=batch.id)
        assert cancelled["cancelled"] is True and cancelled["operation"]["status"] == "cancelled"
        again = await call(client, "alice", "cancel_operation", operation_id=batch.id)
        assert again.is_error and "already cancelled" in again.text
        # bob still gets the not-found answer, never the "already cancelled" error that would say it exists.
        assert (await answer(client, "bob", "cancel_operation", operation_id=batch.id))["found"] is False


@pytest.mark.anyio
async def test_a_batch_recorded_without_a_subject_is_seen_by_every_caller(tracker: Tracker) -> None:
    batch = tracker.start_batch("import", total=1)
    batch.record_success("x")
    batch.finish()
    async with tools(tracker) as client:
        for subject in ("alice", "bob", None):
            status = await answer(client, subject, "get_batch_status", batch_operation_id=batch.id)
            assert status["found"] is True and status["operation"]["successful_ids"] == ["x"]
            items = await answer(client, subject, "get_operation_items", operation_id=batch.id)
            assert items["items"] == ["x"]
            assert batch.id in await listed(client, subject)


@pytest.mark.anyio
async def test_subject_bound_only_shows_an_authenticated_caller_its_own_alone(backend_settings: Settings) -> None:
    with Tracker(replace(backend_settings, subject_bound_only=True)) as tracker:
        unbound = tracker.start_batch("import", total=1)
        own = tracker.start_batch("import", total=1, subject="alice")
        async with tools(tracker) as client:
            await assert_not_found_as_never_existed(client, "alice", unbound.id, "batch")
            await assert_not_found_as_never_existed(client, "bob", own.id, "batch")
            assert await listed(client, "alice") == {own.id}
            assert await listed(client, "bob") == set()
            assert await listed(client, None) == {unbound.id, own.id}  # stdio: every operation, as before
            assert (await answer(client, None, "get_batch_status", batch_operation_id=unbound.id))["found"] is True
        assert tracker.summary(unbound.id).status == RUNNING  # alice's cancel above cancelled nothing


def test_the_setting_is_read_from_the_environment() -> None:
    assert Settings.from_env({}).subject_bound_only is False
    assert Settings.from_env({"TRACKER_SUBJECT_BOUND_ONLY": "1"}).subject_bound_only is True
    assert Settings.from_env({"TRACKER_SUBJECT_BOUND_ONLY": "false"}).subject_bound_only is False
    with pytest.raises(InvalidInput, match="^TRACKER_SUBJECT_BOUND_ONLY must be 1 or 0"):
        Settings.from_env({"TRACKER_SUBJECT_BOUND_ONLY": "maybe"})


def test_a_subject_is_checked_like_every_argument(tracker: Tracker) -> None:
    for subject, message in [
        ("a" * (SUBJECT_CHARS + 1), f"subject is longer than {SUBJECT_CHARS} characters"),
        ("  ", "subject must not be empty"),
        ("a\x00b", "subject contains a NUL character"),
        (7, "subject must be a string, not integer"),
    ]:
        with pytest.raises(InvalidInput, match=f"^{message}") as raised:
            tracker.start_batch("import", subject=subject)
        assert "\n" not in str(raised.value)
    assert tracker.list() == []
    longest = tracker.start_batch("import", subject="a" * SUBJECT_CHARS)
    assert tracker.get(longest.id).subject == "a" * SUBJECT_CHARS


@pytest.mark.anyio
async def test_a_token_subject_too_long_to_store_is_a_one_line_tool_error(tracker: Tracker) -> None:
    async with tools(tracker) as client:
        refused = await call(client, "s" * (SUBJECT_CHARS + 1), "run_grid", grid_id="g1", inputs={"n": "1"})
        assert refused.is_error and f"subject is longer than {SUBJECT_CHARS} characters" in refused.text
        assert "\n" not in refused.text
    assert tracker.list() == []


# -- remote runs ------------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_another_subjects_run_is_not_found_by_get_run_status(tracker: Tracker) -> None:
    upstream = MemoryUpstream(polls_to_finish=1000)  # stays running: every poll goes upstream
    async with tools(tracker, upstream) as client:
        run = await answer(client, "alice", "run_grid", grid_id="g1", inputs={"n": "1"}, mode="async")
        request_id, run_id = run["request_id"], run["operation_id"]
        for theirs, never in [(request_id, "mem-never-submitted"), (run_id, new_operation_id("run", "grid_run"))]:
            bobs = await call(client, "bob", "get_run_status", request_id=theirs)
            unknown = await call(client, "bob", "get_run_status", request_id=never)
            assert bobs.value["found"] is False
            assert without_id(bobs, theirs) == without_id(unknown, never)
        await assert_not_found_as_never_existed(client, "bob", run_id, "run")
        assert tracker.get_by_request_id(request_id).subject == "alice"  # bob's look-up stored nothing of his
        assert len([r for r in tracker.list(kind="run")]) == 1
        for subject in ("alice", None):
            status = await answer(client, subject, "get_run_status", request_id=request_id)
            assert status["found"] is True and status["operation_id"] == run_id
            assert run_id in await listed(client, subject, kind="run")
    assert upstream.submitted == [RunRequest("g1", {"n": "1"}, "async", None, None)]


@pytest.mark.anyio
async def test_a_run_found_upstream_is_recorded_for_the_caller_who_asked(tracker: Tracker) -> None:
    upstream = MemoryUpstream(polls_to_finish=1000)
    elsewhere = await upstream.submit_run(RunRequest("g1", {"n": "1"}, "async"))  # started outside tracker
    async with tools(tracker, upstream) as client:
        found = await answer(client, "alice", "get_run_status", request_id=elsewhere["request_id"])
        assert found["found"] is True and found["status"] == "running"
        assert tracker.get_by_request_id(elsewhere["request_id"]).subject == "alice"
        bobs = await call(client, "bob", "get_run_status", request_id=elsewhere["request_id"])
        unknown = await call(client, "bob", "get_run_status", request_id="mem-unknown")
        assert without_id(bobs, elsewhere["request_id"]) == without_id(unknown, "mem-unknown")
        assert (await answer(client, None, "get_run_status", request_id=elsewhere["request_id"]))["found"] is True


@pytest.mark.anyio
async def test_idempotency_keys_are_per_subject(tracker: Tracker) -> None:
    """A key names a run within its subject: bob's first use of alice's key is a new run (whatever its inputs),
    never her run and never an error that would say the key is taken; each replays only its own."""
    upstream = MemoryUpstream(polls_to_finish=1000)
    async with tools(tracker, upstream) as client:

        async def run(subject: str | None, n: str) -> Any:
            return await answer(
                client, subject, "run_grid", grid_id="g1", inputs={"n": n}, mode="async", idempotency_key="order-42"
            )

        alices, bobs, nobodys = await run("alice", "1"), await run("bob", "2"), await run(None, "3")
        assert len({alices["operation_id"], bobs["operation_id"], nobodys["operation_id"]}) == 3
        assert not any(first.get("replayed") for first in (alices, bobs, nobodys))
        for subject, n, first in [("alice", "1", alices), ("bob", "2", bobs), (None, "3", nobodys)]:
            again = await run(subject, n)
            assert again["replayed"] is True and again["operation_id"] == first["operation_id"]
        changed = await call(
            client, "bob", "run_grid", grid_id="g1", inputs={"n": "1"}, mode="async", idempotency_key="order-42"
        )
        assert changed.is_error and "already used for a different run" in changed.text  # his own earlier run
    assert [r.inputs["n"] for r in upstream.submitted] == ["1", "2", "3"]  # each submitted once
    keys = RunStore(tracker.engine)
    assert keys.get_by_idempotency_key("order-42", "alice").id == alices["operation_id"]
    assert keys.get_by_idempotency_key("order-42", "bob").id == bobs["operation_id"]
    assert keys.get_by_idempotency_key("order-42").id == nobodys["operation_id"]
    assert keys.get_by_idempotency_key("order-42", "carol") is None


@pytest.mark.anyio
async def test_concurrent_replays_of_one_key_submit_once_per_subject(tracker: Tracker) -> None:
    """Calls racing on one key: the unique index of each subject's scope decides, so one run per subject."""
    upstream = MemoryUpstream(polls_to_finish=1000)
    runs = RunsService(tracker.settings, tracker.engine, upstream)
    try:
        answers = await asyncio.gather(*(
            runs.run_grid("g1", {"n": "1"}, mode="async", idempotency_key="k", subject=subject)
            for subject in ["alice", "bob", None] * 3
        ))
    finally:
        await runs.aclose()
    per_subject = [{a["operation_id"] for a in answers[n::3]} for n in range(3)]
    assert [len(ids) for ids in per_subject] == [1, 1, 1] and len(set.union(*per_subject)) == 3
    assert len(upstream.submitted) == 3
    assert [tracker.get(ids.pop()).subject for ids in per_subject] == ["alice", "bob", None]


@pytest.mark.anyio
async def test_a_run_batch_and_its_runs_carry_the_subject(tracker: Tracker) -> None:
    upstream = MemoryUpstream(polls_to_finish=1)
    settings = replace(tracker.settings, poll_interval_s=0.05)
    with Tracker(settings) as fast:
        async with tools(fast, upstream) as client:
            started = await answer(client, "alice", "run_grid_batch", grid_id="g1", rows=[{"n": "1"}, {"n": "2"}])
            batch_id = started["batch_operation_id"]
            for _ in range(400):
                status = await answer(client, "alice", "get_batch_status", batch_operation_id=batch_id)
                if status["operation"]["status"] != RUNNING:
                    break
                await asyncio.sleep(0.02)
            assert status["operation"]["status"] == COMPLETED and len(status["operation"]["successful_ids"]) == 2
            children = RunStore(fast.engine).children(batch_id)
            assert [child.subject for child in children] == ["alice", "alice"]
            await assert_not_found_as_never_existed(client, "bob", batch_id, "batch")
            for child in children:
                await assert_not_found_as_never_existed(client, "bob", child.id, "run")
            assert await listed(client, "alice", kind="run") == {child.id for child in children}
            assert await listed(client, "bob") == set()


@pytest.mark.anyio
async def test_a_resumed_batch_keeps_its_subject(tracker: Tracker) -> None:
    """A batch whose owner is gone is adopted by another server: the runs it submits carry the batch's subject."""
    upstream = MemoryUpstream(polls_to_finish=1)
    settings = replace(tracker.settings, poll_interval_s=1.0, heartbeat_lease_s=30.0)
    runs = RunsService(settings, tracker.engine, upstream)
    try:
        batch = runs.store.create_batch(
            {
                "id": new_operation_id("batch", "grid_run"), "kind": "batch", "operation_type": "grid_run",
                "total": 3, "inputs": {"grid_id": "g1", "mode": "async", "row_count": 3, "concurrency": 2},
                "grid_id": "g1", "mode": "async", "resumable": True, "subject": "alice",
            },
            [{"n": "1"}, {"n": "2"}, {"n": "3"}],
        )
        now = runs.store.now()
        set_times(runs.engine, batch.id, owner_host="another-host", owner_pid=1, heartbeat_at=now)
        assert await runs.adopter.tick(now=now + timedelta(seconds=31)) == [batch.id]
        for _ in range(300):
            if runs.store.get(batch.id).status != RUNNING:
                break
            await runs.poller.tick(now=runs.store.now() + timedelta(seconds=5))
            await asyncio.sleep(0.02)
    finally:
        await runs.aclose()
    ended = runs.store.get(batch.id)
    assert ended.status == COMPLETED and ended.subject == "alice" and ended.owner_host != "another-host"
    assert [child.subject for child in runs.store.children(batch.id)] == ["alice"] * 3
    assert tracker.get(batch.id, subject="bob") is None and tracker.get(batch.id, subject="alice") is not None


# -- the store: every read the tools use filters in its SQL ----------------------------------------------------------


def test_every_read_finds_only_what_its_viewer_may_see(tracker: Tracker) -> None:
    """The rule as a table: (viewer) -> which of alice's, bob's and the unbound operation each read finds."""
    store, runs = tracker.store, RunStore(tracker.engine)
    ops: dict[str | None, str] = {}
    for subject in ("alice", "bob", None):
        run = runs.create({
            "id": new_operation_id("run", "grid_run"), "kind": "run", "operation_type": "grid_run",
            "request_id": f"req-{subject}", "idempotency_key": "k", "subject": subject,
        })
        runs.finish(run.id, COMPLETED)
        ops[subject] = run.id
    batch = tracker.start_batch("import", subject="alice")
    batch.record_success("ok-1")
    batch.flush()
    alice, alice_only = Viewer("alice"), Viewer("alice", own_only=True)
    expected = {EVERYONE: {"alice", "bob", None}, alice: {"alice", None}, alice_only: {"alice"}}
    for viewer, sees in expected.items():
        for subject, op_id in ops.items():
            visible = subject in sees
            assert (store.get(op_id, viewer) is not None) is visible
            assert (store.get_summary(op_id, viewer) is not None) is visible
            assert (store.get_with_first_items(op_id, 5, 5, viewer) is not None) is visible
            assert (store.get_by_request_id(f"req-{subject}", viewer) is not None) is visible
            assert (runs.get(op_id, viewer) is not None) is visible
            assert (runs.get_by_request_id(f"req-{subject}", viewer) is not None) is visible
        listed_ids = {r.id for r in store.list_operations(kind="run", viewer=viewer)}
        assert listed_ids == {ops[s] for s in sees}
        items = store.items(batch.id, ok=True, viewer=viewer)
        assert [i.item_id for i in items] == (["ok-1"] if "alice" in sees else [])
    bobs = Viewer("bob")
    with pytest.raises(OperationNotFound):
        store.cancel(batch.id, "by bob", bobs)
    assert store.get_summary(batch.id).status == RUNNING
    assert store.cancel(batch.id, "by alice", alice).status == "cancelled"


def test_list_pages_of_a_subject_hold_its_own_and_the_unbound_newest_first(tracker: Tracker) -> None:
    """The two parts a caller sees are read apart and merged: pages cover both, in order, without repeats."""
    service = StatusService(tracker)
    subjects = ["alice", None, "bob", "alice", "bob", "bob", None, "alice"] * 5
    made = [(tracker.start_batch("import" if n % 3 else "update", subject=s).id, s) for n, s in enumerate(subjects)]
    for filters in [(None, None, None), ("batch", "running", "import")]:
        seen: list[str] = []
        cursor = None
        while True:
            page = service.list_operations(*filters, 3, cursor, "alice")
            seen += [row["operation_id"] for row in page["operations"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        wanted = [r.id for r in tracker.list(*filters, limit=100) if r.subject in ("alice", None)]
        assert seen == wanted and len(set(seen)) == len(seen)
        assert {op_id for op_id, s in made if s == "bob"}.isdisjoint(seen)
    assert len(seen) == len([1 for n, s in enumerate(subjects) if s != "bob" and n % 3])


def test_list_reads_each_part_from_the_subject_index(settings: Settings) -> None:
    """SQLite's plan for a subject's list: one range of ix_operations_subject_started_at_id per part, walked newest
    first and cut at the page size (what is sorted is the merge of those pages); a viewer who sees everything keeps
    today's walk of ix_operations_started_at_id. A lookup by id stays on the primary key."""
    with Tracker(settings) as tracker:
        for n in range(50):
            tracker.start_batch("import", subject=("alice", "bob", None)[n % 3])
        plans = {}
        for name, viewer in [("all", EVERYONE), ("own_and_unbound", Viewer("alice")), ("own", Viewer("alice", True))]:
            plan = _plan(tracker, lambda v=viewer: tracker.store.list_operations(limit=21, viewer=v))
            plans[name] = [step for step in plan.splitlines() if " operations " in step + " "]
        get_plan = _plan(tracker, lambda: tracker.store.get_summary("batch_x", Viewer("alice")))
    assert plans["all"] == ["SCAN operations USING INDEX ix_operations_started_at_id"]
    part = "SEARCH operations USING INDEX ix_operations_subject_started_at_id (subject=?)"
    assert plans["own"] == [part]
    assert plans["own_and_unbound"] == [part, part]
    assert get_plan == "SEARCH operations USING INDEX sqlite_autoindex_operations_1 (id=?)"


def _plan(tracker: Tracker, read: Any) -> str:
    """SQLite's EXPLAIN QUERY PLAN of the statement `read` runs, one line per step."""
    captured: list[tuple[str, Any]] = []

    def capture(_conn, _cursor, statement, parameters, _context, _many) -> None:  # noqa: ANN001
        if statement.lstrip().upper().startswith("SELECT"):
            captured.append((statement, parameters))

    event.listen(tracker.engine, "before_cursor_execute", capture)
    try:
        read()
    finally:
        event.remove(tracker.engine, "before_cursor_execute", capture)
    statement, parameters = captured[-1]
    with tracker.engine.connect() as conn:
        rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
    return "\n".join(row[-1] for row in rows)


def test_the_tools_read_the_subject_of_the_call() -> None:
    assert current_subject() is None
    with caller("alice"):
        assert current_subject() == "alice"
    assert current_subject() is None
