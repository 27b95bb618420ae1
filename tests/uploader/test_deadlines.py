"""A W&B server that fails after the reachability check costs one directory, not the backfill
(issue 8 §3): every directory has a deadline, a dead worker fails only its own directory, and
--fallback-offline also covers a server that fails mid-upload.

Real `veeksha-upload` processes, the real SDK, and the loopback fake W&B server told to answer 500
or to stall (fake_wandb.py `fail`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from veeksha.shared.jsonio import read_json
from veeksha.shared.paths import UPLOAD_PENDING
from veeksha.uploader.wandb_session import wandb_run_id

from tests.uploader.builders import RunSpec, build_run
from tests.uploader.conftest import VEEKSHA_UPLOAD, Home, lines_for, online_env, read_marker_json, upload
from tests.uploader.fake_wandb import FakeWandb
from tests.uploader.wandb_records import offline_run_dirs


def w_id(run_dir: Path) -> str:
    """The W&B run id the uploader will use (default project, no entity)."""
    return wandb_run_id("run", read_json(run_dir / "run.json")["run_id"], "veeksha", None)


def two_runs(tmp_path: Path) -> tuple[Path, Path, Path]:
    tree = tmp_path / "tree"
    return tree, build_run(tree, RunSpec(seed=11, seconds=3)), build_run(tree, RunSpec(seed=12, seconds=3))


def line_of(stdout: str, run_dir: Path) -> str:
    [line] = [x for x in stdout.splitlines() if run_dir.name in x]
    return line


def test_a_stalled_history_stream_fails_only_its_directory_at_its_deadline(
    tmp_path: Path, home: Home, fake_wandb: FakeWandb
) -> None:
    tree, stuck, fine = two_runs(tmp_path)
    fake_wandb.fail("stall", "file_stream", run_id=w_id(stuck))
    started = time.monotonic()
    # 12 s: the healthy directory's whole upload (SDK start included) must fit in it on a busy
    # machine; at 6 s it once did not, under a loaded suite.
    done = upload(
        [str(tree), "-r", "--mode", "online", "--deadline", "12"], home, cwd=tree, env=online_env(fake_wandb)
    )
    took = time.monotonic() - started
    assert done.returncode == 1
    assert line_of(done.stdout, stuck).startswith("failed") and "deadline of 12 s" in done.stdout
    assert line_of(done.stdout, fine).startswith("uploaded"), done.stdout + done.stderr
    assert (stuck / UPLOAD_PENDING).read_text().strip() == w_id(stuck)  # resumable
    assert not (stuck / "wandb_run.json").exists()
    assert fake_wandb.run(w_id(fine)).state == "finished"
    assert took < 60, took


def test_artifact_uploads_answering_500_end_at_the_deadline_or_fall_back_offline(
    tmp_path: Path, home: Home, fake_wandb: FakeWandb
) -> None:
    run_dir = build_run(tmp_path, RunSpec(seed=13, seconds=3))
    fake_wandb.fail("500", "artifacts")
    # 8 s: the offline run written after the online one failed gets a deadline of the same length.
    # At 5 s this test failed once with two busy loops beside the suite (which step, not recorded).
    args = [str(run_dir), "--mode", "online", "--deadline", "8"]
    failed = upload(args, home, cwd=tmp_path, env=online_env(fake_wandb))
    assert failed.returncode == 1 and "deadline of 8 s" in failed.stdout, failed.stdout + failed.stderr

    fell_back = upload([*args, "--fallback-offline"], home, cwd=tmp_path, env=online_env(fake_wandb))
    assert fell_back.returncode == 0, fell_back.stdout + fell_back.stderr
    assert lines_for(fell_back.stdout, "uploaded") and "wrote an offline run instead" in fell_back.stdout
    assert "wandb sync wandb/" not in fell_back.stdout  # its run id is on W&B: that would append
    assert read_marker_json(run_dir)["mode"] == "offline"
    assert len(offline_run_dirs(run_dir)) == 1


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _worker_of(pid: int) -> int | None:
    for child in _children(pid):
        try:
            cmdline = (Path("/proc") / str(child) / "cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            return child
    return None


def _sdk_service_of(worker: int) -> list[int]:
    """wandb-core processes started for `worker` (the SDK passes its parent's pid as --pid)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                args = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(a.endswith(b"wandb-core") for a in args) and b"--pid" in args:
                if args[args.index(b"--pid") + 1] == str(worker).encode():
                    found.append(int(entry.name))
    return found


def test_a_dead_worker_fails_only_its_directory(tmp_path: Path, home: Home, fake_wandb: FakeWandb) -> None:
    tree, doomed, fine = two_runs(tmp_path)
    first = min((doomed, fine), key=str)  # directories are uploaded in path order
    other = fine if first is doomed else doomed
    fake_wandb.fail("stall", "file_stream", run_id=w_id(first))  # holds the worker inside the SDK
    proc = subprocess.Popen(
        [VEEKSHA_UPLOAD, str(tree), "-r", "--mode", "online", "--jobs", "1"],
        cwd=tree,
        env=home.env(online_env(fake_wandb)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while w_id(first) not in {key[2] for key in list(fake_wandb.runs)}:
            assert time.monotonic() < deadline, "the first directory's run was never created"
            time.sleep(0.2)
        worker = _worker_of(proc.pid)
        assert worker is not None
        os.kill(worker, signal.SIGKILL)
        fake_wandb.heal()
        stdout, stderr = proc.communicate(timeout=120)
        gone_by = time.monotonic() + 15
        while _sdk_service_of(worker) and time.monotonic() < gone_by:
            time.sleep(0.2)
        assert not _sdk_service_of(worker), "the killed worker's SDK service outlived it"
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert "the worker process died" in line_of(stdout, first), stdout + stderr
    assert line_of(stdout, other).startswith("uploaded"), stdout + stderr
    assert (first / UPLOAD_PENDING).exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--deadline", "inf"],
        ["--deadline", "nan"],
        ["--deadline", "1e300"],
        ["--deadline", "604801"],  # more than a week
        ["--wait-lock", "inf"],
        ["--wait-lock", "nan"],
        ["--wait-lock", "-1"],
        ["--follow", "--deadline", "inf"],
    ],
)
def test_a_deadline_or_lock_wait_must_be_a_finite_number_of_seconds_up_to_a_week(
    tmp_path: Path, home: Home, args: list[str]
) -> None:
    """A usage error (exit 2, one line naming the flag) before any worker starts or anything is written;
    an infinite deadline crashed a worker with an OverflowError, and `nan` busy-waited."""
    run_dir = build_run(tmp_path, RunSpec(seed=14, seconds=3))
    flag = next(a for a in args if a in ("--deadline", "--wait-lock"))
    done = upload([*args, str(run_dir), "--mode", "offline"], home, cwd=tmp_path, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"veeksha-upload: Invalid value for '{flag}'") and "a week" in line
    assert done.stdout == "" and not (run_dir / "wandb").exists()
