"""Online, the run's follower (`veeksha-upload --follow`, in its own session: it gets no Ctrl-C)
finishes the live W&B run after the benchmark. A Ctrl-C in that wait left it uploading in the
background without a word. Now it is stopped (its W&B run left resumable, as at any stop) and the run
says how to upload it later. A sleeping process stands in for the follower (its own stop on SIGTERM
is tested in tests/uploader)."""

from __future__ import annotations

import _thread
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import veeksha.runner.benchmark as benchmark
from veeksha.runner.benchmark import wait_for_follower


def test_ctrl_c_while_the_follower_finishes_stops_it_and_says_how_to_upload(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    follower = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    threading.Timer(0.5, _thread.interrupt_main).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            wait_for_follower(follower, tmp_path)
        assert follower.poll() is not None  # stopped, not left behind
    finally:
        follower.kill()
        follower.wait()
    hint = f"upload interrupted; the run's results are unchanged. Upload it with: veeksha-upload {tmp_path}"
    assert hint in capsys.readouterr().err


def test_ctrl_c_as_the_followers_deadline_is_read_stops_it_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The wait's limit comes from a file (the run's upload deadline): a Ctrl-C there left the
    # follower uploading in the background, as one during the wait did.
    def interrupted(run_dir: Path) -> float:
        raise KeyboardInterrupt

    monkeypatch.setattr(benchmark, "upload_deadline_s", interrupted)
    follower = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        with pytest.raises(KeyboardInterrupt):
            wait_for_follower(follower, tmp_path)
        assert follower.poll() is not None
    finally:
        follower.kill()
        follower.wait()
    assert f"Upload it with: veeksha-upload {tmp_path}" in capsys.readouterr().err
