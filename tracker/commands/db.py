"""`tracker db upgrade`, `tracker db current` and `tracker db backup`: the schema and the file, for operators."""

from __future__ import annotations

import argparse
import sys

from ..backup import backup_sqlite, is_sqlite
from ..db import current_revision, describe, head_revision, open_engine, upgrade_to_head
from ..settings import Settings
from ._operator import add_db_flag

# Exit status of `db backup` on PostgreSQL: not a failure of the database, a request this command does not serve.
EXIT_USE_PG_DUMP = 2


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("db", help="show or upgrade the database schema, or back the database up")
    actions = parser.add_subparsers(dest="db_action", required=True)
    upgrade = actions.add_parser("upgrade", help="upgrade the schema to the newest revision (creates the database)")
    upgrade.set_defaults(run=run)
    actions.add_parser("current", help="print the schema revision and the newest one").set_defaults(run=run)
    backup = actions.add_parser(
        "backup", help="copy a live SQLite database, consistently, to DEST (mode 0600)",
        description="A consistent copy of the SQLite database while other processes keep writing to it, through "
        "SQLite's online backup API (never cp a live database file). For PostgreSQL use pg_dump.",
    )
    backup.add_argument("dest", metavar="DEST", help="the file to write; must not exist unless --force")
    backup.add_argument("--force", action="store_true", help="replace DEST if it exists")
    add_db_flag(backup)
    backup.set_defaults(run=run_backup)


def run(args: argparse.Namespace, settings: Settings) -> int:
    # upgrade makes the database; current only reads one that exists
    engine = open_engine(settings, migrate=False, create=args.db_action == "upgrade")
    try:
        if args.db_action == "upgrade":
            before = current_revision(engine)
            upgrade_to_head(engine)
            print(f"{describe(settings.db)}: {before or 'empty'} -> {current_revision(engine)}")
        else:
            current, head = current_revision(engine), head_revision()
            state = "up to date" if current == head else "upgrade needed"
            print(f"{describe(settings.db)}: revision {current or 'none'} (head {head}, {state})")
    finally:
        engine.dispose()
    return 0


def run_backup(args: argparse.Namespace, settings: Settings) -> int:
    if not is_sqlite(settings):
        print("tracker: db backup copies SQLite files; back up PostgreSQL with pg_dump "
              "(e.g. pg_dump --format=custom --file=tracker.dump DBNAME)", file=sys.stderr)
        return EXIT_USE_PG_DUMP
    print(backup_sqlite(settings, args.dest, force=args.force).line())
    return 0
