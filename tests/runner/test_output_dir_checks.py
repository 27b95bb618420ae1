"""An output_dir that runs cannot be written under, or should not be, is a config error (exit 2) found
before anything is made, also by --dry-run: a name too long for the filesystem, or a folder inside a
run directory (its runs were then found by no `veeksha-upload --recursive` of the tree)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml
from veeksha.shared.paths import RunPaths

from tests.runner.helpers import run_cli

QUICK = ["--server.type", "simulated", "--runtime.benchmark_timeout", "1"]
TOO_LONG = "é" * 130  # 130 characters, 260 bytes: over the 255 bytes most filesystems allow a name


def refused(tmp_path: Path, args: list[str], cwd: Path | None = None) -> str:
    """The one line `veeksha-run ARGS` exits 2 with."""
    proc = run_cli(args, cwd=cwd or tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "run directory" not in proc.stdout  # nothing was started
    (line,) = proc.stderr.strip().splitlines()
    return line


def search_config(tmp_path: Path, output_dir: str) -> Path:
    config = {
        "output_dir": output_dir,
        "start_value": 2,
        "max_value": 4,
        "benchmark_config": {
            "server": {"type": "simulated"},
            "evaluators": [
                {
                    "type": "performance",
                    "slos": [{"name": "p99", "metric": "ttfc", "percentile": 0.99, "value": 5}],
                }
            ],
        },
    }
    path = tmp_path / "search.veeksha.yml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return path


# ---------------------------------------------------------------- names too long


@pytest.mark.parametrize("flags", [["--dry-run"], []], ids=["dry-run", "run"])
def test_an_output_dir_with_a_name_too_long_is_refused_before_anything_is_made(
    tmp_path: Path, flags: list[str]
) -> None:
    # It passed --dry-run, then the run failed with "[Errno 36] File name too long" (exit 1) once its
    # server was up, leaving x/sub/ behind.
    line = refused(tmp_path, [*QUICK, "--output_dir", f"x/sub/{TOO_LONG}", *flags])

    assert line == (
        "veeksha-run: config error at output_dir: the folder name 'éééééééééééééééééééé...' in it is "
        "260 bytes (130 characters), more than the 255 bytes a name may have; choose a shorter output_dir"
    )
    assert not (tmp_path / "x").exists()


def test_a_name_is_measured_in_bytes_against_the_filesystems_limit(tmp_path: Path) -> None:
    assert os.pathconf(tmp_path, "PC_NAME_MAX") == 255  # (what the names below are made against)
    fits = "é" * 127  # 254 bytes
    proc = run_cli([*QUICK, "--output_dir", f"x/{fits}", "--dry-run"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = refused(tmp_path, [*QUICK, "--output_dir", f"x/{fits}é", "--dry-run"])
    assert "is 256 bytes (128 characters), more than the 255 bytes" in line, line


def test_a_capacity_search_output_dir_with_a_name_too_long_is_refused(tmp_path: Path) -> None:
    config = search_config(tmp_path, f"out/{TOO_LONG}")
    for flags in (["--dry-run"], []):
        line = refused(tmp_path, ["capacity-search", "--config", str(config), *flags])
        assert line.startswith("veeksha-run: config error at output_dir: the folder name 'éééé"), line
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- inside a run directory


def test_an_output_dir_inside_a_run_directory_is_refused(shared_run: RunPaths, tmp_path: Path) -> None:
    run = RunPaths(Path(shutil.copytree(shared_run.root, tmp_path / "out" / shared_run.root.name)))
    before = sorted(p.relative_to(run.root) for p in run.root.rglob("*"))

    for flags in (["--dry-run"], []):
        line = refused(tmp_path, [*QUICK, "--output_dir", f"out/{run.root.name}/metrics", *flags])
        assert line == (
            f"veeksha-run: config error at output_dir: out/{run.root.name}/metrics is inside the run "
            f"directory {run.root}, whose files are veeksha-run's own; choose another output_dir, outside it"
        )
    line = refused(tmp_path, [*QUICK, "--output_dir", f"out/{run.root.name}", "--dry-run"])
    assert f"out/{run.root.name} is a run directory, whose files" in line, line
    assert sorted(p.relative_to(run.root) for p in run.root.rglob("*")) == before  # nothing was added


def test_a_capacity_search_output_dir_inside_a_run_directory_is_refused(
    shared_run: RunPaths, tmp_path: Path
) -> None:
    config = search_config(tmp_path, str(shared_run.traces / "searches"))
    line = refused(tmp_path, ["capacity-search", "--config", str(config), "--dry-run"])
    assert f"is inside the run directory {shared_run.root}" in line, line


def test_an_output_dir_beside_the_run_directory_it_is_named_from_is_accepted(
    shared_run: RunPaths, tmp_path: Path
) -> None:
    # `../other` from inside a run directory: beside it, not in it.
    proc = run_cli([*QUICK, "--output_dir", "../other", "--dry-run"], cwd=shared_run.root)
    assert proc.returncode == 0, proc.stderr
