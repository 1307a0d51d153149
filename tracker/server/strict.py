"""Strict arguments for every tool tracker adds to a server (CONTRACTS.md section 4): a tool takes exactly the
arguments its input schema names. An unknown argument (a misspelt filter or idempotency key) and a missing
required one are refused before anything runs, each with one line that names the argument and never repeats a
value; the schema says `additionalProperties: false`.

The check lives on the Tool object, not on one server class, so a host server that mounts tracker's tools gets it
too. Pydantic's own validation stays behind it as a safety net, but its text (multi-line, a URL, the values of the
other arguments) never reaches the caller."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools import Tool
from mcp.types import ToolAnnotations
from pydantic import PlainValidator, ValidationError

from ..limits import ID_CHARS

# Parameters take any JSON value unchanged (no coercion): each tool checks its values (tracker/checks.py) and names
# what is wrong in one line; the JSON schema still tells the model the type.
AS_GIVEN = PlainValidator(lambda value: value)
ID_SCHEMA: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": ID_CHARS}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema of an optional argument whose check takes an explicit null as omitted (clients send null for
    optional fields): anyOf the value's schema or null, never a ["string", "null"] type array."""
    return {"anyOf": [schema, {"type": "null"}]}
NAMES_SHOWN = 5  # unknown arguments named in one message; the rest are counted
NAME_CHARS = 40  # an unknown argument's name is the caller's text: quoted, escaped and cut to this


def _quoted(name: str) -> str:
    """A caller's argument name on one line: JSON-quoted (newlines and controls escaped), cut if long."""
    return json.dumps(name if len(name) <= NAME_CHARS else name[:NAME_CHARS] + "...")


def _listed(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def argument_problem(tool: str, schema: dict[str, Any], arguments: dict[str, Any]) -> str | None:
    """What is wrong with the argument names of a call (one line), or None. Values are not looked at here: the
    tool checks them itself (tracker/checks.py)."""
    known = list(schema.get("properties", {}))
    unknown = [name for name in arguments if name not in known]
    if unknown:
        shown = ", ".join(_quoted(name) for name in unknown[:NAMES_SHOWN])
        more = f" and {len(unknown) - NAMES_SHOWN} more" if len(unknown) > NAMES_SHOWN else ""
        takes = f"it takes {', '.join(known)}" if known else "it takes no arguments"
        noun = "argument" if len(unknown) == 1 else "arguments"
        return f"unknown {noun} {shown}{more} for {tool}; {takes}"
    missing = [name for name in schema.get("required", []) if name not in arguments]
    if missing:
        return f"{_listed(missing)} {'is' if len(missing) == 1 else 'are'} required"
    return None


class StrictTool(Tool):
    """A Tool that refuses unknown and missing arguments by name before validating or running anything."""

    async def run(self, arguments: dict[str, Any], context: Any, convert_result: bool = False) -> Any:
        problem = argument_problem(self.name, self.parameters, arguments)
        if problem is not None:
            raise ToolError(f"Error executing tool {self.name}: {problem}")  # worded as the SDK words ToolError
        try:
            return await super().run(arguments, context, convert_result)
        except ToolError as exc:
            if not isinstance(exc.__cause__, ValidationError):
                raise
            # Not expected (the parameters take any value and the tool checks it), but if pydantic refuses
            # something, name the fields only: its text would repeat the caller's values.
            fields = sorted({str(error["loc"][0]) for error in exc.__cause__.errors() if error["loc"]})
            raise ToolError(f"Error executing tool {self.name}: invalid {', '.join(fields) or 'arguments'}") from None


def describe(fn: Callable[..., Any], values: Mapping[str, str] | None = None) -> str:
    """A tool's description: its docstring on one line, each <placeholder> replaced by its value."""
    description = " ".join((fn.__doc__ or "").split())
    for placeholder, value in (values or {}).items():
        description = description.replace(placeholder, value)
    return description


def add_strict_tool(
    server: MCPServer, fn: Callable[..., Any], name: str, description: str, annotations: ToolAnnotations
) -> None:
    """server.add_tool(fn, ...), but the tool is a StrictTool and its input schema says additionalProperties: false."""
    tool = StrictTool.from_function(fn, name=name, description=description, annotations=annotations)
    tool.parameters["additionalProperties"] = False
    # MCPServer.add_tool only takes a function, and `tools=` only works at construction, while a host server
    # mounts tracker's tools later: so add the built Tool as add_tool would, keeping its duplicate rule.
    server.add_tool(fn, name=name, description=description, annotations=annotations)
    manager = server._tool_manager
    added = manager.get_tool(name)
    if added is not None and added.fn == fn:  # not a host's own tool of that name, which add_tool kept
        manager._tools[name] = tool
