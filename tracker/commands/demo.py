"""`tracker demo`: the whole story in about 20 seconds, self-contained. A fake grid API starts on 127.0.0.1; an
agent's call to run_grid_batch on a `tracker serve` starts a batch of grid runs; a live progress bar reads the
database; the server is SIGKILLed mid-batch; a new server resumes the batch to completion without submitting any
row twice; status is then answered by the new server, and the fake upstream's own counts are shown."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import anyio
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..aio import off_loop
from ..api import Tracker
from ..db import describe
from ..errors import TrackerError
from ..settings import Settings
from ..testing.fake_upstream import FakeUpstreamProcess

COMPANIES = ["acme", "globex", "initech", "umbrella", "hooli", "stark"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="a batch of grid runs against a local fake upstream: kill the server mid-batch, resume it"
    )
    parser.add_argument("--rows", type=int, default=24, help="grid runs in the batch (default 24, at most 200)")
    parser.add_argument(
        "--kill-at", type=float, default=0.35,
        help="kill the server once this fraction of the rows has been submitted (default 0.35)",
    )
    parser.set_defaults(run=run)


def _start_fake_upstream(key: str) -> FakeUpstreamProcess:
    try:
        return FakeUpstreamProcess(key, run_seconds="0.5,2.0", run_failure_rate="0.1", seed="7")
    except RuntimeError as exc:
        raise TrackerError(str(exc)) from None


def run(args: argparse.Namespace, settings: Settings) -> int:
    rows = max(1, min(args.rows, 200))
    kill_at = min(0.9, max(0.05, args.kill_at))
    workdir = Path(tempfile.mkdtemp(prefix="tracker-demo-"))
    if settings.db_is_default:  # self-contained unless --db / TRACKER_DB says where
        settings = replace(settings, db=str(workdir / "demo.db"), db_is_default=False)
    key = "demo-" + secrets.token_hex(8)
    fake = _start_fake_upstream(key)
    try:
        settings = replace(settings, upstream_base=fake.base_url, upstream_key=key)
        return anyio.run(_story, settings, fake, rows, kill_at, workdir)
    finally:
        fake.stop()
        shutil.rmtree(workdir, ignore_errors=True)


async def _story(settings: Settings, fake: FakeUpstreamProcess, rows: int, kill_at: float, workdir: Path) -> int:
    from ..testing.client import stdio  # the MCP SDK is imported only when the demo runs

    console = Console()
    env = {
        **os.environ,
        "TRACKER_DB": settings.db,
        "BITSCALE_API_BASE": settings.upstream_base,
        "BITSCALE_API_KEY": settings.upstream_key,
        "TRACKER_POLL_INTERVAL": "1s",  # runs take 0.5-2 s here: poll them a little more often than the 2 s default
    }
    inputs = [{"email": f"person{n}@example.com", "company": COMPANIES[n % len(COMPANIES)]} for n in range(1, rows + 1)]
    console.print(f"[bold]tracker demo[/]  database {describe(settings.db)}")
    console.print(f"fake grid API on {fake.base_url} (5 requests/s per key, 429 beyond; runs take 0.5-2 s)")
    started_at = time.monotonic()
    with Tracker(settings) as tracker, (workdir / "servers.log").open("a") as errlog:
        # -- 1. an agent starts a batch on server A --------------------------------------------------------------
        killed = False
        try:
            async with stdio(env, errlog) as session:
                started = await session.answer("run_grid_batch", grid_id="demo-grid", rows=inputs, concurrency=2)
                batch_id = started["batch_operation_id"]
                record = tracker.get(batch_id)
                assert record is not None
                server_a = record.owner_pid
                console.print(f"server A (pid {server_a}): run_grid_batch -> [cyan]{batch_id}[/] ({rows} rows)")
                await _watch(console, tracker, fake, batch_id, f"server A pid {server_a}", until=kill_at)
                os.kill(server_a, signal.SIGKILL)
                killed = True
                console.print(f"[bold red]SIGKILL[/] server A (pid {server_a}) mid-batch")
        except Exception:  # noqa: BLE001 - a session whose server was killed may complain on the way out
            if not killed:
                raise
        record = tracker.get(batch_id)
        assert record is not None
        console.print(
            f"the database still has it: status {record.status}, {record.completed}/{record.total} done, "
            f"{fake.stats()['posts']} rows submitted upstream"
        )
        # -- 2. a new server resumes it -----------------------------------------------------------------------------
        async with stdio(env, errlog) as session:
            await anyio.sleep(0.3)
            record = tracker.get(batch_id)
            server_b = record.owner_pid if record is not None else None
            console.print(f"server B (pid {server_b}) started on the same database and resumed the batch")
            await _watch(console, tracker, fake, batch_id, f"server B pid {server_b}", until=None)
            # -- 3. status, answered by the new server ----------------------------------------------------------
            status = (await session.answer("get_batch_status", batch_operation_id=batch_id))["operation"]
            first_id = status["successful_ids"][0] if status["successful_ids"] else None
            run_status = await session.answer("get_run_status", request_id=first_id) if first_id else None
    stats = fake.stats()
    summary = {
        "batch_operation_id": status["batch_operation_id"],
        "status": status["status"],
        "progress": status["progress"],
        "successful_ids": status["successful_ids"][:3] + (["..."] if len(status["successful_ids"]) > 3 else []),
        "failed_items": status["failed_items"][:3],
        "execution_time_ms": status.get("execution_time_ms"),  # left out while the batch still runs
    }
    console.print("[bold]get_batch_status[/] (answered by server B):")
    console.print_json(json.dumps(summary))
    if run_status is not None:
        console.print(f"[bold]get_run_status[/]({first_id}):")
        console.print_json(json.dumps({k: run_status.get(k) for k in ("mode", "status", "grid_id", "outputs")}))
    twice = sum(1 for count in stats["submissions_per_input"].values() if count > 1)
    console.print(
        f"upstream saw {stats['posts']} submissions for {stats['distinct_inputs']} distinct rows "
        f"([bold]{twice} submitted twice[/]), {stats['gets']} status polls, {stats['rate_limited']} refused with 429, "
        f"at most {stats['max_accepted_in_any_second']} requests in any one second."
    )
    console.print(f"done in {time.monotonic() - started_at:.1f}s")
    return 0 if status["status"] in ("completed", "failed") and twice == 0 else 1


async def _watch(
    console: Console, tracker: Tracker, fake: FakeUpstreamProcess, batch_id: str, label: str, until: float | None
) -> None:
    """A progress bar read from the database (not from any server's memory) until the batch ends, or until
    `until` of its rows have been submitted upstream (and at least one run has ended)."""
    with Progress(
        TextColumn(f"[bold]{label:<18}[/]"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed, {task.fields[posts]} submitted"), TimeElapsedColumn(),
        console=console, transient=False,
    ) as progress:
        task = progress.add_task("batch", total=None, failed=0, posts=0)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            record = await off_loop(tracker.get, batch_id)
            assert record is not None
            posts = (await off_loop(fake.stats))["posts"]
            progress.update(task, total=record.total, completed=record.completed, failed=record.failed_count, posts=posts)
            if record.is_terminal or (until is not None and posts >= until * record.total and record.completed >= 2):
                return
            await anyio.sleep(0.1)
    raise TrackerError(f"batch {batch_id} did not finish within 120 s")
