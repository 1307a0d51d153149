"""tracker's stdio transport: a line the server cannot parse still gets a JSON-RPC error answer (CONTRACTS.md
section 4). The SDK's stdio_server hands such a line to the session as an exception, which the session drops, so
the client waits for an answer that never comes (a line that is not JSON, or arguments nested ~200 levels deep,
beyond pydantic-core's parser).

Here tracker reads stdin: a line that parses goes to the session as the SDK's reader would send it; one that does
not is answered with an error that names what was wrong and repeats no value from the line (a value may be a
secret), or, when it is a notification or a response (JSON-RPC answers neither), logged to stderr and dropped.
The SDK still serves stdout: its claim of fd 1 keeps stray prints off the wire, and its writer frames every
message; stdin is read in place (the SDK would also point fd 0 at the null device, but nothing in tracker reads
stdin). Bounds: a line longer than STDIO_LINE_BYTES is read in pieces and refused, never held whole; the id of a
refused line is read from its first SCAN_BYTES and last TAIL_BYTES by a scanner that does not recurse."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

import anyio
import anyio.to_thread
import pydantic_core
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server.mcpserver import MCPServer
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from mcp.types import (
    INVALID_REQUEST,
    PARSE_ERROR,
    ErrorData,
    JSONRPCError,
    JSONRPCMessage,
    JSONRPCNotification,
    JSONRPCRequest,
    RequestId,
    jsonrpc_message_adapter,
)
from pydantic import ValidationError

from ..limits import STDIO_LINE_BYTES

if TYPE_CHECKING:
    from mcp.shared._stream_protocols import WriteStream

log = logging.getLogger(__name__)

SCAN_BYTES = 64 * 1024  # of a refused line, where its id is looked for: the start (the Python SDK writes it first)
TAIL_BYTES = 256  # and the end (the TypeScript SDK writes it last); scanning costs ~0.4 ms a KiB, on the loop

# Codes: a line that is not JSON is -32700 Parse error. One whose envelope cannot be read (too deep, not a JSON-RPC
# request, too long) is -32600 Invalid Request even when the fault lies inside params: the transport refuses it
# before any method has seen its params, and -32602 Invalid params is a method's answer to params it read (the
# SDK's session gives that one).

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_STRUCTURE = re.compile(r'["\[\]{}]')  # what changes the depth, and the start of a string, whose brackets do not
_STRING_REST = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_ID_AT_END = re.compile(r'"id"\s*:\s*(-?\d+|"[^"\\]*(?:\\.[^"\\]*)*")\s*}\s*$')  # the top level's last member
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class Envelope:
    """The top-level members of a JSON object; a nested object or array stands as an empty {} or []."""

    members: dict[str, Any]
    complete: bool  # the closing brace was read: no member is missing


@dataclass(frozen=True)
class Refusal:
    """A line that is not served: why (for the log), and its answer (None for a notification or a response)."""

    reason: str
    answer: JSONRPCError | None


@dataclass(frozen=True)
class LongLine:
    """A line over STDIO_LINE_BYTES: only its ends are kept."""

    head: bytes
    tail: bytes


def _skip_whitespace(text: str, pos: int) -> int:
    found = _WHITESPACE.match(text, pos)
    return found.end() if found else pos


def _skip_nested(text: str, pos: int) -> int:
    """The end of the object or array that opens at `pos`, found by counting brackets, so depth costs no stack.
    Raises ValueError where the text ends first."""
    depth = 0
    while (found := _STRUCTURE.search(text, pos)) is not None:
        pos = found.end()
        if found.group() == '"':
            rest = _STRING_REST.match(text, pos)
            if rest is None:
                break
            pos = rest.end()
        elif found.group() in "[{":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return pos
    raise ValueError("cut short")


def read_envelope(text: str) -> Envelope | None:
    """The envelope of the JSON object `text` opens, read as far as `text` goes: a broken or cut text gives the
    members before the break. None if `text` does not open an object."""
    pos = _skip_whitespace(text, 0)
    if not text.startswith("{", pos):
        return None
    members: dict[str, Any] = {}
    pos = _skip_whitespace(text, pos + 1)
    try:
        while text.startswith('"', pos):
            key, pos = _DECODER.raw_decode(text, pos)
            pos = _skip_whitespace(text, pos)
            if not text.startswith(":", pos):
                break
            pos = _skip_whitespace(text, pos + 1)
            if text.startswith(("{", "["), pos):
                members[key], pos = ({} if text[pos] == "{" else []), _skip_nested(text, pos)
            else:  # a string, number or literal: read without recursion
                members[key], pos = _DECODER.raw_decode(text, pos)
            pos = _skip_whitespace(text, pos)
            if not text.startswith(",", pos):
                break
            pos = _skip_whitespace(text, pos + 1)
    except ValueError:  # a break in the JSON, or a cut; JSONDecodeError is one
        return Envelope(members, False)
    return Envelope(members, text.startswith("}", pos))


def _line_envelope(head: bytes, tail: bytes) -> Envelope | None:
    """The envelope read from a line's start; if that stops short of an id, an id that ends the line is added."""
    envelope = read_envelope(head.decode("utf-8", "replace"))
    if envelope is None or envelope.complete or "id" in envelope.members:
        return envelope
    found = _ID_AT_END.search(tail.decode("utf-8", "replace"))
    try:
        last_id = json.loads(found.group(1)) if found is not None else None
    except ValueError:  # an escape JSON does not have
        return envelope
    return envelope if last_id is None else Envelope({**envelope.members, "id": last_id}, False)


def _usable_id(value: object) -> RequestId | None:
    """The id to answer with: a string or an integer (MCP's ids) that can be written back; else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            value.encode("utf-8")  # a lone surrogate could not be written
        except UnicodeEncodeError:
            return None
        return value
    return None


def _refusal(code: int, message: str, envelope: Envelope | None) -> Refusal:
    members = envelope.members if envelope is not None else {}
    if "method" not in members and ("result" in members or "error" in members):
        return Refusal(f"dropped an unreadable response: {message}", None)
    if "method" in members and "id" not in members and envelope is not None and envelope.complete:
        return Refusal(f"dropped an unreadable notification: {message}", None)
    answer = JSONRPCError(jsonrpc="2.0", id=_usable_id(members.get("id")), error=ErrorData(code=code, message=message))
    return Refusal(f"answered an unreadable line: {message}", answer)


def _envelope_problem(exc: ValidationError, envelope: Envelope | None) -> str:
    """What pydantic refused in a parsed line, by field name only (its messages can quote the input)."""
    if envelope is None:
        return "a message must be a JSON object"
    fields = sorted(
        {
            str(error["loc"][1])
            for error in exc.errors(include_url=False, include_input=False, include_context=False)
            if error["loc"][:1] == ("JSONRPCRequest",) and len(error["loc"]) > 1
        }
        & set(JSONRPCRequest.model_fields)
    )
    return f"invalid or missing {', '.join(fields)}" if fields else "not a JSON-RPC 2.0 request"


def refuse(line: bytes, exc: ValidationError) -> Refusal:
    """The refusal of a line the SDK's message adapter refused with `exc`."""
    first = exc.errors(include_url=False, include_input=False)[0]
    if first["type"] == "json_invalid":
        # pydantic-core's parser names the fault and its place, never the input ("expected value at line 1 ...").
        detail = str((first.get("ctx") or {}).get("error", "not JSON"))
        envelope = _line_envelope(line[:SCAN_BYTES], line[-TAIL_BYTES:])
        if "recursion limit" in detail:  # its depth limit (~200): the line may well be JSON, just too deep to read
            return _refusal(INVALID_REQUEST, f"Invalid Request: nested too deeply ({detail})", envelope)
        return _refusal(PARSE_ERROR, f"Parse error: {detail}", envelope)
    try:
        parsed = pydantic_core.from_json(line)
    except ValueError:  # not expected: the adapter parsed this very line
        envelope = _line_envelope(line[:SCAN_BYTES], line[-TAIL_BYTES:])
    else:
        envelope = Envelope(parsed, True) if isinstance(parsed, dict) else None
    return _refusal(INVALID_REQUEST, f"Invalid Request: {_envelope_problem(exc, envelope)}", envelope)


def take(line: bytes | LongLine) -> JSONRPCMessage | Refusal | None:
    """What one line of stdin is: a message for the session, a refusal, or None (a blank line, skipped)."""
    if isinstance(line, LongLine):
        message = f"Invalid Request: the line is longer than {STDIO_LINE_BYTES // 2**20} MiB"
        return _refusal(INVALID_REQUEST, message, _line_envelope(line.head, line.tail))
    if not line or line.isspace():
        return None
    try:
        message = jsonrpc_message_adapter.validate_json(line, by_name=False)
    except ValidationError as exc:
        return refuse(line, exc)
    # A request whose id MCP does not allow (null, a fraction, true) parses as a notification: answer it instead.
    if isinstance(message, JSONRPCNotification) and b'"id"' in line:
        envelope = _line_envelope(line[:SCAN_BYTES], line[-TAIL_BYTES:])
        if envelope is not None and "id" in envelope.members:
            return _refusal(INVALID_REQUEST, "Invalid Request: id must be a string or an integer", envelope)
    return message


async def _lines(stdin: BinaryIO) -> AsyncIterator[bytes | LongLine]:
    while line := await anyio.to_thread.run_sync(stdin.readline, STDIO_LINE_BYTES + 1):
        if len(line) <= STDIO_LINE_BYTES or line.endswith(b"\n"):
            yield line
            continue
        head, tail = line[:SCAN_BYTES], line[-TAIL_BYTES:]
        del line
        while not tail.endswith(b"\n"):
            piece = await anyio.to_thread.run_sync(stdin.readline, STDIO_LINE_BYTES)
            if not piece:
                break
            tail = (tail + piece)[-TAIL_BYTES:]
        yield LongLine(head, tail)


async def _read(
    stdin: BinaryIO,
    inbox: MemoryObjectSendStream[SessionMessage | Exception],
    outbox: WriteStream[SessionMessage],
) -> None:
    try:
        async with inbox:
            async for line in _lines(stdin):
                taken = take(line)
                if isinstance(taken, Refusal):
                    log.warning("stdio: %s", taken.reason)
                    if taken.answer is not None:
                        await outbox.send(SessionMessage(taken.answer))
                elif taken is not None:
                    await inbox.send(SessionMessage(taken))
    except (anyio.ClosedResourceError, anyio.BrokenResourceError):  # the session ended first
        pass


@asynccontextmanager
async def stdio_transport(
    stdin: BinaryIO | None = None,
) -> AsyncIterator[tuple[MemoryObjectReceiveStream[SessionMessage | Exception], WriteStream[SessionMessage]]]:
    """The SDK's stdio_server with tracker's reader: the session's read and write streams."""
    inbox_writer, inbox = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    # An empty stdin for the SDK: its reader ends at once, and only its stdout side is used.
    async with stdio_server(stdin=anyio.wrap_file(io.StringIO())) as (unused, outbox):
        await unused.aclose()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_read, stdin or sys.stdin.buffer, inbox_writer, outbox)
            yield inbox, outbox


async def run_stdio(server: MCPServer) -> None:
    """`server.run_stdio_async()` over stdio_transport. MCPServer has no public way to run over given streams; this
    is what run_stdio_async does with the SDK's transport."""
    lowlevel = server._lowlevel_server
    async with stdio_transport() as (read, write):
        await lowlevel.run(read, write, lowlevel.create_initialization_options())
