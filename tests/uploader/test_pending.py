"""The pending file (`.veeksha-upload.pending`): an upload under way, and whether its run may be on W&B.

An interrupted upload leaves it, and the next upload resumes the same run. Only one that was online
(or followed an online attempt) may have created that run on W&B: after a purely offline one the
next offline upload still offers `wandb sync`, as nothing was ever sent. Real `veeksha-upload`
processes, the real SDK offline or against the loopback fake W&B server.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import orjson
from veeksha.shared.jsonio import read_json
from veeksha.shared.paths import UPLOAD_PENDING, RunPaths
from veeksha.uploader.wandb_session import wandb_run_id

from tests.uploader.builders import RunSpec, build_run
from tests.uploader.conftest import (
    VEEKSHA_UPLOAD,
    Home,
    lines_for,
    online_env,
    read_marker_json,
    until,
    upload,
)
from tests.uploader.fake_wandb import FakeWandb


def w_id(run_dir: Path) -> str:
    return wandb_run_id("run", read_json(run_dir / "run.json")["run_id"], "veeksha", None)


def interrupted_upload(run_dir: Path, home: Home, env: dict[str, str]) -> None:
    """`veeksha-upload run_dir` stopped (SIGTERM, as Ctrl-C or a deadline does) once it is under way."""
    proc = subprocess.Popen(
        [VEEKSHA_UPLOAD, str(run_dir)],
        cwd=run_dir.parent,
        env=home.env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        until(lambda: (run_dir / UPLOAD_PENDING).exists(), 60, "the upload began", step=0.01)
        os.kill(proc.pid, signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == 130, stdout + stderr
    assert (run_dir / UPLOAD_PENDING).exists()  # resumable


def test_an_interrupted_offline_upload_is_no_online_attempt(tmp_path: Path, home: Home) -> None:
    run_dir = build_run(tmp_path, RunSpec(seed=41, seconds=3))
    offline = {"WANDB_MODE": "offline"}
    interrupted_upload(run_dir, home, offline)

    again = upload([str(run_dir)], home, cwd=tmp_path, env=offline)
    assert again.returncode == 0, again.stdout + again.stderr
    (line,) = lines_for(again.stdout, "uploaded")
    assert "this W&B run may exist" not in line and "wandb sync wandb/" in line
    marker = read_marker_json(run_dir)
    assert marker["online_attempted"] is False and marker["sync_command"] is not None
    assert not (run_dir / UPLOAD_PENDING).exists()


def test_a_pending_file_of_an_online_upload_still_makes_the_offline_copy_unsyncable(
    tmp_path: Path, home: Home
) -> None:
    """An online upload interrupted (its pending file is the run id alone, as older versions wrote
    every one): the run may exist on W&B, and `wandb sync` of the offline copy would append a second
    history to it."""
    run_dir = build_run(tmp_path, RunSpec(seed=42, seconds=3))
    (run_dir / UPLOAD_PENDING).write_text(w_id(run_dir))

    done = upload([str(run_dir), "--mode", "offline"], home, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    (line,) = lines_for(done.stdout, "uploaded")
    assert "this W&B run may exist" in line
    marker = read_marker_json(run_dir)
    assert marker["online_attempted"] is True and marker["sync_command"] is None


def test_an_interrupted_offline_upload_of_a_run_already_online_keeps_it_unsyncable(
    tmp_path: Path, home: Home, fake_wandb: FakeWandb
) -> None:
    """Uploaded online, changed, then uploaded offline and interrupted: the offline upload's pending
    file is offline, but its run is on W&B (the online marker it replaced said so)."""
    run_dir = build_run(tmp_path, RunSpec(seed=43, seconds=3))
    first = upload([str(run_dir), "--mode", "online"], home, cwd=tmp_path, env=online_env(fake_wandb))
    assert first.returncode == 0, first.stdout + first.stderr
    stats = RunPaths(run_dir).summary_stats
    stats.write_bytes(orjson.dumps({**read_json(stats), "num_requests": 41}))
    offline = {"WANDB_MODE": "offline"}
    interrupted_upload(run_dir, home, offline)
    assert not (run_dir / "wandb_run.json").exists()  # the online marker no longer says it

    again = upload([str(run_dir)], home, cwd=tmp_path, env=offline)
    assert again.returncode == 0, again.stdout + again.stderr
    (line,) = lines_for(again.stdout, "uploaded")
    assert "this W&B run may exist" in line
    assert read_marker_json(run_dir)["online_attempted"] is True


def test_the_pending_file_says_offline_only_when_nothing_was_sent(tmp_path: Path) -> None:
    from veeksha.uploader.marker import Pending, read_pending, write_pending

    (tmp_path / UPLOAD_PENDING).write_text("abc123")  # online, or written by an older version
    online = read_pending(tmp_path)
    assert online == Pending("abc123") and online.may_be_online
    write_pending(tmp_path, Pending("abc123", offline_only=True))
    offline = read_pending(tmp_path)
    assert offline == Pending("abc123", offline_only=True) and not offline.may_be_online
    assert (tmp_path / UPLOAD_PENDING).read_text().split()[0] == "abc123"  # what older versions read
    (tmp_path / UPLOAD_PENDING).unlink()
    assert read_pending(tmp_path) is None
