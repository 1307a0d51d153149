"""The grid read tools: get_workspace_details, list_grids, get_grid_details and get_grid_curl, over a RunsService's
grid reads (tracker/remote/grids.py, which checks the arguments and shapes the answers). With these an agent finds a
grid_id and the input labels run_grid needs without a second server. Each returns its shape from grids.py, so the
SDK publishes an output schema that describes the answer.

rotate_api_key, which the grid server tracker replaces also has, is left out on purpose: it would put a live key
into the model's context."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from pydantic import Field, WithJsonSchema

from .. import limits
from ..remote import RunsService
from ..shapes import GridCurl, GridDetails, GridPage, Workspace
from .status_tools import as_tool_errors
from .run_tools import READS_UPSTREAM
from .strict import AS_GIVEN, ID_SCHEMA, add_strict_tool, describe, nullable

# Never a type array: an optional argument is not required, and one that takes null as omitted says anyOf.
GridId = Annotated[
    str, AS_GIVEN, WithJsonSchema(ID_SCHEMA), Field(description="the grid's id, as list_grids shows it"),
]
Search = Annotated[
    str, AS_GIVEN, WithJsonSchema(nullable({"type": "string", "maxLength": limits.GRID_SEARCH_CHARS})),
    Field(description="only grids whose name contains this text (case-insensitive); omit for all"),
]
Page = Annotated[
    int, AS_GIVEN, WithJsonSchema(nullable({"type": "integer", "minimum": 1, "maximum": limits.GRIDS_MAX_PAGE})),
    Field(description="page number, from 1"),
]
Limit = Annotated[
    int, AS_GIVEN, WithJsonSchema(nullable({"type": "integer", "minimum": 1, "maximum": limits.GRIDS_LIMIT})),
    Field(description=f"grids per page, 1 to {limits.GRIDS_LIMIT}"),
]


class GridTools:
    def __init__(self, runs: RunsService) -> None:
        self.runs = runs  # read at call time: `tracker serve` hands a stand-in until the database is open

    async def get_workspace_details(self) -> Workspace:
        """The BitScale workspace the configured API key belongs to: {id, name, plan, credits: {total, used,
        remaining}, members, ...}, as the upstream sends it. Check credits.remaining before starting many runs
        (each run spends credits). The API key itself is never shown."""
        with as_tool_errors():
            return await self.runs.grids.workspace()

    async def list_grids(
        self, search: Search = "", page: Page = 1, limit: Limit = limits.GRIDS_LIMIT_DEFAULT
    ) -> GridPage:
        """Lists the workspace's grids, to find a grid_id: {grids: [{id, name, description, row_count,
        column_count, ...}], page, limit, total}. search keeps grids whose name contains the text; pages are
        numbered from 1 with <limit_default> grids each by default (at most <limit_max>); when page * limit <
        total there are more. Pass a grid's id to get_grid_details or get_grid_curl to learn its input labels,
        then to run_grid."""
        with as_tool_errors():
            return await self.runs.grids.list_grids(search, page, limit)

    async def get_grid_details(self, grid_id: GridId) -> GridDetails:
        """A grid's details: {id, name, description, row_count, columns: [{id, name, type, is_input, label}],
        ...}, as the upstream sends them. Columns with is_input true are the grid's inputs: their label is the
        key of run_grid's inputs. The other columns are its outputs: their ids are what run_grid's output_columns
        takes. An unknown grid_id is an error (list_grids shows the ids)."""
        with as_tool_errors():
            return await self.runs.grids.grid(grid_id)

    async def get_grid_curl(self, grid_id: GridId) -> GridCurl:
        """How to run a grid outside this chat: {grid_id, grid_name, method, run_url, headers, request_body:
        {mode, inputs: {label: "<value>"}}, input_labels, output_columns: [{id, name, type}], curl}, built from
        the grid's details. curl is a ready-to-paste shell command; it reads the key from the BITSCALE_API_KEY
        environment variable (the key is never shown). Replace each "<value>". To run the grid from here, call
        run_grid with the same inputs instead."""
        with as_tool_errors():
            return await self.runs.grids.grid_curl(grid_id)

    def register(self, server: MCPServer) -> None:
        tools: list[Callable[..., Any]] = [
            self.get_workspace_details, self.list_grids, self.get_grid_details, self.get_grid_curl,
        ]
        values = {"<limit_default>": str(limits.GRIDS_LIMIT_DEFAULT), "<limit_max>": str(limits.GRIDS_LIMIT)}
        for fn in tools:
            add_strict_tool(server, fn, fn.__name__, describe(fn, values), READS_UPSTREAM)


def mount_grid_tools(server: MCPServer, runs_service: RunsService) -> None:
    """Add get_workspace_details, list_grids, get_grid_details and get_grid_curl to `server`, reading the upstream
    grid API of `runs_service` (through its shared rate limit). Run `run_lifespan(runs_service)` as the server's
    lifespan so its HTTP client is closed."""
    GridTools(runs_service).register(server)
