"""A minimal MCP stdio server (raw JSON-RPC, no SDK) whose tools/list holds schemas the Inspector's `--strict`
flags, one finding per tool: tests/test_inspector_cli.py checks that tests/inspector_cli.py reads the report it
prints, so the "no warning" test cannot pass by failing to recognise one.

    python unportable_server.py [error]

With `error`, one schema also has a bare `true` where a schema is expected: an error-severity finding."""

from __future__ import annotations

import json
import sys

TOOLS = [
    {
        "name": "nullable_type_array",
        "inputSchema": {"type": "object", "properties": {"cursor": {"type": ["string", "null"]}}},
    },
    {
        "name": "portable",
        "inputSchema": {
            "type": "object",
            "properties": {"cursor": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
            "additionalProperties": False,
        },
    },
]
BOOLEAN_SCHEMA_TOOL = {
    "name": "boolean_schema",
    "inputSchema": {"type": "object", "properties": {"anything": True}},
}


def answer(message: dict, tools: list[dict]) -> dict | None:
    method = message.get("method")
    if "id" not in message:  # a notification (notifications/initialized, ...)
        return None
    if method == "initialize":
        result = {
            "protocolVersion": message["params"]["protocolVersion"],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "unportable", "version": "0"},
        }
    elif method == "tools/list":
        result = {"tools": tools}
    elif method == "ping":
        result = {}
    else:
        return {"jsonrpc": "2.0", "id": message["id"], "error": {"code": -32601, "message": f"no method {method}"}}
    return {"jsonrpc": "2.0", "id": message["id"], "result": result}


def main() -> None:
    tools = TOOLS + ([BOOLEAN_SCHEMA_TOOL] if sys.argv[1:] == ["error"] else [])
    for line in sys.stdin:
        if not line.strip():
            continue
        reply = answer(json.loads(line), tools)
        if reply is not None:
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
