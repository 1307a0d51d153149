"""The MCP protocol layer: the only package that imports mcp."""

from .app import build_server, mount_status_tools, serve

__all__ = ["build_server", "mount_status_tools", "serve"]
