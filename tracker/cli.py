"""The `tracker` command: builds Settings once from the environment and flags, then runs one subcommand.
Each subcommand lives in tracker/commands/<name>.py with add_parser(subparsers) and run(args, settings) -> int."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from sqlalchemy.exc import SQLAlchemyError

from .db import describe, unavailable
from .errors import TrackerError
from .settings import Settings

# Subcommand modules under tracker.commands; each registers its own parsers.
COMMAND_MODULES = ["demo", "db", "serve", "token", "reap", "inspect"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one usage line and exit 2, never a traceback
        self.print_usage(sys.stderr)
        print(f"tracker: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser(default_command: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(prog="tracker", description="Durable status for long-running MCP work.")
    parser.add_argument("--db", help="database path or SQLAlchemy URL (default: $TRACKER_DB, else a per-user data path)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail to stderr")
    subparsers = parser.add_subparsers(dest="command", required=default_command is None, parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"tracker.commands.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None, default_command: str | None = None) -> int:
    parser = build_parser(default_command)
    args = parser.parse_args(argv)
    if args.command is None:  # no subcommand given: run the default one with the same options
        args = parser.parse_args([*(sys.argv[1:] if argv is None else argv), str(default_command)])
    # stdout may be the MCP protocol: logs always go to stderr.
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    # httpcore's DEBUG log prints every header, so an upstream echoing X-API-KEY would put the key in the log.
    logging.getLogger("httpcore").setLevel(max(logging.INFO, logging.getLogger().level))
    settings: Settings | None = None
    try:
        settings = Settings.from_env(db=args.db)
        return int(args.run(args, settings) or 0)
    except TrackerError as exc:
        print(f"tracker: {exc}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:  # a driver error no layer below translated: said the same way as theirs
        where = describe(settings.db) if settings is not None else "(not configured)"
        print(f"tracker: {unavailable(where, exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
