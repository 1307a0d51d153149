"""`tracker serve` (and `python -m tracker`): the MCP stdio server over the database of TRACKER_DB / --db."""

from __future__ import annotations

import argparse

from ..settings import Settings


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="run the MCP stdio server (the status tools)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    # Imported here: the other subcommands need not pay for importing the MCP SDK.
    from ..server import serve

    serve(settings)
    return 0
