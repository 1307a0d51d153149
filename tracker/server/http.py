"""`tracker serve --http HOST:PORT`: the server object of stdio (ServedDatabase.build_server(): every tool, the
reaper, the run pollers, the database-open gate) over the SDK's Streamable HTTP transport at /mcp, under uvicorn.

- Stateless (a fresh transport per request, no session id), so several processes behind one load balancer on one
  database act as one server: any process answers any request, and what a request needs lives in the database.
  Answers are SSE streams (json_response=False): a sync run_grid's progress notifications reach the caller, and
  sse-starlette's keep-alive pings keep a proxy from timing out a call that waits 50 s. GET /mcp (a stream for
  server-initiated messages, of which a stateless server has none) is 405, which the spec allows and clients
  expect; held open, it would pin a concurrency slot and stall every graceful shutdown.
- Authentication: bearer tokens from the tokens file (tracker/tokens.py), checked by the SDK's bearer middleware
  through `TokenFileVerifier`; AccessToken.subject (and client_id) is the token's subject, which
  caller.current_subject() reads. No protected-resource metadata (RFC 9728) is served: it must name an
  authorization server, and tracker's tokens come from `tracker token new`, not from one. Without a tokens file,
  only a loopback address may be bound, and every caller is trusted as over stdio (subject None).
- Transport safety: Host and Origin checked against loopback names, the bound address and the allowed hosts (DNS
  rebinding); a body over HTTP_BODY_BYTES is 413; a subject with TRACKER_HTTP_CONCURRENCY requests in flight gets 429
  with Retry-After; every error answer is one line of JSON, logged as one line on stderr, never with a token or a
  stack trace (a traceback goes to the log only). TLS is the reverse proxy's job.
- SIGTERM: the listening socket closes, calls in flight get up to TRACKER_HTTP_SHUTDOWN_GRACE to finish, then the
  lifespan hands background work over as a stdio server's does (runs in flight marked interrupted, batches stay
  resumable) and the process exits 0."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import signal
import socket
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import uvicorn
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from sse_starlette.sse import AppStatus
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import InvalidInput
from ..limits import HTTP_BODY_BYTES, HTTP_RETRY_AFTER_S
from ..settings import Settings
from ..tokens import TokenFile, token_hash
from .app import ServedDatabase
from .tasks import TrackerTasks

log = logging.getLogger(__name__)

MCP_PATH = "/mcp"
DEFAULT_HOST = "127.0.0.1"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
_HOST_NAME = re.compile(r"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")
_SAFE_TEXT = re.compile(r"[ -~]{1,200}")  # a short printable line: the SDK's and Starlette's own fixed messages


# -- where to listen -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listen:
    host: str  # as given (brackets of an IPv6 address removed)
    port: int
    family: socket.AddressFamily
    address: tuple[Any, ...]  # the sockaddr to bind

    @property
    def where(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        return ipaddress.ip_address(self.address[0]).is_loopback

    def url(self, port: int) -> str:
        host = f"[{self.address[0]}]" if self.family == socket.AF_INET6 else self.address[0]
        return f"http://{host}:{port}{MCP_PATH}"


def parse_listen(text: str) -> Listen:
    """'HOST:PORT', '[::1]:PORT', ':PORT' or 'PORT' (host 127.0.0.1); the host is resolved here."""
    host, colon, port_text = text.strip().rpartition(":")
    if not colon:
        host, port_text = "", text.strip()
    if host.startswith("[") != host.endswith("]") or host.count("[") > 1:
        raise InvalidInput("--http takes HOST:PORT; an IPv6 address goes in brackets, e.g. [::1]:8080")
    host = host.strip("[]") or DEFAULT_HOST
    if not port_text.isdigit() or int(port_text) > 65535:
        raise InvalidInput("--http takes HOST:PORT with a port from 0 to 65535 (0: any free port), e.g. 127.0.0.1:8080")
    port = int(port_text)
    try:
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV
        )[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise InvalidInput(f"--http: cannot resolve host {host[:100]!r}: {getattr(exc, 'strerror', exc)}") from None
    return Listen(host, port, family, address)


def bind(listen: Listen) -> socket.socket:
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted sockets whose protocol says TCP, and without it
    # Nagle's algorithm meets the client's delayed ACK: ~40 ms on every request of a kept-alive connection.
    sock = socket.socket(listen.family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(listen.address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise InvalidInput(f"cannot listen on {listen.where}: {exc.strerror}") from None
    return sock


def allowed_hosts(settings: Settings, listen: Listen) -> list[str]:
    """Host header values to accept: loopback names, the bound address unless it is a wildcard, and the allowed hosts
    of the settings (a reverse proxy's public name); each with any port or none."""
    for name in settings.http_allowed_hosts:
        if not _HOST_NAME.fullmatch(name) or len(name) > 255:
            raise InvalidInput(
                f"allowed host {name[:100]!r} is not a host name (TRACKER_HTTP_ALLOWED_HOSTS / --allowed-host take "
                "names such as tracker.example.com, or [::1]:8443)"
            )
    names = list(LOOPBACK_NAMES)
    bound = ipaddress.ip_address(listen.address[0])
    if not bound.is_unspecified:
        names.append(f"[{bound}]" if bound.version == 6 else str(bound))
    names += settings.http_allowed_hosts
    hosts: list[str] = []
    for name in dict.fromkeys(names):
        hosts += [name] if re.search(r":\d+$", name) and not name.endswith("]") else [name, f"{name}:*"]
    return hosts


def transport_security(hosts: list[str]) -> TransportSecuritySettings:
    origins = [f"{scheme}://{host}" for host in hosts for scheme in ("http", "https")]
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins)


# -- authentication ------------------------------------------------------------------------------------------------


class TokenFileVerifier:
    """The SDK's TokenVerifier over the tokens file: a token is good while a line of the file holds its hash."""

    def __init__(self, tokens: TokenFile) -> None:
        self.tokens = tokens

    async def verify_token(self, token: str) -> AccessToken | None:
        subject = self.tokens.subject_of(token)
        if subject is None:
            return None
        # `token` carries the hash: the secret itself is kept nowhere past this call.
        return AccessToken(token=token_hash(token), client_id=subject, scopes=[], subject=subject)


def _subject(scope: Scope) -> str | None:
    user = scope.get("user")
    return user.access_token.subject if isinstance(user, AuthenticatedUser) else None


# -- the ASGI layers around the SDK's app --------------------------------------------------------------------------


def error_body(status: int, message: str) -> bytes:
    """One line of JSON, in the shape the SDK's 401 has (RFC 6750's error and error_description)."""
    code = re.sub(r"\W+", "_", HTTPStatus(status).phrase.lower()).strip("_")
    return json.dumps({"error": code, "error_description": message}).encode()


async def send_error(send: Send, status: int, message: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = error_body(status, message)
    start = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


class PerSubjectLimit:
    """At most `limit` requests of one subject in flight in this process; the next gets 429 with Retry-After. Sits
    inside the SDK's authentication middleware, so the subject is the verified one. Without a tokens file every
    caller is one subject; with one, a request without a good token passes on to its 401 uncounted."""

    def __init__(self, app: ASGIApp, limit: int, authenticated: bool) -> None:
        self.app = app
        self.limit = limit
        self.authenticated = authenticated
        self.in_flight: Counter[str] = Counter()  # one event loop: no lock needed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        subject = _subject(scope)
        if scope["type"] != "http" or (subject is None and self.authenticated):
            await self.app(scope, receive, send)
            return
        key = subject or ""
        if self.in_flight[key] >= self.limit:
            message = (
                f"{self.limit} requests of this caller are in flight already (TRACKER_HTTP_CONCURRENCY); "
                f"retry after {HTTP_RETRY_AFTER_S} s"
            )
            await send_error(send, 429, message, [(b"retry-after", str(HTTP_RETRY_AFTER_S).encode())])
            return
        self.in_flight[key] += 1
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                self.in_flight[key] -= 1
                if not self.in_flight[key]:
                    del self.in_flight[key]

        async def send_then_release(message: Message) -> None:
            await send(message)
            # The answer's last byte is out: the client may send its next request now, before this app returns
            # (a streamed answer is wound down after it), and that request must not find this one still counted.
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                release()

        try:
            await self.app(scope, receive, send_then_release)
        finally:
            release()


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


class Edge:
    """The outermost layer: every error answer is one line of JSON (Starlette's and the transport's plain-text ones
    are rewritten, keeping their headers), an exception is a 500 of the same shape with its traceback in the log
    only, GET /mcp is 405, and each error is one log line: status, method, path, peer, subject, reason."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == MCP_PATH and scope["method"] == "GET":
            message = "this server is stateless: it opens no stream for server messages; POST requests to /mcp"
            await send_error(send, 405, message, [(b"allow", b"POST")])
            self._log(scope, 405, message)
            return
        status = 0
        detail = ""  # the message of a rewritten error, for the log line
        held: dict[str, Any] | None = None  # a plain-text error's start, while its body is read
        chunks: list[bytes] = []

        async def shaped(message: Message) -> None:
            nonlocal status, held, detail
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message.get("headers", [])
                content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"")
                if status >= 400 and not content_type.startswith(b"application/json"):
                    held = message
                    return
            elif message["type"] == "http.response.body" and held is not None:
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                text = b"".join(chunks).decode("utf-8", "replace").strip()
                detail = text if _SAFE_TEXT.fullmatch(text) else HTTPStatus(status).phrase
                body = error_body(status, detail)
                replaced = (b"content-type", b"content-length")
                kept = [(k, v) for k, v in held.get("headers", []) if k.lower() not in replaced]
                kept += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                held = None
                await send({"type": "http.response.start", "status": status, "headers": kept})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        try:
            await self.app(scope, receive, shaped)
        except Exception:
            log.exception("http: %s %r failed", scope["method"], scope["path"][:100])
            if status == 0:
                status = 500
                await send_error(send, 500, "Internal Server Error")
        if status >= 400:
            self._log(scope, status, detail or self._reason(scope, status))

    @staticmethod
    def _reason(scope: Scope, status: int) -> str:
        if status == 401:  # whether a token came, never which
            presented = _header(scope, b"authorization").lower().startswith("bearer ")
            return "bearer token not accepted" if presented else "no bearer token"
        return HTTPStatus(status).phrase

    @staticmethod
    def _log(scope: Scope, status: int, reason: str) -> None:
        client = scope.get("client")
        peer = f"{client[0]}:{client[1]}" if client else "?"
        subject = _subject(scope)
        who = f" (subject {subject})" if subject else ""
        log.warning("http: %d %s %r from %s%s: %s", status, scope["method"], scope["path"][:100], peer, who, reason)


def build_app(
    database: ServedDatabase, settings: Settings, listen: Listen, tokens: TokenFile | None, url: str
) -> ASGIApp:
    """The ASGI app of `tracker serve --http`: the SDK's Streamable HTTP app of database.build_server(), wrapped."""
    options: dict[str, Any] = {}
    if tokens is not None:
        # issuer_url is required by AuthSettings and used only for OAuth routes and resource metadata, neither of
        # which is served (no resource_server_url, no auth_server_provider); the tokens are issued here.
        options = {
            "auth": AuthSettings(issuer_url=url.removesuffix(MCP_PATH), resource_server_url=None),
            "token_verifier": TokenFileVerifier(tokens),
        }
    server = database.build_server(**options)
    app = server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        stateless_http=True,
        json_response=False,
        max_request_body_size=HTTP_BODY_BYTES,
        transport_security=transport_security(allowed_hosts(settings, listen)),
    )
    # Innermost of the app's middleware, after the SDK's authentication: the limit counts verified subjects.
    limit = Middleware(PerSubjectLimit, limit=settings.http_concurrency, authenticated=tokens is not None)
    app.user_middleware.append(limit)
    return Edge(app)


# -- serving -------------------------------------------------------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn's server, saying once on stderr where it listens (the real port when 0 was asked for)."""

    def __init__(self, config: uvicorn.Config, listening: str) -> None:
        super().__init__(config)
        self.listening = listening

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.should_exit:
            print(self.listening, file=sys.stderr, flush=True)

    def handle_exit(self, sig: int, frame: Any) -> None:
        if not self.should_exit:
            grace = self.config.timeout_graceful_shutdown
            log.warning("tracker serve: %s: finishing the calls in flight (at most %gs), then stopping",
                        signal.Signals(sig).name, grace)
        super().handle_exit(sig, frame)


@dataclass(frozen=True)
class HttpPlan:
    """What `tracker serve --http` will do, checked before anything is opened."""

    listen: Listen
    tokens: TokenFile | None


def plan(settings: Settings, address: str) -> HttpPlan:
    """Check the address, the tokens file and the allowed hosts; InvalidInput (one line) refuses the start."""
    listen = parse_listen(address)
    tokens = TokenFile(settings.http_tokens) if settings.http_tokens else None
    if tokens is None and not listen.is_loopback:
        raise InvalidInput(
            f"refusing to serve on {listen.where} without a tokens file: set TRACKER_HTTP_TOKENS or "
            "pass --tokens FILE (make one with: tracker token new SUBJECT --tokens FILE), or bind a loopback address"
        )
    allowed_hosts(settings, listen)
    return HttpPlan(listen, tokens)


def serve_http(settings: Settings, chosen: HttpPlan, extra: Callable[[MCPServer, TrackerTasks], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT. A database file that cannot be used stops it at once (DatabaseUnavailable), as
    serve() does; a socket that cannot be bound is InvalidInput."""
    database = ServedDatabase(settings, extra)
    if not database.is_server:
        database.open_tracker()
    try:
        sock = bind(chosen.listen)
        url = chosen.listen.url(sock.getsockname()[1])
        app = build_app(database, settings, chosen.listen, chosen.tokens, url)
        if chosen.tokens is None:
            print(
                "tracker serve: no tokens file: serving unauthenticated on loopback, every local caller is trusted as "
                "over stdio (set TRACKER_HTTP_TOKENS or --tokens to require bearer tokens)",
                file=sys.stderr, flush=True,
            )
            auth = "unauthenticated"
        else:
            count = len(chosen.tokens)
            auth = f"authenticated: {count} token{'s' if count != 1 else ''} in {chosen.tokens.path}"
        config = uvicorn.Config(
            app,
            log_config=None,  # logging stays as the CLI set it: stderr
            access_log=False,  # Edge logs each error; a line per request would drown them
            lifespan="on",
            ws="none",
            server_header=False,
            timeout_graceful_shutdown=settings.http_shutdown_grace_s,  # type: ignore[arg-type]
        )
        server = _Server(config, f"tracker serve: listening on {url} ({auth})")
        # sse-starlette ends every SSE answer the moment uvicorn sees SIGTERM, which would cut the calls in flight;
        # uvicorn's bounded graceful shutdown decides instead (each answer of a stateless server ends by itself).
        AppStatus.disable_automatic_graceful_drain()
        # uvicorn handles SIGTERM while it serves, then raises it again with the handler it found: this one, so the
        # process ends with exit 0 instead of dying by the signal, and a SIGTERM before it serves stops it too.
        previous = signal.signal(signal.SIGTERM, lambda *_: setattr(server, "should_exit", True))
        try:
            asyncio.run(server.serve(sockets=[sock]))
        finally:
            signal.signal(signal.SIGTERM, previous)
            sock.close()
    finally:
        database.close()
