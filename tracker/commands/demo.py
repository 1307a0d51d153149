"""`tracker demo`: a self-contained tour. A worker records a batch while a second Tracker (as another process
would) watches its progress from the database, then prints the final status and how to read it with sqlite3."""

from __future__ import annotations

import argparse
import json
import random
import threading
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..api import Tracker
from ..db import describe
from ..settings import Settings
from ..timeutil import iso


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="record a demo batch with live progress and print its status")
    parser.add_argument("--items", type=int, default=2000, help="items in the demo batch (default 2000)")
    parser.add_argument("--seconds", type=float, default=4.0, help="how long the worker takes (default 4)")
    parser.set_defaults(run=run)


def _work(settings: Settings, batch_id: str, items: int, seconds: float) -> None:
    """The host server's worker: its own Tracker, as a separate process would have."""
    rng = random.Random(7)
    with Tracker(settings) as worker, worker.attach(batch_id) as batch:
        for n in range(1, items + 1):
            if rng.random() < 0.03:
                batch.record_failure("row rejected: missing email", row_number=n)
            else:
                batch.record_success(f"contact-{n:05d}")
            time.sleep(seconds / items)


def run(args: argparse.Namespace, settings: Settings) -> int:
    console = Console(stderr=False)
    items = max(1, min(args.items, 1_000_000))
    with Tracker(settings) as tracker:
        console.print(f"[bold]tracker demo[/] database: {describe(settings.db)}")
        batch = tracker.start_batch("import", total=items, inputs={"source": "demo.csv"})
        console.print(f"started batch [cyan]{batch.id}[/]")
        worker = threading.Thread(target=_work, args=(settings, batch.id, items, args.seconds))
        worker.start()
        with Progress(
            TextColumn("import"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[failed]} failed"),
            TimeElapsedColumn(), console=console,
        ) as progress:
            task = progress.add_task("import", total=items, failed=0)
            while True:
                record = tracker.get(batch.id)  # read from the database, not from the worker's memory
                assert record is not None
                progress.update(task, completed=record.completed, failed=record.failed_count)
                if record.is_terminal:
                    break
                time.sleep(0.1)
        worker.join()
        failures = tracker.items(batch.id, ok=False, limit=3)
        summary = {
            "batch_operation_id": record.id,
            "status": record.status,
            "progress": {"completed": record.completed, "total": record.total, "percent": record.percent},
            "succeeded": record.succeeded_count,
            "failed": record.failed_count,
            "first_failures": [{"row_number": f.row_number, "error": f.error} for f in failures],
            "started_at": iso(record.started_at),
            "completed_at": iso(record.completed_at),
            "execution_time_ms": record.execution_time_ms,
        }
        console.print_json(json.dumps(summary))
        if settings.db.count("://") == 0:
            console.print(
                "Read it as an operator would:\n"
                f"  sqlite3 {settings.db} \"SELECT status, completed, total, percent FROM operation_status "
                f"WHERE id = '{record.id}'\""
            )
    return 0
