"""Every error tracker raises on purpose, in one tree; the edges (MCP tools, CLI) translate them to one line.

    TrackerError                  root: catch this for "anything tracker refused or could not do"
    ├── InvalidInput              a bad argument; nothing was written
    ├── DatabaseUnavailable       the database cannot be used or a driver call failed (tracker.db.database_errors)
    │   └── NothingSent           ... before a request left: nothing was written or sent, so it can be tried again
    ├── OperationNotFound         no operation has that id
    ├── OperationClosed           the operation is terminal; the write was refused
    │   └── OperationCancelled    ... because it was cancelled: the worker should stop
    ├── ToolCallError             an MCP tool answered an error (the test kit's client, tracker.testing.client)
    ├── DuplicateRun              a run with that idempotency_key, request_id or batch row already exists
    └── UpstreamError             the upstream HTTP API failed (status_code, body_excerpt)
        └── UpstreamOutcomeUnknown  a submission may have reached it, but no answer came back

Not in the tree, because no caller sees them: tracker.postgres.NoAnswer is a psycopg OperationalError (the driver
layer's own, which SQLAlchemy wraps and database_errors translates), and the store's private control-flow signals
(names starting with _)."""


class TrackerError(Exception):
    """Root of tracker's errors: the message is written for the person or model reading it."""


class InvalidInput(TrackerError):
    """An argument was empty, malformed, out of range or of the wrong type; nothing was written."""


class DatabaseUnavailable(TrackerError):
    """The database location cannot be used (missing directory, no permission, not a database, corrupt), or a
    call to it failed (locked, unreachable, timed out)."""


class NothingSent(DatabaseUnavailable):
    """A database error before a request to the upstream left: nothing was written or sent, so it can be tried
    again (a batch row goes back in the queue)."""


class OperationNotFound(TrackerError):
    """No operation has that id (never existed, or purged after retention)."""


class OperationClosed(TrackerError):
    """The operation is in a terminal state; the write was refused and nothing was applied."""


class OperationCancelled(OperationClosed):
    """The operation was cancelled; the worker doing it should stop."""


class DuplicateRun(TrackerError):
    """A run was not inserted because one already holds its idempotency_key or request_id, or its batch's
    row_number; nothing was written."""


class UpstreamError(TrackerError):
    """The upstream HTTP API failed; carries the HTTP status (if any) and a short excerpt of the body."""

    def __init__(self, message: str, status_code: int | None = None, body_excerpt: str = "") -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body_excerpt = body_excerpt


class UpstreamOutcomeUnknown(UpstreamError):
    """A submission may have reached the upstream but no answer came back (timeout, dropped connection);
    it is not resubmitted, because a second submission would run and bill the row twice."""


class ToolCallError(TrackerError):
    """An MCP tool answered an error, seen by tracker.testing.client (the message is the tool's name and its
    error text)."""
