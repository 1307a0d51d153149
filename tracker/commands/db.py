"""`tracker db upgrade` and `tracker db current`: the schema, for operators."""

from __future__ import annotations

import argparse

from ..db import current_revision, describe, head_revision, open_engine, upgrade_to_head
from ..settings import Settings


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("db", help="show or upgrade the database schema")
    actions = parser.add_subparsers(dest="db_action", required=True)
    actions.add_parser("upgrade", help="upgrade the schema to the newest revision").set_defaults(run=run)
    actions.add_parser("current", help="print the schema revision and the newest one").set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    engine = open_engine(settings, migrate=False)
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
