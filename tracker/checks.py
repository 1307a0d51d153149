"""The argument checks every edge shares (library calls, MCP tools, the runs service): each raises InvalidInput with
one line that names the parameter and never repeats its value. Bounds come from limits.py."""

from __future__ import annotations

from typing import Any

from . import limits
from .errors import InvalidInput

_JSON_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}


def type_name(value: Any) -> str:
    """The JSON name of a value's type, as a caller sending JSON knows it."""
    return "null" if value is None else _JSON_NAMES.get(type(value), type(value).__name__)


def require_text(value: Any, name: str, max_chars: int = limits.ID_CHARS, hint: str = "") -> str:
    """A non-blank string of at most max_chars characters without NUL (PostgreSQL text cannot hold one, so every
    backend refuses it alike). Returned as given: ids are compared exactly."""
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string, not {type_name(value)}")
    if not value.strip():
        raise InvalidInput(f"{name} must not be empty")
    if len(value) > max_chars:
        raise InvalidInput(f"{name} is longer than {max_chars} characters ({len(value)}){hint}")
    if "\x00" in value:
        raise InvalidInput(f"{name} contains a NUL character{hint}")
    return value


def optional_text(value: Any, name: str, max_chars: int = limits.ID_CHARS) -> str | None:
    return None if value is None else require_text(value, name, max_chars)


def optional_subject(value: Any, name: str = "subject") -> str | None:
    """An authenticated caller's subject (its token's), as an operation records it; None for no caller."""
    return optional_text(value, name, limits.SUBJECT_CHARS)


def require_id(value: Any, name: str) -> str:
    """An operation or request id."""
    return require_text(value, name, limits.ID_CHARS, hint="; pass the id as returned")


def operation_type(value: Any, name: str = "operation_type") -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{name} must be a non-empty string such as 'update', 'delete' or 'import'")
    return require_text(value, name, limits.OPERATION_TYPE_CHARS).strip()


def optional_operation_type(value: Any, name: str = "operation_type") -> str | None:
    return None if value is None else operation_type(value, name)


def optional_choice(value: Any, name: str, choices: tuple[str, ...]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value not in choices:
        raise InvalidInput(f"{name} must be one of {', '.join(choices)} (or omitted)")
    return value


def require_count(value: Any, name: str, low: int, high: int) -> int:
    """A whole number from low to high (a JSON boolean is not one)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"{name} must be a whole number from {low} to {high}")
    return value


def require_limit(value: Any, name: str, high: int, default: int) -> int:
    """A page size: omitted means the default."""
    return default if value is None else require_count(value, name, 1, high)
