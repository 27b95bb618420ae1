"""Ctrl-C while the run's own upload goes: the upload stops, the run says how to upload it later, and
nothing starts another upload. A sweep went straight on to upload its summary (which uploads every run
of the sweep again): the user who stopped a slow upload got a second one.

The rule, for a sweep as for a capacity search: a Ctrl-C during a run's traffic ends that run (it is
evaluated and uploaded like any run), and the sweep then ends and uploads its summary; anywhere else
(a server's start or stop, an evaluation, an upload, between runs) nothing more is uploaded, and
`veeksha-upload <dir>` is printed.

Real `veeksha-run` processes and uploader, writing offline W&B runs in a private home (the SDK's
start takes seconds, so the upload is still going half a second after it began, when the Ctrl-C,
SIGINT to the process group, comes).
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from veeksha.runner.benchmark import upload
from veeksha.runner.evaluation.evaluate import NO_PLOTS_ENV
from veeksha.shared.config import BenchmarkConfig, WandbConfig

from tests.runner.helpers import VEEKSHA_RUN
from tests.uploader.conftest import make_home

CONFIG = """
output_dir: out
server: {type: simulated}
runtime: RUNTIME
traffic_scheduler: {type: rate, interval_generator: {type: poisson, arrival_rate: RATE}}
wandb: {enabled: true, mode: offline}
"""
UPLOADING = "writing an offline W&B run"


def interrupt_during_upload(tmp_path: Path, rate: str) -> tuple[int, str]:
    return interrupt_after(tmp_path, rate, "{max_sessions: 2}", UPLOADING, 0.5)


def interrupt_after(
    tmp_path: Path, rate: str, runtime: str, said_first: str, wait_s: float
) -> tuple[int, str]:
    """Ctrl-C `wait_s` after the first line holding `said_first`: the exit code and all that was said."""
    (tmp_path / "c.veeksha.yml").write_text(CONFIG.replace("RATE", rate).replace("RUNTIME", runtime))
    # A private home for the SDK (its cache, settings and login): not the user's, not another test's.
    env = make_home(tmp_path / "home").env({NO_PLOTS_ENV: "1"})
    proc = subprocess.Popen(
        [VEEKSHA_RUN, "--config", "c.veeksha.yml"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    said: list[str] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        said.append(line)
        if said_first in line:
            time.sleep(wait_s)
            os.killpg(proc.pid, signal.SIGINT)
            break
        assert time.monotonic() < deadline, "".join(said)
    said.append(proc.stdout.read())
    proc.stdout.close()
    return proc.wait(timeout=60), "".join(said)


def test_a_run_whose_upload_is_interrupted_says_how_to_upload_it(tmp_path: Path) -> None:
    code, said = interrupt_during_upload(tmp_path, "20")
    assert code == 130, said
    (run_dir,) = (tmp_path / "out").iterdir()
    hint = "upload interrupted; the run's results are unchanged. Upload it with: veeksha-upload out/"
    assert hint + run_dir.name in said


def test_a_sweep_whose_run_upload_is_interrupted_starts_no_other_upload(tmp_path: Path) -> None:
    code, said = interrupt_during_upload(tmp_path, "!expand [20, 30]")
    assert code == 130, said
    assert said.count(UPLOADING) == 1, said
    (sweep,) = (tmp_path / "out").iterdir()
    assert f"upload its runs and summary with: veeksha-upload out/{sweep.name}" in said


def test_a_sweep_whose_run_is_interrupted_in_its_traffic_uploads_its_summary(tmp_path: Path) -> None:
    code, said = interrupt_after(tmp_path, "!expand [2, 3]", "{benchmark_timeout: 4}", "run directory", 1.0)
    assert code == 130, said
    (sweep,) = (tmp_path / "out").iterdir()
    started = [line.split()[-3] for line in said.splitlines() if UPLOADING in line]
    assert len(started) == 2 and started[1] == f"out/{sweep.name}", said  # the run's, then the summary's
    assert "sweep not uploaded" not in said, said


class CtrlCWhileSaying(io.StringIO):
    """A console whose write of a line holding `text` gets the Ctrl-C (a SIGINT as it is printed)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def write(self, s: str) -> int:
        if self.text in s:
            raise KeyboardInterrupt
        return super().write(s)


def test_a_ctrl_c_as_the_upload_is_announced_still_says_how_to_upload_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before the uploader started: its caller (a capacity search) took the Ctrl-C as already told,
    # and ended with exit 130 and not a word on how to upload.
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_DISABLED", raising=False)
    monkeypatch.setattr(sys, "stdout", CtrlCWhileSaying(UPLOADING))
    with pytest.raises(KeyboardInterrupt):
        upload(tmp_path, BenchmarkConfig(wandb=WandbConfig(enabled=True, mode="offline")))
    assert f"Upload it with: veeksha-upload {tmp_path}" in capsys.readouterr().err
