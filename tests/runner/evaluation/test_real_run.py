"""Contract test: a real `veeksha-run` against the simulated server, then `veeksha-run evaluate`.

Every file and key of outputs.md that evaluation writes, the live time series equal to the rebuilt
one, and `--strict` exit codes.
"""

from __future__ import annotations

import csv
import shutil

import orjson
import pytest
from veeksha.shared.paths import DISTRIBUTION_METRICS, RunPaths
from veeksha.shared.records import REQUEST_RECORD_FIELDS

from ..helpers import run_cli


@pytest.fixture
def run(shared_run: RunPaths) -> RunPaths:
    """The session's shared real run (tests/runner/conftest.py: SHARED_RUN_CONFIG); copied before
    `evaluate` rewrites anything."""
    return shared_run


def _json(path):
    return orjson.loads(path.read_bytes())


def test_records_follow_the_contract(run):
    lines = [orjson.loads(line) for line in run.request_records.read_bytes().splitlines()]
    assert lines and all(tuple(rec) == REQUEST_RECORD_FIELDS for rec in lines)
    assert any(rec["is_warmup"] for rec in lines) and any(not rec["is_warmup"] for rec in lines)
    ok = [r for r in lines if r["status"] == "success"]
    assert ok and all(r["ttfc"] > 0 and r["end_to_end_latency"] >= r["ttfc"] for r in ok)
    assert all(isinstance(r["tbc"], list) and all(g >= 0 for g in r["tbc"]) for r in ok)


def test_every_evaluation_file_exists_with_its_keys(run):
    summary = _json(run.summary_stats)
    assert summary["num_requests"] > 0 and summary["num_warmup_requests"] > 0
    for metric in DISTRIBUTION_METRICS:
        assert summary[f"{metric}_p99"] is not None, metric
        assert run.distribution_csv(metric).read_text().count("\n") == 102
        assert run.distribution_png(metric).stat().st_size > 10_000
    assert summary["target_session_dispatch_rate"] == 10
    throughput = _json(run.throughput_metrics)
    assert throughput["goodput"] == 0  # the impossible E2E threshold fails every request
    assert throughput["peak_output_token_throughput"] > 0
    slo = _json(run.slo_results)
    assert [r["met"] for r in slo["results"]] == [True, True, False]
    assert [r["slo_metric_key"] for r in slo["results"]] == ["ttfc_p99", "tbc_p50", "end_to_end_latency_p90"]
    health = _json(run.health_checks_json)
    names = {c["name"] for c in health["checks"]}
    assert names >= {"session_dispatch_rate", "lifecycle_delays", "error_rate"}
    assert "Result: " in run.health_check_txt.read_text()
    assert _json(run.prefill_stats)["num_requests"] == summary["num_completed_requests"]


def test_live_time_series_equals_the_rebuild(run, tmp_path):
    live = run.timeseries_csv.read_bytes()
    with run.timeseries_csv.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 4 and sum(int(r["completed"]) for r in rows) > 0
    copy = RunPaths(tmp_path / "copy")
    shutil.copytree(run.root, copy.root)
    proc = run_cli(["evaluate", str(copy.root)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert copy.timeseries_csv.read_bytes() == live
    assert "FAIL  impossible E2E" in proc.stdout


def test_strict_evaluate_fails_on_a_failed_slo(run, tmp_path):
    copy = RunPaths(tmp_path / "copy")
    shutil.copytree(run.root, copy.root)
    assert run_cli(["evaluate", "--strict", str(copy.root)], cwd=tmp_path).returncode == 1


def test_evaluate_with_plots_off_leaves_no_plot_of_the_old_metrics(run, tmp_path):
    copy = RunPaths(tmp_path / "copy")
    shutil.copytree(run.root, copy.root)
    plots = [copy.timeseries_png, *(copy.distribution_png(metric) for metric in DISTRIBUTION_METRICS)]
    assert all(png.exists() for png in plots)  # the shared run draws them
    proc = run_cli(["evaluate", str(copy.root)], cwd=tmp_path)  # VEEKSHA_NO_PLOTS=1
    assert proc.returncode == 0, proc.stderr
    # The CSVs were rewritten: a PNG left from before would no longer match them.
    assert [png.name for png in plots if png.exists()] == []
    assert all(copy.distribution_csv(metric).exists() for metric in DISTRIBUTION_METRICS)
