"""Figures P1-P3 (`./dev bench --peers`): tracker against Celery's database result backend and huey's SqliteStorage
on the same three workloads, each library used as its own user would use it (bench_peer_libs.py says how):

    P1  recording a task's item outcomes (10% failures) while another process polls its status every 100 ms
    P2  the status of a finished task read by id among many stored results
    P3  the purge of the stored results (each library's own purge call) while another process keeps recording

Each figure runs its workload through the three libraries in turn, RUNS times (interleaved, so the machine's load
falls on all of them alike), and prints the median (min-max) of the runs, tracker's ratio to each peer within each
run, and the 1-minute load average seen during the figure. The stored results of P2 and P3 are generated once per
library (rows by raw executemany into the schema the library made) and cached beside figure 2's database."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench_common import median_spread, percentile
from bench_data import CACHE_DIR, copy_database, item_counts, status_database
from bench_peer_libs import (
    ERROR,
    LIBRARIES,
    PEERS,
    PROGRESS_EVERY,
    generate_peer_database,
    open_library,
    purge,
    sample_ids,
    stored_count,
    versions,
)
from bench_purge import RECORDING_RATE

RUNS = 3
LIBS_SCRIPT = Path(__file__).resolve().parent / "bench_peer_libs.py"
PEER_GENERATOR_VERSION = 1  # part of the cache key: bump it whenever bench_peer_libs.stored_outcomes changes
POLL_INTERVAL_S = 0.1
WRITER_TASK_ITEMS = 10_000  # P3's recorder starts a new task every this many items


class Load:
    """The 1-minute load average, sampled whenever asked; reported as its range."""

    def __init__(self) -> None:
        self.samples = [os.getloadavg()[0]]

    def sample(self) -> None:
        self.samples.append(os.getloadavg()[0])

    def text(self) -> str:
        return f"load {min(self.samples):.1f}-{max(self.samples):.1f}"


def _spread(runs: list[dict], key: str, fmt: str) -> str:
    return median_spread([run[key] for run in runs], fmt)


def _ratios(per_run: dict[str, list[dict]], key: str, peer: str, invert: bool = False) -> list[float]:
    """tracker's value over the peer's (or the peer's over tracker's), run by run."""
    pairs = zip(per_run["tracker"], per_run[peer])
    return [(p[key] / t[key]) if invert else (t[key] / p[key]) for t, p in pairs]


def _goal(ratios: dict[str, list[float]]) -> str:
    """'met' when tracker's median ratio to every peer is above 1; says in how many runs it was ahead of both."""
    runs = len(next(iter(ratios.values())))
    ahead = sum(all(ratios[peer][n] > 1 for peer in ratios) for n in range(runs))
    met = all(statistics.median(values) > 1 for values in ratios.values())
    return f"{'met' if met else 'MISSED'} (ahead of both in {ahead} of {runs} runs)"


def _child(role: str, name: str, db: Path, stop_file: Path, *args: object, log: Path) -> subprocess.Popen:
    stop_file.unlink(missing_ok=True)
    with log.open("a") as errors:
        process = subprocess.Popen(
            [sys.executable, str(LIBS_SCRIPT), role, name, str(db), str(stop_file), *map(str, args)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True,
        )
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        process.kill()
        raise RuntimeError(f"the {name} {role} did not start (see {log})")
    return process


def _report(process: subprocess.Popen, stop_file: Path) -> dict:
    stop_file.touch()
    out, _ = process.communicate(timeout=300)
    return json.loads(out.strip().splitlines()[-1])


def _remove(db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


# -- P1 recording ---------------------------------------------------------------------------------------------------


def record_once(name: str, workdir: Path, items: int) -> dict:
    db = workdir / f"record-{name}.db"
    _remove(db)
    library = open_library(name, db, role="worker")
    library.status("no-such-task")  # the schema exists (Celery makes it on first use) and the engine is open
    stop_file = workdir / f"stop-reader-{name}"
    reader = _child("reader", name, db, stop_file, POLL_INTERVAL_S, log=workdir / "children.log")
    try:
        task = library.start_task(items)
        assert reader.stdin is not None
        reader.stdin.write(task.id + "\n")
        reader.stdin.flush()
        time.sleep(2 * POLL_INTERVAL_S)  # the reader is polling
        started = time.perf_counter()
        for n in range(items):
            if n % 10 == 9:
                task.failure(ERROR, f"item-{n:07d}", n + 1)
            else:
                task.success(f"item-{n:07d}")
        task.finish()
        elapsed = time.perf_counter() - started
    finally:
        report = _report(reader, stop_file)
        library.close()
    _remove(db)
    failed = items // 10
    return {"rate": items / elapsed, "exact": tuple(report["final"]) == (items - failed, failed), **report}


def figure_p1_recording(workdir: Path, items: int) -> str:
    load = Load()
    runs: dict[str, list[dict]] = {name: [] for name in LIBRARIES}
    for _ in range(RUNS):
        for name in LIBRARIES:
            runs[name].append(record_once(name, workdir, items))
            load.sample()
    parts = []
    for name in LIBRARIES:
        how = {"tracker": "record_success/record_failure",
               "celery": f"update_state every {PROGRESS_EVERY:,} items with the id lists",
               "huey": f"put_data every {PROGRESS_EVERY:,} items"}[name]
        parts.append(
            f"{name} ({how}) {_spread(runs[name], 'rate', ',.0f')} items/s, reader p50"
            f" {_spread(runs[name], 'p50_ms', '.2f')} ms worst {_spread(runs[name], 'worst_ms', '.1f')} ms"
        )
    ratios = {peer: _ratios(runs, "rate", peer) for peer in PEERS}
    exact = all(run["exact"] for name in LIBRARIES for run in runs[name])
    return (
        f"P1 recording {items:,} items (10% failures) while a reader polls every {POLL_INTERVAL_S * 1000:.0f} ms,"
        f" median (min-max) of {RUNS} runs: " + " | ".join(parts)
        + " | tracker items/s over " + ", ".join(f"{p} {median_spread(ratios[p], '.2f')}x" for p in PEERS)
        + f" | exact counts {'all' if exact else 'NO'} | goal ahead of both: {_goal(ratios)}"
        + f" | {load.text()}"
    )


# -- P2 status by id ------------------------------------------------------------------------------------------------


def peer_database(name: str, results: int, items: int, log=print) -> Path:  # noqa: ANN001
    """The library's database of `results` finished tasks holding `items` item outcomes, from the cache when there."""
    version = versions()[name]
    key = f"peer-{name}-{version}-{results}results-{items}items-g{PEER_GENERATOR_VERSION}"
    CACHE_DIR.mkdir(mode=0o700, exist_ok=True)
    path = CACHE_DIR / f"{key}.db"
    if path.exists() and stored_count(name, path) == results:
        return path
    for stale in CACHE_DIR.glob(f"peer-{name}-*-{results}results-{items}items-*"):
        stale.unlink()
    partial = CACHE_DIR / f"{key}.{os.getpid()}.partial"
    started = time.perf_counter()
    generate_peer_database(name, partial, item_counts(results, items))
    for suffix in ("-wal", "-shm"):
        Path(f"{partial}{suffix}").unlink(missing_ok=True)
    os.replace(partial, path)
    log(f"  (generated {path} in {time.perf_counter() - started:.0f} s: {path.stat().st_size / 1e6:,.0f} MB)")
    return path


def databases(results: int, items: int, log=print) -> dict[str, Path]:  # noqa: ANN001
    paths = {"tracker": status_database(results, items, log=log)[0]}
    for name in PEERS:
        paths[name] = peer_database(name, results, items, log=log)
    return paths


def _read_ms(name: str, path: Path, ids: list[str], warm: list[str], role: str, summary: bool = False) -> list[float]:
    library = open_library(name, path, role=role)
    read = library.status
    if summary:  # tracker's lighter read: the operation row alone
        read = library.tracker.summary  # type: ignore[attr-defined]
    try:
        for task_id in warm:  # connection setup and imports are not in the figure
            read(task_id)
        times = []
        for task_id in ids:
            started = time.perf_counter()
            answer = read(task_id)
            times.append((time.perf_counter() - started) * 1000)
            assert answer, task_id
        return times
    finally:
        library.close()


def status_once(name: str, path: Path, ids: list[str], warm: list[str]) -> dict:
    role = "client" if name == "celery" else "worker"  # Celery: a poller outside the worker, as AsyncResult is
    times = _read_ms(name, path, ids, warm, role)
    run = {"p50": percentile(times, 0.5), "p99": percentile(times, 0.99)}
    if name == "celery":  # the same read inside a prefork worker child, which keeps its engine
        run["alt_p50"] = percentile(_read_ms(name, path, ids, warm, "worker"), 0.5)
    if name == "tracker":
        run["alt_p50"] = percentile(_read_ms(name, path, ids, warm, "worker", summary=True), 0.5)
    return run


def figure_p2_status(workdir: Path, results: int, items: int, samples: int, log=print) -> str:  # noqa: ANN001
    paths = databases(results, items, log=log)
    load = Load()
    ids = {name: sample_ids(name, paths[name], samples, seed=2) for name in LIBRARIES}
    warm = {name: sample_ids(name, paths[name], 200, seed=1) for name in LIBRARIES}
    for name in LIBRARIES:  # every sampled result's pages in the OS cache; each measure starts a cold SQLite cache
        _read_ms(name, paths[name], warm[name] + ids[name], [], "worker")
    runs: dict[str, list[dict]] = {name: [] for name in LIBRARIES}
    for _ in range(RUNS):
        for name in LIBRARIES:
            runs[name].append(status_once(name, paths[name], ids[name], warm[name]))
            load.sample()
    tracker, celery, huey = (runs[name] for name in LIBRARIES)
    over = {peer: _ratios(runs, "p50", peer) for peer in PEERS}
    met = statistics.median(over["huey"]) <= 2
    return (
        f"P2 status by id of {len(ids['tracker']):,} random tasks among {results:,} finished results"
        f" ({items:,} item outcomes), median (min-max) of {RUNS} runs:"
        f" tracker batch_status p50 {_spread(tracker, 'p50', '.3f')} ms p99 {_spread(tracker, 'p99', '.3f')} ms"
        f" (summary() p50 {_spread(tracker, 'alt_p50', '.3f')} ms)"
        f" | celery get_task_meta p50 {_spread(celery, 'p50', '.3f')} ms p99 {_spread(celery, 'p99', '.3f')} ms"
        f" (a new engine per call outside a worker; in a prefork worker child p50"
        f" {_spread(celery, 'alt_p50', '.3f')} ms)"
        f" | huey peek_data + JSON decode p50 {_spread(huey, 'p50', '.3f')} ms p99 {_spread(huey, 'p99', '.3f')} ms"
        " | tracker p50 over " + ", ".join(f"{p} {median_spread(over[p], '.2f')}x" for p in PEERS)
        + f" | goal within 2x of huey: {'met' if met else 'MISSED'} | {load.text()}"
    )


# -- P3 purge -------------------------------------------------------------------------------------------------------


def purge_once(name: str, source: Path, stored: int, workdir: Path, budget_s: float) -> dict:
    db = copy_database(source, workdir / f"purge-{name}.db")
    stop_file = workdir / f"stop-writer-{name}"
    writer = _child("writer", name, db, stop_file, RECORDING_RATE, WRITER_TASK_ITEMS, log=workdir / "children.log")
    stop = threading.Event()
    timer = threading.Timer(budget_s, stop.set)
    try:
        time.sleep(0.5)  # its first writes are done: what follows is steady state
        timer.start()
        results, rows, seconds, whole = purge(name, db, stored, stop)
    finally:
        timer.cancel()
        report = _report(writer, stop_file)
        _remove(db)
    return {"rate": results / seconds, "rows_rate": rows / seconds, "seconds": seconds, "results": results,
            "whole": whole, "stall": report["worst_ms"], "errors": report["errors"],
            "first_error": report["first_error"], "calls": report["calls"]}


def figure_p3_purge(workdir: Path, results: int, items: int, budget_s: float, log=print) -> str:  # noqa: ANN001
    """tracker's purge is stopped (after a whole chunk) once it has run budget_s, as in figure 3, so that the figure
    keeps to its time budget on a loaded machine; the line then says how far it got. A peer's purge is one
    statement and cannot be stopped."""
    paths = databases(results, items, log=log)
    load = Load()
    runs: dict[str, list[dict]] = {name: [] for name in LIBRARIES}
    for _ in range(RUNS):
        for name in LIBRARIES:
            runs[name].append(purge_once(name, paths[name], results, workdir, budget_s))
            load.sample()
    how = {"tracker": "tracker.reaper.purge", "celery": "backend.cleanup()", "huey": "storage.flush_results()"}
    parts = []
    for name in LIBRARIES:
        rows = f", {_spread(runs[name], 'rows_rate', ',.0f')} rows/s" if name == "tracker" else ""
        errors = sum(run["errors"] for run in runs[name])
        first = next((run["first_error"] for run in runs[name] if run["first_error"]), None)
        parts.append(
            f"{name} {how[name]} {_spread(runs[name], 'rate', ',.0f')} results/s{rows}"
            f" ({_spread(runs[name], 'seconds', '.1f')} s), writer's worst stall {_spread(runs[name], 'stall', ',.0f')} ms"
            f" ({errors} errors{': ' + first if first else ''})"
        )
    complete = all(run["results"] == results for name in LIBRARIES for run in runs[name] if run["whole"])
    stopped = [run["results"] / results for run in runs["tracker"] if not run["whole"]]
    rate = {peer: _ratios(runs, "rate", peer) for peer in PEERS}
    stall = {peer: _ratios(runs, "stall", peer, invert=True) for peer in PEERS}
    return (
        f"P3 purge of {results:,} finished results ({items:,} item outcomes) while a writer records"
        f" {RECORDING_RATE:,} items/s into the same library, median (min-max) of {RUNS} runs: " + " | ".join(parts)
        + " | tracker results/s over " + ", ".join(f"{p} {median_spread(rate[p], '.2f')}x" for p in PEERS)
        + " | peer's worst stall over tracker's " + ", ".join(f"{p} {median_spread(stall[p], ',.1f')}x" for p in PEERS)
        + f" | all purged {'yes' if complete else 'NO'}"
        + (f" (tracker STOPPED at the {budget_s:.0f} s budget in {len(stopped)} runs, after"
           f" {', '.join(f'{done:.0%}' for done in stopped)})" if stopped else "")
        + f" | goal stall ahead of both: {_goal(stall)}"
        + f" | {load.text()}"
    )


PEER_FIGURES = {
    "P1": lambda workdir, quick: figure_p1_recording(workdir, 20_000 if quick else 100_000),
    "P2": lambda workdir, quick: (
        figure_p2_status(workdir, 50_000, 250_000, 500) if quick
        else figure_p2_status(workdir, 1_000_000, 5_000_000, 2_000)
    ),
    "P3": lambda workdir, quick: (
        figure_p3_purge(workdir, 50_000, 250_000, 30.0) if quick
        else figure_p3_purge(workdir, 1_000_000, 5_000_000, 120.0)
    ),
}


def peers_header() -> str:
    found = versions()
    return "peers: " + ", ".join(f"{name} {found[name]}" for name in PEERS)

