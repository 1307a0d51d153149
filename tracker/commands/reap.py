"""`tracker reap`: one retention pass for cron. Fails orphaned running operations, purges what finished more than the
retention ago, prints one summary line; exit 0, or one `tracker: ...` line on stderr and exit 1."""

from __future__ import annotations

import argparse

from ..db import open_engine
from ..reaper import reap
from ..settings import Settings
from ..timeutil import iso
from ._operator import add_db_flag, add_json_flag, duration, print_json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reap",
        help="purge expired operations and fail orphaned ones (for cron)",
        description="Mark running operations whose owner process is gone as failed, then delete operations that "
        "finished more than the retention ago, with their items, in short transactions.",
    )
    parser.add_argument(
        "--older-than", type=duration, default=None, metavar="D",
        help="retention: purge what finished before now - D (90s, 30m, 1h, 7d; default $TRACKER_RETENTION or 1h)",
    )
    parser.add_argument("--dry-run", action="store_true", help="count what would be purged; change nothing")
    parser.add_argument(
        "--busy-timeout", type=duration, default=None, metavar="D",
        help="how long each step waits for a busy database before retrying (default 30s; 3 tries, then exit 1)",
    )
    add_db_flag(parser)
    add_json_flag(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    engine = open_engine(settings, create=False)
    try:
        summary = reap(engine, settings, args.older_than, args.dry_run, busy_timeout_s=args.busy_timeout)
    finally:
        engine.dispose()
    if args.json:
        p = summary.purge
        print_json(
            {
                "dry_run": p.dry_run,
                "operations": p.operations,
                "items": p.items,
                "orphans_failed": summary.orphans_failed,
                "orphans_resumable": summary.orphans_resumable,
                "cutoff": iso(p.cutoff),
                "seconds": round(p.seconds, 3),
                "chunks": p.chunks,
                "checkpoint": p.checkpoint,
            }
        )
    else:
        print(summary.line(), flush=True)
    return 0
