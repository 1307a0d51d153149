"""Smoke test of the benchmark entry point: `scripts/bench.py --quick --only 1` runs and prints its figure line.
Nothing about speed is asserted (the machines are shared); the full and quick runs are `./dev bench [--quick]`."""

from __future__ import annotations

import os
import subprocess

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
