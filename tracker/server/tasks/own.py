"""tracker's own long tools as tasks, for a client that declared the extension (others see them unchanged)."""

from __future__ import annotations

from ...settings import Settings
from .policy import TaskPolicy


def own_policies(settings: Settings) -> dict[str, TaskPolicy]:
    # run_grid answers inline as it always has while its run is quick; one still running after a short wait becomes
    # a task, whose result is the run's end. run_grid_batch is a task at once; its result is the batch's summary.
    return {
        "run_grid": TaskPolicy("optional", sync_wait_s=min(5.0, settings.sync_wait_s)),
        "run_grid_batch": TaskPolicy("optional"),
    }
