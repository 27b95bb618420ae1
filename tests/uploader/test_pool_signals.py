"""A signal to the uploader's main process only (`kill PID`, a supervisor, the OOM killer) stops its
workers too: they held the directory's lock with no deadline, and every later upload skipped it.

Real `veeksha-upload` processes, the real SDK, and the loopback fake W&B server stalling the run's
history stream (fake_wandb.py `fail`), so that the worker is inside the SDK when the signal comes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from veeksha.shared.paths import UPLOAD_PENDING

from tests.uploader.builders import RunSpec, build_run
from tests.uploader.conftest import VEEKSHA_UPLOAD, Home, lines_for, online_env, until, upload
from tests.uploader.fake_wandb import FakeWandb
from tests.uploader.test_deadlines import _sdk_service_of, _worker_of, w_id


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped is as good as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _start_stuck_upload(
    run_dir: Path, home: Home, fake: FakeWandb
) -> tuple[subprocess.Popen[str], int, list[int]]:
    """`veeksha-upload run_dir` with its worker stuck in the SDK (stalled history stream): the process,
    its worker's pid and the worker's wandb-core pids."""
    fake.fail("stall", "file_stream", run_id=w_id(run_dir))
    proc = subprocess.Popen(
        [VEEKSHA_UPLOAD, str(run_dir), "--mode", "online", "--deadline", "120"],
        cwd=run_dir.parent,
        env=home.env(online_env(fake)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    until(lambda: w_id(run_dir) in {key[2] for key in list(fake.runs)}, 60, "the run was created")
    worker = until(lambda: _worker_of(proc.pid), 10, "the worker process")
    services = until(lambda: _sdk_service_of(worker), 10, "the worker's wandb-core")
    time.sleep(1.0)  # inside the stalled stream
    return proc, worker, services


def _cleanup(proc: subprocess.Popen[str], pids: list[int]) -> None:
    """No orphan outlives a failed test (it would hold the lock and the fake's stalled stream)."""
    proc.kill()
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=30)


def _resumes(run_dir: Path, home: Home, fake: FakeWandb) -> None:
    """The next upload is not locked out: it resumes the same W&B run and finishes it."""
    fake.heal()
    again = upload([str(run_dir), "--mode", "online"], home, cwd=run_dir.parent, env=online_env(fake))
    assert again.returncode == 0, again.stdout + again.stderr
    assert lines_for(again.stdout, "uploaded"), again.stdout + again.stderr
    assert fake.run(w_id(run_dir)).state == "finished"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_sighup_to_the_main_process_stops_like_ctrl_c(
    signum: signal.Signals, tmp_path: Path, home: Home, fake_wandb: FakeWandb
) -> None:
    run_dir = build_run(tmp_path, RunSpec(seed=21, seconds=3))
    proc, worker, services = _start_stuck_upload(run_dir, home, fake_wandb)
    try:
        os.kill(proc.pid, signum)
        stdout, stderr = proc.communicate(timeout=30)
        # Exit 130 (interrupted), one line saying so; the worker and its SDK service are gone.
        assert proc.returncode == 130, stdout + stderr
        ours = [line for line in stderr.splitlines() if line.startswith("veeksha-upload")]
        assert ours == ["veeksha-upload: interrupted"], stderr
        assert stdout == "", stdout  # no result line claims anything about the stopped directory
        until(lambda: not _alive(worker), 10, "the worker stopped")
        until(lambda: not any(_alive(p) for p in services), 20, "the worker's wandb-core stopped")
    finally:
        _cleanup(proc, [worker, *services])
    assert (run_dir / UPLOAD_PENDING).read_text().strip() == w_id(run_dir)  # resumable
    _resumes(run_dir, home, fake_wandb)


def test_a_worker_whose_main_process_was_killed_stops_and_frees_the_lock(
    tmp_path: Path, home: Home, fake_wandb: FakeWandb
) -> None:
    # SIGKILL (the OOM killer): no handler runs in the main process; the worker must notice alone.
    run_dir = build_run(tmp_path, RunSpec(seed=22, seconds=3))
    proc, worker, services = _start_stuck_upload(run_dir, home, fake_wandb)
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        until(lambda: not _alive(worker), 10, "the orphaned worker stopped")
        until(lambda: not any(_alive(p) for p in services), 20, "the orphaned worker's wandb-core stopped")
    finally:
        _cleanup(proc, [worker, *services])
    _resumes(run_dir, home, fake_wandb)
