"""An output directory moved or deleted while a run writes into it: the run fails with one line saying
so, and never makes the directory again (a stub holding only run.json and server.log, which neither
`evaluate` nor any upload could ever read)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import orjson
import pytest
from veeksha.shared.paths import RUN_JSON, RunPaths

from tests.runner.helpers import VEEKSHA_RUN, no_plots_env, run_cli

QUICK = [
    "--server.type",
    "simulated",
    "--traffic_scheduler.interval_generator.arrival_rate",
    "20",
    "--runtime.benchmark_timeout",
    "4",
]


def _wait_for_run_json(output_dir: Path, proc: subprocess.Popen[str]) -> Path:
    deadline = time.monotonic() + 60
    while not list(output_dir.glob(f"*/{RUN_JSON}")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run directory never appeared"
        time.sleep(0.05)
    (found,) = output_dir.glob(f"*/{RUN_JSON}")
    return found.parent


@pytest.mark.parametrize("how", ["moved", "parent deleted"])
def test_an_output_directory_gone_mid_run_is_not_made_again(tmp_path: Path, how: str) -> None:
    proc = subprocess.Popen(
        [VEEKSHA_RUN, *QUICK, "--output_dir", "parent/out"],
        cwd=tmp_path,
        env=no_plots_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_dir = _wait_for_run_json(tmp_path / "parent" / "out", proc)
    time.sleep(2)  # mid-traffic
    if how == "moved":
        (tmp_path / "parent" / "out").rename(tmp_path / "moved")
    else:
        shutil.rmtree(tmp_path / "parent")
    _, stderr = proc.communicate(timeout=120)

    assert proc.returncode == 1, stderr
    assert not (tmp_path / "parent" / "out").exists(), sorted(
        p.name for p in (tmp_path / "parent").rglob("*")
    )
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    gone = "parent/out" if how == "moved" else "parent"
    assert last.startswith(f"veeksha-run: cannot write {run_dir.relative_to(tmp_path)}/"), last
    assert f"[Errno 2] No such file or directory ({gone} was moved or deleted while in use)" in last, last
    if how == "moved":  # the run's files are where they were moved to, and `evaluate` finishes them
        moved = RunPaths(tmp_path / "moved" / run_dir.name)
        again = run_cli(["evaluate", str(moved.root)], cwd=tmp_path)
        assert again.returncode == 1, again.stderr  # (a run cut short: as the run itself exited)
        assert "Traceback" not in again.stderr and moved.summary_stats.is_file()
        info = orjson.loads(moved.run_json.read_bytes())
        # Its final run.json could not be written where the run was: it says `running` of a process
        # that has gone, so it is marked crashed, and finished.
        assert info["finished_at"] and info["status"] == "crashed", info
