"""`tracker serve` (and `python -m tracker`): the MCP server over the database of TRACKER_DB / --db, on stdio, or
over Streamable HTTP with --http HOST:PORT."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from ..errors import InvalidInput
from ..settings import Settings, host_names


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the MCP server (the status tools) on stdio, or over HTTP with --http",
        description="Serve tracker's MCP tools on stdio (the default), or over Streamable HTTP at /mcp with --http.",
    )
    parser.add_argument(
        "--http", metavar="HOST:PORT", default=None,
        help="serve over HTTP at http://HOST:PORT/mcp instead of stdio (host default 127.0.0.1; port 0: any free one)",
    )
    parser.add_argument(
        "--tokens", metavar="FILE", default=None,
        help="bearer tokens file (default $TRACKER_HTTP_TOKENS); required to bind a non-loopback address",
    )
    parser.add_argument(
        "--allowed-host", metavar="NAME", action="append", default=[],
        help="also accept this Host header, e.g. the reverse proxy's public name (repeatable; adds to "
        "$TRACKER_HTTP_ALLOWED_HOSTS)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    # The server modules are imported here: the other subcommands need not pay for importing the MCP SDK.
    if args.http is None:
        if args.tokens is not None or args.allowed_host:
            print("tracker: error: --tokens and --allowed-host apply to --http only", file=sys.stderr)
            return 2
        from ..server import serve

        serve(settings)
        return 0
    from ..server.http import plan, serve_http

    extra_hosts = tuple(name for given in args.allowed_host for name in host_names(given))
    settings = replace(
        settings,
        http_tokens=args.tokens if args.tokens is not None else settings.http_tokens,
        http_allowed_hosts=settings.http_allowed_hosts + extra_hosts,
    )
    try:
        chosen = plan(settings, args.http)
        serve_http(settings, chosen)
    except InvalidInput as exc:  # the address, the tokens file, an allowed host, the socket: a refused start
        print(f"tracker: {exc}", file=sys.stderr)
        return 2
    return 0
