"""The output-directory contract (outputs.md), checked file by file and key by key on a real run
against the simulated server: what the uploader and `veeksha-run evaluate` rely on."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import orjson
import pytest
from veeksha.runner.run_dir import RunDir
from veeksha.shared.config_loader import build_benchmark_config
from veeksha.shared.paths import DISTRIBUTION_METRICS, RunPaths
from veeksha.shared.records import (
    DISPATCH_TRACE_FIELDS,
    EVALUATION_ERROR,
    REQUEST_RECORD_FIELDS,
    RUN_JSON_FIELDS,
    SLO_RESULT_FIELDS,
    SUMMARY_STAT_SUFFIXES,
    TIMESERIES_COLUMNS,
)

from tests.runner.helpers import read_jsonl

SUMMARY_KEYS = {
    "num_requests",
    "num_completed_requests",
    "num_errored_requests",
    "num_cancelled_requests",
    "error_rate",
    "cancellation_rate",
    "num_sessions",
    "num_completed_sessions",
    "num_errored_sessions",
    "num_incomplete_sessions",
    "observed_session_dispatch_rate",
    "target_session_dispatch_rate",
    "duration_s",
    "error_code_freq",
}
THROUGHPUT_KEYS = {
    "request_throughput",
    "output_token_throughput",
    "total_token_throughput",
    "goodput",
    "slo_attainment",
    "peak_output_token_throughput",
    "mean_in_flight_requests",
}
HEALTH_CHECKS = {
    "session_dispatch_rate",
    "concurrency",
    "intra_session_arrival_lateness",
    "prompt_length",
    "output_length",
    "lifecycle_delays",
    "error_rate",
}


@pytest.fixture
def run(shared_run: RunPaths) -> RunPaths:
    """The session's shared real run (tests/runner/conftest.py: SHARED_RUN_CONFIG)."""
    return shared_run


def test_run_directory_name(run: RunPaths) -> None:
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{8}", run.root.name)


def test_run_json(run: RunPaths) -> None:
    info = orjson.loads(run.run_json.read_bytes())
    # Only a run left without metrics has `evaluation_error` (it goes when they are written).
    assert set(info) == set(RUN_JSON_FIELDS) - {EVALUATION_ERROR}
    assert info["status"] in ("completed", "timeout")
    assert info["config_sha256"].startswith(run.root.name.rsplit("-", 1)[1])
    assert info["sweep"] is None and info["capacity_search"] is None


def test_run_json_of_a_run_left_without_metrics_holds_only_listed_keys(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path, build_benchmark_config({}), argv=["veeksha-run"])
    run_dir.leave_unevaluated("completed", None, "the evaluation failed")
    info = orjson.loads(run_dir.paths.run_json.read_bytes())
    assert EVALUATION_ERROR in info and set(info) <= set(RUN_JSON_FIELDS)


def test_request_records_and_trace(run: RunPaths) -> None:
    records = read_jsonl(run.request_records)
    trace = read_jsonl(run.dispatch_trace)
    assert records and all(list(r) == list(REQUEST_RECORD_FIELDS) for r in records)
    assert all(set(DISPATCH_TRACE_FIELDS) <= set(t) for t in trace)
    assert len(records) == len(trace)
    for r in records:
        if r["status"] != "success":
            continue
        assert r["ttfc"] > 0 and isinstance(r["tbc"], list)
        assert r["normalized_end_to_end_latency"] == pytest.approx(
            r["end_to_end_latency"] / r["num_output_tokens"]
        )


def test_summary_stats(run: RunPaths) -> None:
    summary = orjson.loads(run.summary_stats.read_bytes())
    assert SUMMARY_KEYS <= set(summary)
    for metric in DISTRIBUTION_METRICS:
        for suffix in SUMMARY_STAT_SUFFIXES:
            assert f"{metric}_{suffix}" in summary, f"{metric}_{suffix}"
    assert summary["target_session_dispatch_rate"] == 10
    # warmup requests are recorded but counted apart
    assert summary["num_requests"] + summary["num_warmup_requests"] == len(read_jsonl(run.request_records))
    assert all(re.fullmatch(r"[a-z0-9_]+", k) for k in summary)


def test_throughput_metrics(run: RunPaths) -> None:
    throughput = orjson.loads(run.throughput_metrics.read_bytes())
    assert THROUGHPUT_KEYS <= set(throughput)
    assert throughput["slo_attainment"] == 0.0  # nothing finishes within 1 µs
    assert throughput["goodput"] == 0.0
    assert throughput["output_token_throughput"] > 0


def test_slo_results(run: RunPaths) -> None:
    slo = orjson.loads(run.slo_results.read_bytes())
    assert slo["all_slos_met"] is False
    ttfc, _tbc, e2e = slo["results"]
    assert set(SLO_RESULT_FIELDS) <= set(ttfc)
    assert (ttfc["slo_metric_key"], ttfc["met"]) == ("ttfc_p99", True)
    assert (e2e["slo_metric_key"], e2e["met"]) == ("end_to_end_latency_p90", False)


def test_health_checks_txt_and_json_agree(run: RunPaths) -> None:
    checks = orjson.loads(run.health_checks_json.read_bytes())
    assert {c["name"] for c in checks["checks"]} >= HEALTH_CHECKS
    text = run.health_check_txt.read_text()
    for c in checks["checks"]:
        block = re.search(rf"={{10,}}\n{c['name'].upper().replace('_', ' ')}\n={{10,}}\nResult: (\w+)", text)
        assert block, c["name"]
        assert block.group(1) == c["result"]


def test_prefill_stats(run: RunPaths) -> None:
    assert orjson.loads(run.prefill_stats.read_bytes())


def test_timeseries_has_one_row_per_second(run: RunPaths) -> None:
    with run.timeseries_csv.open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == TIMESERIES_COLUMNS
    assert [int(float(r["elapsed_s"])) for r in rows] == list(range(len(rows)))
    assert len(rows) >= 6
    measured = [r for r in read_jsonl(run.request_records) if not r["is_warmup"]]
    assert sum(int(r["dispatched"]) for r in rows) == len(measured)  # the series leaves warmup out


@pytest.mark.parametrize("metric", DISTRIBUTION_METRICS)
def test_distribution_csv_and_png(run: RunPaths, metric: str) -> None:
    with run.distribution_csv(metric).open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["cdf", "value"]
    assert [round(float(r["cdf"]), 2) for r in rows] == [round(i / 100, 2) for i in range(101)]
    values = [float(r["value"]) for r in rows]
    assert values == sorted(values)
    png = run.distribution_png(metric).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_timeseries_png_draws_the_run_over_time(run: RunPaths) -> None:
    png = run.timeseries_png.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 30_000


def test_no_file_outside_the_contract(run: RunPaths) -> None:
    allowed = {"run.json", "config.yml", "health_check_results.txt", "metrics", "traces", "server.log"}
    assert {p.name for p in run.root.iterdir()} <= allowed
    assert not [p for p in Path(run.root).rglob("*.tmp")]
