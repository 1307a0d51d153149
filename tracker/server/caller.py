"""Who is calling a tool: the subject of the bearer token an HTTP call was authenticated with (the token verifier
of `tracker serve --http` sets AccessToken.subject), or None over stdio, where whoever can start the process is
trusted with every operation."""

from __future__ import annotations

from mcp.server.auth.middleware.auth_context import get_access_token


def current_subject() -> str | None:
    token = get_access_token()
    return token.subject if token is not None else None
