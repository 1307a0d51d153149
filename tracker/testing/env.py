"""The environment for a child process (`python -m tracker ...`, `python -c ...`) that must import this same
tracker and use a given database."""

from __future__ import annotations

import os
from pathlib import Path

# The directory `tracker` was imported from: a checkout (which has pyproject.toml) or an installation's site-packages.
_IMPORT_ROOT = Path(__file__).resolve().parents[2]


def child_env(db: Path | str, **extra: str) -> dict[str, str]:
    """This process's environment, with TRACKER_DB=db and `extra`. From a checkout, the checkout goes first on
    PYTHONPATH, so the child imports this code rather than another installed copy; an installed tracker is found
    by the child as it is."""
    env = dict(os.environ)
    if (_IMPORT_ROOT / "pyproject.toml").is_file():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_IMPORT_ROOT), env.get("PYTHONPATH", "")]))
    env["TRACKER_DB"] = str(db)
    env.update(extra)
    return env
