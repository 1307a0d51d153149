"""The wheel carries every package of the source tree, and the migrations (as tracker._migrations); installed
from it into a fresh venv, `tracker demo` runs outside any checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import tomllib
import zipfile
from pathlib import Path

from .conftest import PYTHON, REPO


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


def _run(args: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert result.returncode == 0, f"{args[:4]} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def test_no_source_or_document_holds_a_merge_conflict_marker() -> None:
    """A merge whose conflict was committed unresolved (the README once was) shows here, not to a reader."""
    marked = []
    for pattern in ("*.md", "tracker/**/*.py", "tests/**/*.py", "scripts/**/*.py", "migrations/**/*.py", ".ci/*"):
        for path in REPO.glob(pattern):
            if "node_modules" in path.parts or not path.is_file():
                continue
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
                if line.startswith(("<<<<<<< ", ">>>>>>> ")):
                    marked.append(f"{path.relative_to(REPO)}:{number}")
    assert marked == []


def test_the_wheel_runs_the_demo_from_a_fresh_venv(tmp_path: Path) -> None:
    started = time.monotonic()
    # Build from a copy: pip builds in the source tree and would leave build/ and tracker.egg-info in the checkout.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("tracker", "migrations"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    _run([PYTHON, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(source)], timeout=300)
    (wheel,) = (tmp_path / "dist").glob("tracker-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "tracker/testing/fake_upstream.py", "tracker/_migrations/env.py", "tracker/_migrations/script.py.mako",
        "tracker/_migrations/versions/0001_initial.py",
    } <= names
    assert not [n for n in names if n.startswith(("tests/", "scripts/", "migrations/"))]

    # A venv that sees nothing of this one (no --system-site-packages): pip resolves the wheel's dependencies.
    venv = tmp_path / "venv"
    _run([PYTHON, "-m", "venv", "--without-pip", str(venv)], timeout=120)
    # --no-compile: byte-compiling every dependency was 60% of the install's CPU, and is not what this tests.
    install = [PYTHON, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-compile"]
    _run([*install, str(wheel)], timeout=600)

    elsewhere = tmp_path / "elsewhere"  # outside the checkout, so nothing of it can be imported by accident
    elsewhere.mkdir()
    db = tmp_path / "demo.db"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(TRACKER_DB=str(db), COLUMNS="200")  # a wide console: rich wraps at 80 columns when not on a tty
    where = _run(
        [str(venv / "bin" / "python"), "-c", "import tracker.db; print(tracker.db.migrations_dir())"],
        timeout=60, cwd=elsewhere, env=env,
    )
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout
    demo = _run([str(venv / "bin" / "tracker"), "demo", "--rows", "6"], timeout=180, cwd=elsewhere, env=env)
    lines = demo.stdout.splitlines()
    for expected in (
        f"tracker demo  database sqlite:///{db}",
        "SIGKILL server A",
        "resumed the batch",
        "get_batch_status (answered by server B):",
        "upstream saw 6 submissions for 6 distinct rows (0 submitted twice)",
        "done in",
    ):
        assert any(expected in line for line in lines), f"{expected!r} not in:\n{demo.stdout}\n{demo.stderr}"
    assert db.is_file()
    print(f"wheel built, installed and its demo run in {time.monotonic() - started:.1f}s")
