"""Every bound tracker enforces, in one place: the argument checks, the tools' JSON schemas and the messages all
read them from here, so a schema never says one number while a check enforces another.

Widths follow the columns that store the values (models.py and the migrations): a value the check accepts is one
every backend can store."""

from __future__ import annotations

# -- identifiers ---------------------------------------------------------------------------------------------------
ID_CHARS = 128  # any id an argument names: operation ids, request_id, grid_id, source_id, labels, column ids
KEY_CHARS = 256  # idempotency_key (its column's width)
SUBJECT_CHARS = 64  # the authenticated caller's subject an operation carries (its column's width)
OPERATION_TYPE_CHARS = 64
CURSOR_CHARS = 1024

# -- recording -----------------------------------------------------------------------------------------------------
ITEM_ID_CHARS = 1024
ERROR_CHARS = 4000  # a failure's stored error text; longer text is cut here
INT32 = 2**31 - 1  # row_number and total are INTEGER columns: 32 bits on PostgreSQL
MAX_SEQ = 2**63  # item sequence numbers (BIGINT) an after_seq may name

# -- pages ---------------------------------------------------------------------------------------------------------
LIST_LIMIT = 100  # list_operations / Tracker.list: at most this many a page
LIST_LIMIT_DEFAULT = 20
ITEMS_LIMIT = 1000  # get_operation_items / Tracker.items
ITEMS_LIMIT_DEFAULT = 100

# -- remote runs ---------------------------------------------------------------------------------------------------
BATCH_ROWS = 10_000  # rows of one run_grid_batch
BATCH_CONCURRENCY = 16
BATCH_CONCURRENCY_DEFAULT = 4
INPUT_COLUMNS = 200  # entries of one inputs object
INPUT_VALUE_CHARS = 10_000
UPSTREAM_ERROR_CHARS = 500  # an upstream's own failure text, as stored
UPSTREAM_EXCERPT_CHARS = 200  # a body excerpt quoted in an UpstreamError
MAX_RETRY_AFTER_S = 120.0  # a Retry-After longer than this is taken as this

# -- grid reads (get_workspace_details, list_grids, get_grid_details, get_grid_curl) ---------------------------------
GRID_SEARCH_CHARS = 200  # list_grids' search text
GRIDS_LIMIT = 100  # list_grids: at most this many a page (the upstream's own maximum)
GRIDS_LIMIT_DEFAULT = 20
GRIDS_MAX_PAGE = 100_000  # list_grids' page (1-based): far beyond any workspace, still a bounded number

# -- the stdio transport -------------------------------------------------------------------------------------------
STDIO_LINE_BYTES = 32 * 2**20  # one JSON-RPC line; a longer one is read in pieces, refused, and never held whole

# -- the HTTP transport (tracker serve --http) -----------------------------------------------------------------------
# One JSON-RPC message is bounded alike on both transports, so a request stdio serves is served over HTTP too. It
# admits a run_grid_batch of 10,000 rows of up to ~3,300 characters of inputs each (31.7 MiB measured; 10,000 rows
# of 3 labels x 100 characters are 3.4 MiB, over the SDK's 4 MiB default once labels or values grow). The legal
# maximum (10,000 x 200 x 10,000 characters) is ~19 GiB and fits no request on either transport.
HTTP_BODY_BYTES = STDIO_LINE_BYTES
HTTP_CONCURRENCY_DEFAULT = 8  # requests of one subject in flight at once, per process; the next one gets 429
HTTP_RETRY_AFTER_S = 1  # the Retry-After of a 429
SUBJECT_CHARS = 64  # a token's subject: [A-Za-z0-9._@-], 1 to this many characters
