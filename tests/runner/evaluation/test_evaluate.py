"""evaluate_run on small synthetic run directories: every file and key of outputs.md."""

from __future__ import annotations

import csv
import subprocess
import sys

import orjson
import pytest
from PIL import Image
from veeksha.runner.evaluation.evaluate import evaluate_run
from veeksha.runner.evaluation.report import format_summary
from veeksha.shared.config import (
    BenchmarkConfig,
    LinearGraph,
    PerformanceEvaluator,
    SLOConfig,
    SyntheticSessions,
)
from veeksha.shared.errors import ContractError
from veeksha.shared.jsonio import read_json
from veeksha.shared.paths import DISTRIBUTION_METRICS, RunPaths

from .factory import request, trace_line, write_run

SUMMARY_KEYS = (
    "num_requests num_completed_requests num_errored_requests num_cancelled_requests error_rate "
    "cancellation_rate num_sessions num_completed_sessions num_errored_sessions num_incomplete_sessions "
    "observed_session_dispatch_rate target_session_dispatch_rate duration_s error_code_freq"
).split()
THROUGHPUT_KEYS = {
    "request_throughput", "output_token_throughput", "total_token_throughput", "goodput",
    "slo_attainment", "peak_output_token_throughput", "mean_in_flight_requests",
}  # fmt: skip
SLO_RESULT_KEYS = {
    "name", "metric", "percentile", "threshold", "observed_value", "met", "slo_metric_key",
    "lower_is_better", "num_samples",
}  # fmt: skip


def _cfg(slos=True) -> BenchmarkConfig:
    sessions = SyntheticSessions(session_graph=LinearGraph())
    if not slos:
        return BenchmarkConfig(session_generator=sessions)
    checked = [
        SLOConfig(name="P99 TTFC", metric="ttfc", value=0.5, percentile=0.99),
        SLOConfig(name="P90 E2E", metric="e2e", value=0.01, percentile=0.9),
    ]
    return BenchmarkConfig(session_generator=sessions, evaluators=[PerformanceEvaluator(slos=checked)])


def _records():
    """30 two-request sessions, one per second, plus an error and a warmup session."""
    records, trace = [], []
    for s in range(30):
        t = float(s)
        root = request(2 * s, sent=t, chunks=[t + 0.1, t + 0.13, t + 0.16], session=s, n_out=3)
        child = request(2 * s + 1, sent=t + 0.3, chunks=[t + 0.35, t + 0.4], session=s, node=1, delay=0.001)
        records += [root, child]
        trace += [trace_line(root, size=2), trace_line(child, size=2, parents=[0])]
    err = request(100, sent=30.0, chunks=[], status="error", done=30.2, session=30)
    warm = request(101, sent=0.0, chunks=[0.05], session=31, is_warmup=True)
    trace += [trace_line(err), trace_line(warm)]
    return [*records, err, warm], trace


def test_every_output_file_and_key(tmp_path):
    records, trace = _records()
    paths = write_run(tmp_path / "run", records, _cfg(), trace)
    ev = evaluate_run(paths.root)

    summary = read_json(paths.summary_stats)
    assert set(SUMMARY_KEYS) <= set(summary)
    for metric in DISTRIBUTION_METRICS:
        for stat in ("mean", "p50", "p90", "p95", "p99", "min", "max"):
            assert f"{metric}_{stat}" in summary
    assert summary["num_requests"] == 61 and summary["num_sessions"] == 31
    assert summary["num_completed_sessions"] == 30 and summary["num_errored_sessions"] == 1

    assert set(read_json(paths.throughput_metrics)) == THROUGHPUT_KEYS

    slo = read_json(paths.slo_results)
    assert set(slo) == {"all_slos_met", "results"} and slo["all_slos_met"] is False
    assert all(set(r) == SLO_RESULT_KEYS for r in slo["results"])
    assert [r["met"] for r in slo["results"]] == [True, False]
    assert ev.all_slos_met is False

    checks = read_json(paths.health_checks_json)
    assert set(checks) == {"all_passed", "checks"} and ev.all_health_passed == checks["all_passed"]
    text = paths.health_check_txt.read_text()
    assert "Result: " in text and "INTRA SESSION ARRIVAL LATENESS" in text

    prefill = read_json(paths.prefill_stats)
    assert prefill["num_requests"] == 60 and prefill["buckets"][0]["min_prompt_tokens"] == 0

    with paths.timeseries_csv.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 31 and rows[0]["elapsed_s"] == "0"

    for metric in DISTRIBUTION_METRICS:
        with paths.distribution_csv(metric).open() as f:
            table = list(csv.reader(f))
        assert table[0] == ["cdf", "value"] and len(table) == 102
        assert table[1][0] == "0.00" and table[-1][0] == "1.00"
        with Image.open(paths.distribution_png(metric)) as img:
            assert img.format == "PNG" and img.size[0] >= 600


def test_killed_run_with_a_torn_last_record(tmp_path):
    records, trace = _records()
    paths = write_run(tmp_path / "run", records, _cfg(slos=False), trace, tail=b'{"request_id": 7, "stat')
    ev = evaluate_run(paths.root, plots=False)
    assert ev.summary["num_requests"] == 61
    assert ev.all_slos_met is None and not paths.slo_results.exists()  # no SLOs configured
    assert ev.throughput["goodput"] is None


def test_killed_run_with_a_server_metrics_line_cut_off(tmp_path):
    """`veeksha-run evaluate` rebuilds a crashed run from its directory alone: a scraped line the crash
    cut inside a number is left out, and every metrics file is written."""
    records, trace = _records()
    paths = write_run(tmp_path / "run", records, _cfg(), trace)
    paths.server_metrics_csv.write_text(
        "elapsed_s,vllm:prefix_cache_hits_total,vllm:prefix_cache_queries_total\n1,,\n2,10.0,20.0\n3,1.5e-"
    )
    ev = evaluate_run(paths.root, rebuilt=True, plots=False)
    assert ev.summary["server_prefix_cache_hit_fraction"] == 0.5
    assert read_json(paths.summary_stats)["server_prefix_cache_hit_fraction"] == 0.5
    assert paths.throughput_metrics.exists() and paths.timeseries_csv.exists()


def test_live_timeseries_is_kept_unless_rebuilt(tmp_path):
    records, trace = _records()
    paths = write_run(tmp_path / "run", records, _cfg(), trace)
    paths.timeseries_csv.write_text("live\n")
    ev = evaluate_run(paths.root, plots=False)
    assert paths.timeseries_csv.read_text() == "live\n" and not ev.timeseries_written
    ev = evaluate_run(paths.root, rebuilt=True, plots=False)
    assert paths.timeseries_csv.read_text().startswith("elapsed_s,") and ev.timeseries_written


def test_not_a_run_directory(tmp_path):
    write_run(tmp_path, [])
    RunPaths(tmp_path).request_records.unlink()
    with pytest.raises(ContractError, match=r"request_level_metrics\.jsonl: file is missing"):
        evaluate_run(tmp_path)


def test_empty_run(tmp_path):
    paths = write_run(tmp_path / "run", [], _cfg())
    ev = evaluate_run(paths.root)
    assert ev.summary["num_requests"] == 0 and ev.summary["duration_s"] is None
    assert ev.all_slos_met is False  # no samples: not met
    assert paths.distribution_png("ttfc").exists()
    assert "requests  0" in format_summary(ev)


def test_console_summary(tmp_path):
    records, trace = _records()
    paths = write_run(tmp_path / "run", records, _cfg(), trace)
    text = format_summary(evaluate_run(paths.root, plots=False))
    assert "61: 60 completed, 1 errored, 0 cancelled" in text
    assert "PASS  P99 TTFC" in text and "FAIL  P90 E2E" in text
    assert "TTFC" in text and "TBC" in text and "TPOT" in text and "E2E" in text
    assert "goodput" in text and "health" in text


def _with_driver_steal(paths, steal_seconds: float) -> None:
    """run.json as a one-driver run on one core leaves it, with that much CPU steal."""
    info = orjson.loads(paths.run_json.read_bytes())
    driver = {
        "driver_id": 0,
        "cpu_seconds": 1.0,
        "cpu_steal_seconds": steal_seconds,
        "num_cpus": 1,
        "run_seconds": 10.0,
    }
    info["driver"] = {"cpu_seconds": 1.0, "drivers": [driver]}
    paths.run_json.write_bytes(orjson.dumps(info))


def test_console_says_when_the_hypervisor_took_the_drivers_cpu_time(tmp_path):
    records, trace = _records()
    for rec in records:
        rec["driver_id"] = 0  # as every record of a run with drivers has
    paths = write_run(tmp_path / "run", records, _cfg(), trace)
    _with_driver_steal(paths, 0.3)  # of its 10 s run
    text = format_summary(evaluate_run(paths.root, plots=False))
    assert "steal     the hypervisor took 3.0% of the time of the worst core of driver 0: latency" in text
    _with_driver_steal(paths, 0.01)  # 0.1 %: not worth a line
    assert "steal" not in format_summary(evaluate_run(paths.root, plots=False))


def test_driver_side_modules_do_not_import_matplotlib():
    code = (
        "import sys; import veeksha.runner.evaluation.request_metrics, veeksha.runner.evaluation.timeseries, "
        "veeksha.runner.evaluation.evaluate; print('matplotlib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_records_are_valid_json_lines(tmp_path):
    records, _ = _records()
    paths = write_run(tmp_path / "run", records)
    lines = paths.request_records.read_bytes().splitlines()  # an unclosed handle is a ResourceWarning
    assert all(orjson.loads(line)["request_id"] is not None for line in lines)


def test_console_goodput_says_its_share_is_of_the_successful_requests(tmp_path):
    # 3 successes that meet every SLO and 1 error: "100.00% met every SLO" read as if no request
    # had failed; the share is of the successful requests only.
    records = [request(i, sent=float(i), chunks=[i + 0.1, i + 0.2], session=i) for i in range(3)]
    records.append(request(3, sent=3.0, chunks=[], status="error"))
    loose = [SLOConfig(name="P99 TTFC", metric="ttfc", value=5.0, percentile=0.99)]
    cfg = BenchmarkConfig(
        session_generator=SyntheticSessions(session_graph=LinearGraph()),
        evaluators=[PerformanceEvaluator(slos=loose)],
    )
    text = format_summary(evaluate_run(write_run(tmp_path / "run", records, cfg).root, plots=False))
    assert "4: 3 completed, 1 errored" in text
    assert "(100.00% of successful requests met every SLO)" in text
