"""The operator's commands: ls, show, watch, reap, db current/upgrade, human and --json, their exit codes and
one-line errors; `tracker reap` and the cron wrapper as real processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from tracker import Settings, Tracker
from tracker.cli import main
from tracker.db import head_revision, sqlite_module
from tracker.testing.env import child_env
from tracker.timeutil import utcnow

from .conftest import PYTHON, REPO
from .reap_helpers import finished_ago, table_counts

CRON = REPO / "scripts" / "tracker-reap-cron.sh"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TRACKER_DB", "TRACKER_RETENTION", "TRACKER_REAP_INTERVAL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture, settings: Settings):
    """Run `tracker --db <test db> ARGS` in this process: (exit code, stdout, stderr)."""

    def run(*args: str, db: str | None = None) -> tuple[int, str, str]:
        try:
            code = main(["--db", db or settings.db, *args])
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def sample(tracker: Tracker) -> dict[str, str]:
    """A finished import with 25 successes and 3 failures, a failed delete, a running update, and a run."""
    imported = tracker.start_batch("import", total=30, inputs={"file": "contacts.csv"})
    for n in range(25):
        imported.record_success(f"c-{n:02d}")
    for n in range(3):
        imported.record_failure("missing email", item_id=f"x-{n}", row_number=26 + n)
    imported.finish()
    deleted = tracker.start_batch("delete", total=2)
    deleted.record_failure("not found", item_id="d-1")
    deleted.fail("upstream refused")
    running = tracker.start_batch("update", total=10)
    running.record_success("u-1")
    running.flush()
    run = tracker.store.create_operation(
        {"id": "run_grid_1", "kind": "run", "operation_type": "grid_run", "started_at": utcnow(), "request_id": "req-1"}
    )
    return {"import": imported.id, "delete": deleted.id, "running": running.id, "run": run.id}


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# -- ls --------------------------------------------------------------------------------------------------------------


def test_ls_table_and_json(cli, sample: dict[str, str]) -> None:
    code, out, err = cli("ls")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["ID", "KIND", "TYPE", "STATUS"]
    newest_first = [sample["run"], sample["running"], sample["delete"], sample["import"]]
    assert [line.split()[0] for line in lines[1:]] == newest_first
    imported = next(line for line in lines if line.startswith(sample["import"]))
    assert imported.split()[1:7] == ["batch", "import", "completed", "28/30", "93.33", "3"]

    code, out, _ = cli("ls", "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 4
    assert set(rows[0]) == {"id", "kind", "operation_type", "status", "progress", "succeeded", "failed", "started_at",
                            "completed_at", "execution_time_ms", "error"}
    row = next(r for r in rows if r["id"] == sample["import"])
    assert row["progress"] == {"completed": 28, "total": 30, "percent": 93.33}
    assert (row["succeeded"], row["failed"], row["status"]) == (25, 3, "completed")
    assert row["started_at"].endswith("Z") and row["completed_at"] >= row["started_at"]


def test_ls_filters(cli, sample: dict[str, str]) -> None:
    ids = lambda *args: [r["id"] for r in json.loads(cli("ls", "--json", *args)[1])]  # noqa: E731
    assert ids("--status", "failed") == [sample["delete"]]
    assert ids("--status", "running", "--kind", "batch") == [sample["running"]]
    assert ids("--kind", "run") == [sample["run"]]
    assert ids("--type", "import") == [sample["import"]]
    assert ids("--limit", "2") == [sample["run"], sample["running"]]
    assert ids("--type", "nothing-like-this") == []
    assert cli("ls", "--type", "nothing-like-this")[1] == "no operations\n"


# -- show ------------------------------------------------------------------------------------------------------------


def test_show_human(cli, sample: dict[str, str]) -> None:
    code, out, err = cli("show", sample["import"], "--limit", "5")
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == sample["import"]
    assert re.search(r"^  status +completed$", out, re.M)
    assert re.search(r"^  progress +28/30 \(93.33%\), 25 succeeded, 3 failed$", out, re.M)
    assert re.search(r'^  inputs +\{"file": "contacts.csv"\}$', out, re.M)
    assert "successful ids (first 5 of 25):\n  c-00\n  c-01\n  c-02\n  c-03\n  c-04\n" in out
    more = rf"  \.\.\. 20 more, use: tracker show {sample['import']} --page succeeded --after \d+$"
    assert re.search(more, out, re.M)
    assert "failed items (3):\n  id x-0 row 26: missing email\n" in out
    code, out, _ = cli("show", sample["delete"])
    assert code == 0 and re.search(r"^  status +failed \(upstream refused\)$", out, re.M)


def test_show_json_and_paging_through_every_id(cli, sample: dict[str, str]) -> None:
    code, out, _ = cli("show", sample["import"], "--json", "--limit", "10")
    shown = json.loads(out)
    assert code == 0
    operation = shown["operation"]
    assert (operation["id"], operation["status"]) == (sample["import"], "completed")
    assert operation["inputs"] == {"file": "contacts.csv"}
    assert {"owner_pid", "heartbeat_at", "resumable", "request_id", "parent_id"} <= set(operation)
    assert shown["successful_ids"]["items"] == [f"c-{n:02d}" for n in range(10)]
    assert shown["successful_ids"]["more"] == 15
    assert shown["failed_items"] == {
        "items": [{"id": f"x-{n}", "row_number": 26 + n, "error": "missing email"} for n in range(3)],
        "more": 0, "next_after": None,
    }
    # Follow next_after to the end: every id exactly once, in order.
    seen, after = list(shown["successful_ids"]["items"]), shown["successful_ids"]["next_after"]
    while after is not None:
        code, out, _ = cli("show", sample["import"], "--page", "succeeded", "--after", str(after), "--limit", "7",
                           "--json")
        page = json.loads(out)
        assert code == 0 and page["page"] == "succeeded" and page["after"] == after
        seen += [item["id"] for item in page["items"]]
        after = page["next_after"]
    assert seen == [f"c-{n:02d}" for n in range(25)]
    code, out, _ = cli("show", sample["import"], "--page", "failed", "--limit", "2")
    assert code == 0
    assert re.fullmatch(r"\d+  id x-0 row 26: missing email\n\d+  id x-1 row 27: missing email\n"
                        rf"\.\.\. more, use: tracker show {sample['import']} --page failed --after \d+\n", out)


def test_unknown_id_is_one_line_exit_1(cli, sample: dict[str, str]) -> None:
    for command in ("show", "watch"):
        code, out, err = cli(command, "batch_import_0000")
        assert (code, out) == (1, "")
        assert _one_error_line(err) == (
            "tracker: operation 'batch_import_0000' not found (never existed, or purged after the retention)"
        )


def test_read_commands_never_create_a_database(cli, tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here.db"
    for args in (["ls"], ["show", "x"], ["watch", "x"], ["reap"], ["ls", "--json"]):
        code, out, err = cli(*args, db=str(missing))
        assert (code, out) == (1, "")
        assert _one_error_line(err) == f"tracker: no tracker database at {missing}"
    assert not missing.exists()


# -- watch -----------------------------------------------------------------------------------------------------------


def _record_in_background(settings: Settings, batch_id: str, items: int, fail: bool = False) -> threading.Thread:
    def work() -> None:
        with Tracker(settings) as other, other.attach(batch_id) as batch:
            for n in range(items):
                batch.record_success(f"w-{n}")
                time.sleep(0.002)
            if fail:
                batch.fail("worker crashed")

    thread = threading.Thread(target=work)
    thread.start()
    return thread


def test_watch_bar_until_completed(cli, tracker: Tracker, settings: Settings) -> None:
    batch = tracker.start_batch("import", total=200)
    worker = _record_in_background(settings, batch.id, 200)
    code, out, err = cli("watch", batch.id, "--interval", "0.05")
    worker.join()
    assert (code, err) == (0, "")
    assert out.startswith(f"{batch.id} (batch import)\n")
    assert "200/200" in out
    assert re.search(r"^completed: 200 succeeded, 0 failed in \d+\.\d\ds$", out, re.M)


def test_watch_json_lines_and_failed_exit_code(cli, tracker: Tracker, settings: Settings) -> None:
    batch = tracker.start_batch("import", total=100)
    worker = _record_in_background(settings, batch.id, 100, fail=True)
    code, out, _ = cli("watch", batch.id, "--json", "--interval", "0.03")
    worker.join()
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 1
    assert set(lines[0]) == {"id", "status", "progress", "succeeded", "failed", "completed_at", "execution_time_ms",
                             "error"}
    done = [line["progress"]["completed"] for line in lines]
    assert done == sorted(done) and len(lines) >= 2  # a line per change, progress never going back
    assert (lines[-1]["status"], lines[-1]["error"], lines[-1]["succeeded"]) == ("failed", "worker crashed", 100)
    assert all(line["status"] == "running" for line in lines[:-1])


def test_watch_timeout(cli, sample: dict[str, str]) -> None:
    code, out, err = cli("watch", sample["running"], "--timeout", "0.3", "--interval", "0.05")
    assert code == 3
    assert "1/10" in out
    assert _one_error_line(err) == f"tracker: gave up watching after 0.3s; {sample['running']} is still running"


# -- reap ------------------------------------------------------------------------------------------------------------


def test_reap_line_dry_run_and_json(cli, tracker: Tracker, sample: dict[str, str]) -> None:
    for key in ("import", "delete"):
        finished_ago(tracker.engine, sample[key], utcnow() - timedelta(hours=2))
    before = table_counts(tracker.engine)
    code, out, err = cli("reap", "--dry-run")
    assert (code, err) == (0, "")
    assert re.fullmatch(r"would purge 2 operations and 29 items in \d+\.\d\ds \(dry run: nothing changed\)\n", out)
    assert table_counts(tracker.engine) == before

    code, out, err = cli("reap", "--json", "--older-than", "1h")
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert {k: report[k] for k in ("dry_run", "operations", "items", "orphans_failed", "orphans_resumable")} == {
        "dry_run": False, "operations": 2, "items": 29, "orphans_failed": 0, "orphans_resumable": 0,
    }
    assert set(report) == {"dry_run", "operations", "items", "orphans_failed", "orphans_resumable", "cutoff",
                           "seconds", "chunks", "checkpoint"}
    assert tracker.get(sample["import"]) is None and tracker.get(sample["running"]) is not None
    code, out, _ = cli("reap")
    assert code == 0 and re.fullmatch(r"purged 0 operations and 0 items in \d+\.\d\ds\n", out)


def test_reap_bad_arguments_are_usage_errors(cli, tracker: Tracker) -> None:
    for args in (["--older-than", "soon"], ["--older-than", "-5m"], ["--older-than", "99999999d"],
                 ["--busy-timeout", "x"], ["--nope"]):
        code, out, err = cli("reap", *args)
        assert (code, out) == (2, "")
        assert err.startswith("usage: tracker") and "Traceback" not in err
        assert err.strip().splitlines()[-1].startswith("tracker: error: ")
    for args in (["ls", "--status", "bogus"], ["ls", "--limit", "0"], ["show"], ["show", "x", "--page", "all"],
                 ["watch", "x", "--interval", "often"], ["ls", "--limit", "many"]):
        code, _, err = cli(*args)
        assert code == 2 and "Traceback" not in err and "tracker: error: " in err


def test_reap_as_a_process(tracker: Tracker, settings: Settings, tmp_path: Path) -> None:
    """The cron command for real: the one summary line, exit 0; --db after the subcommand; orphans reported."""
    old = tracker.start_batch("import")
    old.record_success("a")
    old.finish()
    finished_ago(tracker.engine, old.id, utcnow() - timedelta(days=8))
    tracker.store.create_operation(
        {"id": "batch_orphan_1", "kind": "batch", "operation_type": "import",
         "started_at": utcnow() - timedelta(hours=1), "owner_host": "gone-host", "owner_pid": 1}
    )
    env = child_env(tmp_path / "not-this.db")
    result = subprocess.run([PYTHON, "-m", "tracker", "reap", "--older-than", "7d", "--db", settings.db],
                            env=env, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")
    assert re.fullmatch(r"purged 1 operations and 1 items in \d+\.\d\ds; marked 1 orphaned operations failed\n",
                        result.stdout)
    assert tracker.get("batch_orphan_1").status == "failed"
    assert not (tmp_path / "not-this.db").exists()

    bad = subprocess.run([PYTHON, "-m", "tracker", "reap"], env=child_env(tmp_path / "no-dir" / "x.db"),
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and bad.stdout == ""
    assert _one_error_line(bad.stderr) == f"tracker: no tracker database at {tmp_path / 'no-dir' / 'x.db'}"


def test_reap_on_a_busy_database_retries_then_says_so(cli, tracker: Tracker, settings: Settings) -> None:
    done = tracker.start_batch("import")
    done.record_success("a")
    done.finish()
    finished_ago(tracker.engine, done.id, utcnow() - timedelta(hours=2))
    holder = sqlite_module().connect(settings.db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer that does not let go
    try:
        code, out, err = cli("reap", "--busy-timeout", "0.1")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert (code, out) == (1, "")
    assert re.fullmatch(
        r"tracker: database .+ stayed busy \(locked by another writer\) through 3 attempts; purge stopped after "
        r"0 operations and 0 items \(what was purged is whole: run it again\)", _one_error_line(err))
    assert tracker.get(done.id) is not None
    code, out, _ = cli("reap")
    assert code == 0 and out.startswith("purged 1 operations and 1 items")


def test_reap_reports_a_database_it_cannot_use(cli, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 500)
    code, out, err = cli("reap", db=str(garbage))
    assert (code, out) == (1, "")
    line = _one_error_line(err)
    assert line.startswith("tracker: ") and str(garbage) in line


# -- the cron wrapper ------------------------------------------------------------------------------------------------


def _tracker_bin(tmp_path: Path) -> Path:
    """A `tracker` executable for this checkout and interpreter, as the wrapper's TRACKER_BIN."""
    path = tmp_path / "tracker-bin"
    path.write_text(f'#!/bin/sh\nexec "{PYTHON}" -m tracker "$@"\n')
    path.chmod(0o755)
    return path


def test_cron_wrapper_logs_the_line_and_passes_the_exit_code(
    tracker: Tracker, settings: Settings, tmp_path: Path
) -> None:
    assert os.access(CRON, os.X_OK)
    done = tracker.start_batch("import")
    done.record_success("a")
    done.finish()
    finished_ago(tracker.engine, done.id, utcnow() - timedelta(hours=3))
    log = tmp_path / "reap.log"
    env = child_env(settings.db, TRACKER_BIN=str(_tracker_bin(tmp_path)), TRACKER_REAP_LOG=str(log))
    env["PATH"] = "/nonexistent"  # cron's PATH is minimal; the wrapper sets its own
    ok = subprocess.run([str(CRON)], env=env, capture_output=True, text=True, timeout=60)
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "", "")
    [line] = log.read_text().splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ tracker-reap: purged 1 operations and 1 items in \d+\.\d\ds",
                        line)
    assert tracker.get(done.id) is None

    dry = subprocess.run([str(CRON), "--dry-run"], env=env, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0 and "would purge 0 operations" in log.read_text().splitlines()[-1]

    env["TRACKER_DB"] = str(tmp_path / "missing-dir" / "tracker.db")
    failed = subprocess.run([str(CRON)], env=env, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1
    assert log.read_text().splitlines()[-1].endswith(
        f"tracker-reap: tracker: no tracker database at {tmp_path / 'missing-dir' / 'tracker.db'} (exit 1)"
    )
    env["TRACKER_BIN"] = str(tmp_path / "no-such-tracker")
    missing = subprocess.run([str(CRON)], env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 127 and "tracker not found" in log.read_text().splitlines()[-1]


# -- db current / db upgrade -----------------------------------------------------------------------------------------


def test_db_current_and_upgrade(cli, tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.db"
    head = head_revision()
    code, out, err = cli("db", "upgrade", db=str(fresh))
    assert (code, err) == (0, "")
    assert out.strip().endswith(f": empty -> {head}")
    code, out, _ = cli("db", "current", db=str(fresh))
    assert code == 0 and out.strip().endswith(f": revision {head} (head {head}, up to date)")
    code, out, _ = cli("db", "upgrade", db=str(fresh))
    assert code == 0 and out.strip().endswith(f": {head} -> {head}")
    code, _, err = cli("db", "downgrade", db=str(fresh))
    assert code == 2 and "Traceback" not in err
