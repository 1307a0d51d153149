"""The grid reads behind get_workspace_details, list_grids, get_grid_details and get_grid_curl: arguments checked
(bounds from limits.py), one upstream read each through the shared rate limit and the upstream client's retries,
answers scrubbed (the API key masked, even when the upstream echoes it) and checked against their shapes.

The answers' shapes are in tracker/shapes.py with every other tool's. An upstream answer is checked against its
shape here and shown as the upstream sent it; one that does not fit is an UpstreamError naming the fields, not a
half-converted answer.

rotate_api_key is left out on purpose: it would put a live key into the model's context."""

from __future__ import annotations

import functools
import json
import shlex
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import TypeAdapter, ValidationError

from .. import limits
from ..checks import require_count, require_id, require_limit, require_text
from ..errors import UpstreamError
from ..shapes import GridCurl, GridDetails, GridPage, OutputColumn, RunBody, Workspace
from .context import RunContext
from .upstream import Upstream

NO_KEY = "BITSCALE_API_KEY is not set: tracker cannot read the workspace or grids of the upstream grid API"
KEY_PLACEHOLDER = "$BITSCALE_API_KEY"  # what get_grid_curl shows instead of the key: the shell fills it in
VALUE_PLACEHOLDER = "<value>"
@functools.cache
def _adapter(shape: type) -> TypeAdapter[Any]:
    return TypeAdapter(shape)


def shaped(answer: Any, shape: type, what: str) -> Any:
    """`answer` unchanged if it fits `shape`; else UpstreamError naming the fields (never their values)."""
    try:
        _adapter(shape).validate_python(answer)
    except ValidationError as exc:
        fields = sorted({".".join(str(part) for part in error["loc"]) or "(the answer)" for error in exc.errors()})
        shown = ", ".join(fields[:5]) + (f" and {len(fields) - 5} more" if len(fields) > 5 else "")
        raise UpstreamError(f"upstream answered {what} in an unexpected shape (check {shown})", status_code=200) from None
    return answer


class GridReads:
    """The four reads over one RunContext's upstream (the HTTP grid API of the settings, or the one given)."""

    def __init__(self, context: RunContext) -> None:
        self.context = context

    async def workspace(self) -> dict[str, Any]:
        upstream = self._upstream()
        return shaped(self.context.scrub(await upstream.workspace()), Workspace, "GET /workspace")

    async def list_grids(self, search: Any = None, page: Any = None, limit: Any = None) -> dict[str, Any]:
        """A page of grids whose name contains `search` (blank or omitted: all)."""
        checked = (
            check_search(search),
            1 if page is None else require_count(page, "page", 1, limits.GRIDS_MAX_PAGE),
            require_limit(limit, "limit", limits.GRIDS_LIMIT, limits.GRIDS_LIMIT_DEFAULT),
        )
        upstream = self._upstream()
        return shaped(self.context.scrub(await upstream.list_grids(*checked)), GridPage, "GET /grids")

    async def grid(self, grid_id: Any) -> dict[str, Any]:
        """The grid's details; UpstreamError (404) when the upstream has no such grid."""
        checked = require_id(grid_id, "grid_id")
        upstream = self._upstream()
        answer = await upstream.grid(checked)
        if answer is None:
            raise UpstreamError(
                "upstream has no such grid_id (HTTP 404); list_grids shows this workspace's grids", status_code=404
            )
        return shaped(self.context.scrub(answer), GridDetails, "GET /grids/{grid_id}")

    async def grid_curl(self, grid_id: Any) -> dict[str, Any]:
        """A curl command that runs the grid on one row, built from its details (one upstream read)."""
        details = await self.grid(grid_id)
        return self.context.scrub(curl_answer(details, self.context.settings.upstream_base))

    def _upstream(self) -> Upstream:
        if not self.context.has_upstream:
            raise UpstreamError(NO_KEY)
        return self.context.upstream


def check_search(value: Any) -> str | None:
    """The caller's search text, sent as given; blank means no filter."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return require_text(value, "search", limits.GRID_SEARCH_CHARS)


def input_labels(details: dict[str, Any]) -> list[str]:
    """The keys of a run's inputs: each input column's label (its name when it has none), in column order."""
    labels = []
    for column in details["columns"]:
        if column.get("is_input") is True:
            label = column.get("label") or column["name"]
            if isinstance(label, str) and label not in labels:
                labels.append(label)
    return labels


def public_base(base_url: str) -> str:
    """The base URL without credentials in it (a curl command is meant to be shown and pasted)."""
    parts = urlsplit(base_url.strip().rstrip("/"))
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def curl_answer(details: dict[str, Any], base_url: str) -> GridCurl:
    labels = input_labels(details)
    run_url = f"{public_base(base_url)}/grids/{quote(details['id'], safe='')}/run"
    body: RunBody = {"mode": "sync", "inputs": {label: VALUE_PLACEHOLDER for label in labels}}
    headers = {"X-API-KEY": KEY_PLACEHOLDER, "Content-Type": "application/json"}
    command = " \\\n  ".join(
        [
            f"curl -sS -X POST {shlex.quote(run_url)}",
            # Double quotes, so the shell expands the variable: the key itself is never in the text.
            f'-H "X-API-KEY: {KEY_PLACEHOLDER}"',
            f"-H {shlex.quote('Content-Type: application/json')}",
            f"-d {shlex.quote(json.dumps(body, ensure_ascii=False))}",
        ]
    )
    outputs: list[OutputColumn] = []
    for column in details["columns"]:
        if column.get("is_input") is not True:
            output: OutputColumn = {"id": column["id"], "name": column["name"]}
            if isinstance(column.get("type"), str):
                output["type"] = column["type"]
            outputs.append(output)
    return {
        "grid_id": details["id"],
        "grid_name": details["name"],
        "method": "POST",
        "run_url": run_url,
        "headers": headers,
        "request_body": body,
        "input_labels": labels,
        "output_columns": outputs,
        "curl": command,
    }
