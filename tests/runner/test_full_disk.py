"""A full disk's one line: it names the file (or, when the error does not, the run directory), and it
advises `veeksha-run evaluate` only for a run that has a run.json, the one thing `evaluate` needs.

Real processes; the full disk is a file size limit (RLIMIT_FSIZE: writes past it fail with EFBIG, as
they fail with ENOSPC on a full disk), which needs no privilege to set up.
"""

from __future__ import annotations

import os
import resource
import subprocess
from pathlib import Path

from veeksha.runner.evaluation.evaluate import NO_PLOTS_ENV

from tests.runner.helpers import VEEKSHA_RUN, no_plots_env, only_run_dir, run_cli

QUICK = ["--server.type", "simulated", "--runtime.benchmark_timeout", "2", "--output_dir", "out"]
EVALUATE_HINT = "free space, then `veeksha-run evaluate RUN_DIR` finishes the run from its records"


def run_with_files_up_to(limit: int, args: list[str], cwd: Path, env: dict[str, str]):
    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return subprocess.run(
        [VEEKSHA_RUN, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=small_files,
    )


def test_a_write_that_does_not_name_its_file_names_the_run_directory(tmp_path: Path) -> None:
    # The plots (written by a library, which does not name its file) fail: the line said "cannot write
    # the output directory", naming no path at all.
    assert run_cli(QUICK, cwd=tmp_path).returncode == 0
    paths = only_run_dir(tmp_path / "out")
    with_plots = {k: v for k, v in os.environ.items() if k != NO_PLOTS_ENV}

    proc = run_with_files_up_to(5000, ["evaluate", str(paths.root)], tmp_path, with_plots)

    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("veeksha-run: cannot write ") and "[Errno 27] File too large" in line, line
    assert "the output directory" not in line and str(paths.root) in line, line
    assert line.endswith(EVALUATE_HINT)  # it has its run.json: `evaluate` finishes it


def test_a_run_that_could_not_write_its_run_json_is_not_sent_to_evaluate(tmp_path: Path) -> None:
    # The disk fills before run.json is written: the line advised `evaluate`, which then refused the
    # directory (exit 2: not a run directory).
    proc = run_with_files_up_to(300, QUICK, tmp_path, no_plots_env())

    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("veeksha-run: cannot write ") and "config.yml: [Errno 27] File too large" in line
    assert "evaluate" not in line, line
    paths = only_run_dir(tmp_path / "out")
    assert not paths.run_json.exists()
    assert run_cli(["evaluate", str(paths.root)], cwd=tmp_path).returncode == 2  # the advice was wrong
