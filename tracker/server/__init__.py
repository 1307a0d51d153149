"""The MCP protocol layer: the only package that imports mcp."""

from .app import build_server, mount_status_tools, serve
from .stdio import run_stdio

__all__ = ["build_server", "mount_status_tools", "run_stdio", "serve"]
