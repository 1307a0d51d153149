"""Helpers for tracker's tests and scripts: an MCP client over an in-process server or a stdio subprocess."""
