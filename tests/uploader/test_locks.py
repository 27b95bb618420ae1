"""One uploader per directory: a backfill skips a held directory, the run's own upload waits for it.

The race this guards: a cron backfill looks at a directory a moment before its run finishes and skips
it as running; if the run's own upload then skipped it as held, nobody would upload it.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from veeksha.runner import benchmark
from veeksha.shared.config_loader import load_written_config
from veeksha.shared.paths import RunPaths
from veeksha.uploader.locks import DirLock, LockBusy

from tests.uploader.builders import RunSpec, build_run
from tests.uploader.conftest import Home, lines_for, upload
from tests.uploader.wandb_records import offline_run_dirs

OFFLINE = {"enabled": True, "mode": "offline"}


def hold_for(root: Path, seconds: float) -> threading.Thread:
    """Hold `root`'s upload lock (as another veeksha-upload would) from now for `seconds`."""
    lock = DirLock(root)
    lock.acquire()

    def release() -> None:
        time.sleep(seconds)
        lock.release()

    thread = threading.Thread(target=release)
    thread.start()
    return thread


def test_a_waiting_lock_is_taken_once_its_holder_lets_go(tmp_path: Path) -> None:
    holder = hold_for(tmp_path, 0.5)
    started = time.monotonic()
    with DirLock(tmp_path, wait_s=10):
        waited = time.monotonic() - started
    holder.join()
    assert 0.4 < waited < 5


def test_a_lock_still_held_after_the_wait_is_busy(tmp_path: Path) -> None:
    holder = hold_for(tmp_path, 2.0)
    started = time.monotonic()
    with pytest.raises(LockBusy):
        DirLock(tmp_path, wait_s=0.5).acquire()
    assert 0.4 < time.monotonic() - started < 1.9
    holder.join()


def test_a_backfill_skips_a_held_directory_at_once(tmp_path: Path, home: Home) -> None:
    root = build_run(tmp_path, RunSpec(seconds=2, wandb=OFFLINE))
    with DirLock(root):  # held for as long as the upload runs, however slowly it starts
        result = upload([str(root)], home, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    (line,) = lines_for(result.stdout, "skipped")
    assert "another veeksha-upload holds its lock" in line
    assert offline_run_dirs(root) == []


def test_with_wait_lock_the_upload_waits_for_the_holder_then_uploads(tmp_path: Path, home: Home) -> None:
    root = build_run(tmp_path, RunSpec(seconds=2, wandb=OFFLINE))
    holder = hold_for(root, 1.5)
    result = upload([str(root), "--wait-lock", "60"], home, cwd=tmp_path)
    holder.join()
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(lines_for(result.stdout, "uploaded")) == 1
    assert len(offline_run_dirs(root)) == 1


@pytest.mark.parametrize("follow", [False, True], ids=["upload", "follow"])
def test_a_holder_that_outlasts_the_wait_fails_the_directory_and_says_what_to_run(
    follow: bool, tmp_path: Path, home: Home
) -> None:
    root = build_run(tmp_path, RunSpec(seconds=2, wandb=OFFLINE))
    args = ["--follow", str(root)] if follow else [str(root)]
    with DirLock(root):  # held for as long as the upload runs
        result = upload([*args, "--wait-lock", "1"], home, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = lines_for(result.stdout, "failed")
    assert "held its lock for 1 s" in line and f"veeksha-upload {root}" in line
    assert offline_run_dirs(root) == []


def test_the_runners_own_upload_waits_for_a_backfill_holding_the_directory(
    tmp_path: Path, home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`veeksha-run`'s end-of-run upload, as the runner starts it (its own process)."""
    root = build_run(tmp_path, RunSpec(seconds=2, wandb=OFFLINE))
    for name in os.environ:  # the uploader process inherits the test's environment
        if name.startswith("WANDB_"):
            monkeypatch.delenv(name)
    for name, value in home.env().items():
        monkeypatch.setenv(name, value)
    holder = hold_for(root, 1.5)
    assert benchmark.upload(root, load_written_config(RunPaths(root).config_yml))
    holder.join()
    assert len(offline_run_dirs(root)) == 1
