"""The wheel carries every package of the source tree, and the migrations (as tracker._migrations)."""

from __future__ import annotations

import tomllib

from .conftest import REPO


def test_every_subpackage_is_listed_for_the_wheel() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {
        ".".join(init.parent.relative_to(REPO).parts) for init in (REPO / "tracker").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert on_disk <= listed, f"add to [tool.setuptools] packages: {sorted(on_disk - listed)}"
    assert config["package-dir"]["tracker._migrations"] == "migrations"
    assert {"tracker._migrations", "tracker._migrations.versions"} <= listed
    assert (REPO / "migrations" / "env.py").is_file() and (REPO / "migrations" / "versions" / "__init__.py").is_file()
