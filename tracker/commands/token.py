"""`tracker token new SUBJECT [--tokens FILE]`: a bearer token for `tracker serve --http`, printed once on stdout;
its hash is appended to the tokens file (tracker/tokens.py)."""

from __future__ import annotations

import argparse
import sys

from ..errors import InvalidInput
from ..settings import Settings
from ..tokens import add_token


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("token", help="make bearer tokens for tracker serve --http")
    actions = parser.add_subparsers(dest="token_command", metavar="{new}", required=True, parser_class=type(parser))
    new = actions.add_parser(
        "new",
        help="make a token for SUBJECT: printed once on stdout, its SHA-256 appended to the tokens file",
        description="Make a random bearer token for SUBJECT, append 'SUBJECT SHA256' to the tokens file (created "
        "mode 0600) and print the token once on stdout. A running `tracker serve --http` accepts it from its next "
        "request. To revoke a token, delete its line.",
    )
    new.add_argument("subject", metavar="SUBJECT", help="who the token is for: 1-64 of A-Z a-z 0-9 . _ @ -")
    new.add_argument("--tokens", metavar="FILE", default=None, help="the tokens file (default $TRACKER_HTTP_TOKENS)")
    new.set_defaults(run=run_new)


def run_new(args: argparse.Namespace, settings: Settings) -> int:
    path = args.tokens or settings.http_tokens
    try:
        if not path:
            raise InvalidInput("no tokens file: pass --tokens FILE or set TRACKER_HTTP_TOKENS")
        token, line = add_token(path, args.subject)
    except InvalidInput as exc:
        print(f"tracker: {exc}", file=sys.stderr)
        return 2
    print(token, flush=True)
    print(
        f"tracker: added a token for {args.subject} to {path} (line {line}); it is shown only now. "
        f"Clients send it as the header: Authorization: Bearer <token>",
        file=sys.stderr,
    )
    return 0
