"""Every error tracker raises on purpose derives from TrackerError; the edges (MCP tools, CLI) translate them."""


class TrackerError(Exception):
    """Root of tracker's errors: the message is written for the person or model reading it."""


class InvalidInput(TrackerError):
    """An argument was empty, malformed, out of range or of the wrong type; nothing was written."""


class DatabaseUnavailable(TrackerError):
    """The database location cannot be used (missing directory, no permission, not a database, corrupt)."""


class OperationNotFound(TrackerError):
    """No operation has that id (never existed, or purged after retention)."""


class OperationClosed(TrackerError):
    """The operation is in a terminal state; the write was refused and nothing was applied."""


class OperationCancelled(OperationClosed):
    """The operation was cancelled; the worker doing it should stop."""


class DuplicateRun(TrackerError):
    """A run with that idempotency_key or request_id, or for that row of its batch, is already recorded."""


class UpstreamError(TrackerError):
    """The upstream HTTP API failed; carries the HTTP status (if any) and a short excerpt of the body."""

    def __init__(self, message: str, status_code: int | None = None, body_excerpt: str = "") -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body_excerpt = body_excerpt


class UpstreamOutcomeUnknown(UpstreamError):
    """A submission may have reached the upstream but no answer came back (timeout, dropped connection);
    it is not resubmitted, because a second submission would run and bill the row twice."""
