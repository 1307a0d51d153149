"""tracker: durable status for the long-running work of MCP servers."""

from .api import Tracker
from .errors import (
    DatabaseUnavailable,
    DuplicateRun,
    InvalidInput,
    OperationCancelled,
    OperationClosed,
    OperationNotFound,
    TrackerError,
    UpstreamError,
)
from .records import ItemRecord, OperationRecord
from .recording import BatchHandle
from .settings import Settings

__all__ = [
    "BatchHandle",
    "DatabaseUnavailable",
    "DuplicateRun",
    "InvalidInput",
    "ItemRecord",
    "OperationCancelled",
    "OperationClosed",
    "OperationNotFound",
    "OperationRecord",
    "Settings",
    "Tracker",
    "TrackerError",
    "UpstreamError",
]
