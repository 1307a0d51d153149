"""Smoke test of the benchmark entry point: `scripts/bench.py --quick --only 1` runs and prints its figure line.
Nothing about speed is asserted (the machines are shared); the full and quick runs are `./dev bench [--quick]`."""

from __future__ import annotations

import os
import subprocess

import pytest

from .conftest import PYTHON, REPO


def test_quick_figure_1_runs_and_prints_its_line() -> None:
    result = subprocess.run(
        [PYTHON, str(REPO / "scripts" / "bench.py"), "--quick", "--only", "1"],
        capture_output=True, text=True, timeout=120, cwd=str(REPO),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("tracker bench (quick mode)")
    figure = [line for line in lines if line.startswith("1 recording 100,000 items: api ")]
    assert len(figure) == 1, result.stdout
    assert "raw sqlite3 executemany" in figure[0] and "ratio" in figure[0] and "target" in figure[0]


def test_unknown_figure_is_a_usage_error() -> None:
    result = subprocess.run(
        [PYTHON, str(REPO / "scripts" / "bench.py"), "--only", "99"],
        capture_output=True, text=True, timeout=60, cwd=str(REPO),
    )
    assert result.returncode == 2 and "no figure 99" in result.stderr


def test_peers_without_the_bench_extra_says_what_to_install(tmp_path) -> None:
    for name in ("celery", "huey"):  # packages of these names that fail to import, first on the path
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("raise ImportError('not installed')\n")
    result = subprocess.run(
        [PYTHON, str(REPO / "scripts" / "bench.py"), "--peers", "--quick"],
        capture_output=True, text=True, timeout=60, cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stdout == ""
    assert result.stderr.splitlines() == ["bench --peers needs celery and huey: pip install -e '.[bench]'"]


def test_quick_figure_1_runs_on_postgresql_and_other_figures_say_sqlite_only() -> None:
    from tracker.testing.postgres import find_bindir

    if find_bindir() is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's postgresql package")
    result = subprocess.run(
        [PYTHON, str(REPO / "scripts" / "bench.py"), "--quick", "--backend", "postgresql", "--only", "1",
         "--only", "5"],
        capture_output=True, text=True, timeout=180, cwd=str(REPO),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("tracker bench (quick mode), PostgreSQL ") and "fsync on" in lines[0], lines[0]
    figure = [line for line in lines if line.startswith("1 recording 100,000 items on PostgreSQL: api ")]
    assert len(figure) == 1, result.stdout
    assert "raw psycopg COPY" in figure[0] and "ratio api/COPY" in figure[0] and "target" in figure[0]
    assert "5 SQLite only (skipped)" in lines
