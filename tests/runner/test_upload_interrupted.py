"""Ctrl-C while the run's own upload goes: the upload stops, the run says how to upload it later, and
nothing starts another upload. A sweep went straight on to upload its summary (which uploads every run
of the sweep again): the user who stopped a slow upload got a second one.

Real `veeksha-run` processes and uploader, writing offline W&B runs (the SDK's start takes seconds, so
the upload is still going half a second after it began, when the Ctrl-C, SIGINT to the process group,
comes).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.runner.helpers import VEEKSHA_RUN, no_plots_env

CONFIG = """
output_dir: out
server: {type: simulated}
runtime: {max_sessions: 2}
traffic_scheduler: {type: rate, interval_generator: {type: poisson, arrival_rate: RATE}}
wandb: {enabled: true, mode: offline}
"""
UPLOADING = "writing an offline W&B run"


def interrupt_during_upload(tmp_path: Path, rate: str) -> tuple[int, str]:
    (tmp_path / "c.veeksha.yml").write_text(CONFIG.replace("RATE", rate))
    env = no_plots_env({"WANDB_MODE": "", "WANDB_DISABLED": ""})
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
        if UPLOADING in line:
            time.sleep(0.5)
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
