"""Ray is an optional extra (veeksha[ray]): a run without runtime.ray_address never loads it, in the
runner or in its driver processes, even where it is installed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.runner.helpers import VEEKSHA_RUN, no_plots_env, only_run_dir, read_jsonl

RUN = ["--server.type", "simulated", "--runtime.max_sessions", "3", "--runtime.num_drivers", "2"]


def test_a_local_run_with_two_drivers_never_imports_ray(tmp_path: Path) -> None:
    # -X importtime lists every module a process imports on its stderr; spawned drivers inherit it.
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", VEEKSHA_RUN, *RUN, "--output_dir", "out"],
        cwd=tmp_path,
        env=no_plots_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", proc.stderr, flags=re.MULTILINE)
    assert "veeksha.runner.driver.dispatcher" in imported  # the listing covers the drivers too
    assert imported.count("uvloop") >= 2  # both driver processes (the runner does not load uvloop)
    assert not [m for m in imported if m == "ray" or m.startswith("ray.")]
    assert len(read_jsonl(only_run_dir(tmp_path / "out").request_records)) == 3
