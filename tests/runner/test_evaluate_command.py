"""`veeksha-run evaluate` as a user runs it: what VEEKSHA_NO_PLOTS means, and what it says of a sweep or
capacity-search directory that has nothing left to finish. Real `veeksha-run` processes, real files."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import orjson
import pytest
from veeksha.runner.evaluation.evaluate import NO_PLOTS_ENV, plots_off
from veeksha.shared.paths import CAPSEARCH_RESULTS, DISTRIBUTION_METRICS, SWEEP_MANIFEST, RunPaths

from tests.runner.helpers import run_cli


def pngs(paths: RunPaths) -> list[Path]:
    return [paths.timeseries_png, *(paths.distribution_png(m) for m in DISTRIBUTION_METRICS)]


@pytest.fixture
def run_copy(shared_run: RunPaths, tmp_path: Path) -> RunPaths:
    """A copy of the session's shared run, its plots drawn."""
    copy = RunPaths(Path(shutil.copytree(shared_run.root, tmp_path / shared_run.root.name)))
    assert all(png.is_file() for png in pngs(copy))
    return copy


@pytest.mark.parametrize(("value", "off"), [("0", False), ("false", False), ("YES", True), ("1", True)])
def test_only_1_true_or_yes_in_veeksha_no_plots_turns_the_plots_off(
    run_copy: RunPaths, value: str, off: bool
) -> None:
    """`VEEKSHA_NO_PLOTS=0` turned them off and deleted the PNGs the run had drawn."""
    proc = run_cli(
        ["evaluate", str(run_copy.root)], cwd=run_copy.root.parent, env={NO_PLOTS_ENV: value}, plots=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [png.exists() for png in pngs(run_copy)] == [not off] * len(pngs(run_copy))


def test_what_veeksha_no_plots_values_mean() -> None:
    assert not plots_off({})
    assert not any(plots_off({NO_PLOTS_ENV: v}) for v in ("", "0", "false", "no", "off", "2"))
    assert all(plots_off({NO_PLOTS_ENV: v}) for v in ("1", "true", "True", "yes", "YES", " 1 "))


QUICK = """
output_dir: out
server: {type: simulated}
session_generator:
  type: synthetic
  channels: [{type: text, body_length_generator: {type: fixed, value: 50}}]
  output_spec: {text: {output_length_generator: {type: fixed, value: 4}}}
runtime: {max_sessions: 2, benchmark_timeout: 5}
"""


def test_evaluate_of_a_finished_sweep_says_there_was_nothing_to_finish(tmp_path: Path) -> None:
    """It printed nothing at all (exit 0): the user could not tell it had run."""
    (tmp_path / "c.veeksha.yml").write_text(textwrap.dedent(QUICK) + "seed: !expand [1, 2]\n")
    assert run_cli(["--config", "c.veeksha.yml"], cwd=tmp_path).returncode == 0
    (sweep,) = (p for p in (tmp_path / "out").iterdir() if (p / SWEEP_MANIFEST).is_file())

    proc = run_cli(["evaluate", str(sweep)], cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"veeksha-run: sweep {sweep} is completed: no run left to finish", (
        proc.stdout
    )


def test_evaluate_of_a_finished_capacity_search_says_there_was_nothing_to_finish(tmp_path: Path) -> None:
    search = {
        "output_dir": str(tmp_path / "cs"),
        "start_value": 1,
        "max_value": 1,
        "max_iterations": 1,
        "benchmark_config": {
            "server": {"type": "simulated"},
            "traffic_scheduler": {"type": "concurrent", "target_concurrent_sessions": 1},
            "evaluators": [{"type": "performance", "slos": [{"name": "ttfc", "metric": "ttfc", "value": 5}]}],
            "runtime": {"benchmark_timeout": 1},
        },
    }
    (tmp_path / "s.veeksha.yml").write_text(orjson.dumps(search).decode())  # JSON is YAML
    assert run_cli(["capacity-search", "--config", "s.veeksha.yml"], cwd=tmp_path).returncode == 0
    (root,) = (p for p in (tmp_path / "cs").iterdir() if (p / CAPSEARCH_RESULTS).is_file())

    proc = run_cli(["evaluate", str(root)], cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    expected = f"veeksha-run: capacity search {root} is completed: no attempt left to finish"
    assert proc.stdout.strip() == expected, proc.stdout
