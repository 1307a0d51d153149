"""Remote grid runs: submit, remember, poll, batch, resume. A map of the package:

- requests.py  the checks of run_grid / run_grid_batch arguments (bounds from limits.py)
- upstream.py  the Upstream interface, with a contract per method; http.py speaks it over httpx, memory.py in memory
- ratelimit.py the upstream's rate limit, shared by every process on the database
- submit.py    one run: its row written, then sent; the answer stored (the durability rules are there)
- poll.py      polling runs: the claim, the foreground/background policy of get_run_status, the poll loop's tick
- batches.py   run_grid_batch: the batch row, its worker, and the adopter of orphaned batches
- answers.py   the one answer get_run_status gives, and the stored texts of a run's end
- grids.py     the grid reads (workspace, list, details, curl): checks, shapes, the curl command
- context.py   what the parts share (settings, stores, process, upstream, tasks); tasks.py supervises the tasks
- service.py   RunsService, which wires them and schedules the loops
"""

from .context import OPERATION_TYPE
from .memory import MemoryUpstream
from .service import RunsService
from .upstream import RunRequest, Upstream

__all__ = ["OPERATION_TYPE", "MemoryUpstream", "RunRequest", "RunsService", "Upstream"]
