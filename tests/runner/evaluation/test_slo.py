"""SLO verdicts and per-request goodput."""

from __future__ import annotations

import pytest
from veeksha.runner.evaluation.slo import good_requests, slo_key, slo_results
from veeksha.runner.evaluation.throughput import build_throughput
from veeksha.runner.evaluation.timeseries import build_timeseries
from veeksha.shared.config import BenchmarkConfig, PerformanceEvaluator, SLOConfig

from .factory import request, run_data


def _cfg(*slos: SLOConfig) -> BenchmarkConfig:
    return BenchmarkConfig(evaluators=[PerformanceEvaluator(slos=list(slos))])


def _data(records, *slos):
    return run_data(records, _cfg(*slos))


def _five_ttfcs():
    # ttfc 0.1 … 0.5: p50 = 0.3 exactly
    return [request(i, sent=float(i), chunks=[i + 0.1 * (i + 1)]) for i in range(5)]


@pytest.mark.parametrize(
    ("percentile", "key"),
    [
        (0.99, "ttfc_p99"),
        (0.5, "ttfc_p50"),
        (0.999, "ttfc_p99.9"),
        (1.0, "ttfc_p100"),
        (0.95, "ttfc_p95"),
        (0.07, "ttfc_p7"),  # not p7.000000000000001, the double 0.07 · 100
        (0.9999, "ttfc_p99.99"),
        (0.12345678, "ttfc_p12.345678"),  # every digit written, not 6 significant ones (p12.3457)
        (1e-10, "ttfc_p0.00000001"),  # never an exponent
    ],
)
def test_slo_metric_key(percentile, key):
    assert slo_key("ttfc", percentile) == key


def test_distinct_percentiles_have_distinct_keys():
    """0.9999999 is not the maximum: its key must not read p100."""
    assert slo_key("ttfc", 0.9999999) == "ttfc_p99.99999"
    assert len({slo_key("ttfc", p) for p in (0.9999999, 0.99999999, 1.0, 0.123456789, 0.12345679)}) == 5


def test_slos_sharing_a_key_each_keep_their_own_result():
    """Two SLOs on one metric and percentile (two thresholds) share slo_metric_key; results is a list
    labelled by the unique SLO name, so neither verdict replaces the other."""
    loose = SLOConfig(name="P50 TTFC loose", metric="ttfc", value=1.0, percentile=0.5)
    tight = SLOConfig(name="P50 TTFC tight", metric="ttfc", value=0.1, percentile=0.5)
    results = slo_results(_data(_five_ttfcs(), loose, tight))["results"]
    assert [(r["name"], r["slo_metric_key"], r["met"]) for r in results] == [
        ("P50 TTFC loose", "ttfc_p50", True),
        ("P50 TTFC tight", "ttfc_p50", False),
    ]


def test_observed_exactly_at_the_threshold_passes():
    met = SLOConfig(name="P50 TTFC", metric="ttfc", value=0.3, percentile=0.5)
    missed = SLOConfig(name="P50 TTFC tight", metric="ttfc", value=0.29, percentile=0.5)
    res = slo_results(_data(_five_ttfcs(), met, missed))
    assert res["all_slos_met"] is False
    first, second = res["results"]
    assert first == {
        "name": "P50 TTFC",
        "metric": "ttfc",
        "percentile": 0.5,
        "threshold": 0.3,
        "observed_value": pytest.approx(0.3),
        "met": True,
        "slo_metric_key": "ttfc_p50",
        "lower_is_better": True,
        "num_samples": 5,
    }
    assert first["observed_value"] == 0.3  # exact, so the boundary case is decided exactly
    assert second["met"] is False


def test_no_samples_is_not_met():
    failed = [request(i, sent=float(i), chunks=[], status="error", done=i + 0.5) for i in range(3)]
    res = slo_results(_data(failed, SLOConfig(name="tpot", metric="tpot", value=1.0)))
    assert res["results"][0]["observed_value"] is None
    assert res["results"][0]["met"] is False and res["results"][0]["num_samples"] == 0
    assert res["all_slos_met"] is False


def test_e2e_means_end_to_end_latency_and_off_grid_percentiles_are_exact():
    res = slo_results(_data(_five_ttfcs(), SLOConfig(name="E2E", metric="e2e", value=1.0, percentile=0.999)))
    r = res["results"][0]
    assert r["metric"] == "end_to_end_latency" and r["slo_metric_key"] == "end_to_end_latency_p99.9"
    assert r["observed_value"] == pytest.approx(0.4 + 0.1 * 0.996)  # h = 4 · 0.999 = 3.996


def test_without_slos_there_are_no_results_and_no_goodput():
    data = _data(_five_ttfcs())
    assert slo_results(data) is None and good_requests(data) is None
    throughput = build_throughput(data, build_timeseries(data.records))
    assert throughput["goodput"] is None and throughput["slo_attainment"] is None


def test_goodput_counts_requests_meeting_every_threshold():
    records = [
        request(0, sent=0.0, chunks=[0.1, 0.12, 0.14], n_out=3),  # good
        request(1, sent=1.0, chunks=[1.6, 1.62], n_out=2),  # ttfc 0.6 > 0.5
        request(2, sent=2.0, chunks=[2.1, 2.12, 2.32], n_out=3),  # one gap of two > 0.05
        request(3, sent=3.0, chunks=[3.2], n_out=1),  # one token: no gap, no tpot → meets both
        request(4, sent=4.0, chunks=[], status="error", done=4.5),  # failed: not counted
    ]
    ttfc = SLOConfig(name="ttfc", metric="ttfc", value=0.5)
    tbc_p99 = SLOConfig(name="tbc", metric="tbc", value=0.05, percentile=0.99)
    tbc_p50 = SLOConfig(name="tbc", metric="tbc", value=0.05, percentile=0.5)
    tpot = SLOConfig(name="tpot", metric="tpot", value=0.05)
    assert good_requests(_data(records, ttfc, tbc_p99, tpot)) == 2  # requests 0 and 3
    assert good_requests(_data(records, ttfc, tbc_p50)) == 3  # half of request 2's gaps suffice
    data = _data(records, ttfc, tbc_p99)
    throughput = build_throughput(data, build_timeseries(data.records))
    assert data.duration_s == 4.5  # first dispatch 0.0 → last end 4.5
    assert throughput["goodput"] == pytest.approx(2 / 4.5)
    assert throughput["slo_attainment"] == 0.5  # 2 of the 4 completed requests


def test_a_requests_tbc_verdict_uses_its_own_gaps_after_the_time_series_is_built():
    # evaluate.py builds the time series beside the SLOs; it once sorted a second's gaps in the
    # run's own array, here giving request 0 both short gaps and request 1 both long ones.
    records = [
        request(i, sent=0.05 * i, chunks=[0.1 + c for c in (0.0, 0.01, 0.21)], n_out=3) for i in (0, 1)
    ]
    data = _data(records, SLOConfig(name="tbc", metric="tbc", value=0.05, percentile=0.5))
    assert good_requests(data) == 2  # each: gaps 0.01 and 0.2, half of them ≤ 0.05
    build_timeseries(data.records)
    assert good_requests(data) == 2


def _one_request_with_gaps(gaps: list[float]) -> dict:
    """A successful streamed request whose chunks arrive from 0.1 s on, these gaps apart."""
    chunks = [0.1]
    for gap in gaps:
        chunks.append(chunks[-1] + gap)
    return request(0, sent=0.0, chunks=chunks)


def test_a_tbc_slo_met_by_exactly_the_percentile_of_gaps_passes():
    # 7 of 100 gaps are ≤ 0.05: exactly 7 %. In floating point 0.07 * 100 is 7.000000000000001,
    # which once demanded an 8th good gap.
    record = _one_request_with_gaps([0.01] * 7 + [0.1] * 93)
    exactly = SLOConfig(name="tbc", metric="tbc", value=0.05, percentile=0.07)
    assert good_requests(_data([record], exactly)) == 1
    one_more = SLOConfig(name="tbc", metric="tbc", value=0.05, percentile=0.08)
    assert good_requests(_data([record], one_more)) == 0


@pytest.mark.parametrize(
    ("percentile", "needed"),
    [
        (0.07, 7),
        (0.14, 14),
        (0.28, 28),
        (0.29, 29),
        (0.55, 55),
        (0.58, 58),
        (0.075, 8),
        (0.99, 99),
        (1.0, 100),
    ],
)
def test_a_tbc_slo_needs_the_percentile_of_gaps_rounded_up_to_a_whole_gap(percentile, needed):
    # of 100 gaps: 7.5 % needs 8 good ones; the others are the percentiles whose product with 100
    # is not a whole number in floating point (0.29 · 100 = 28.999999999999996), and two plain ones
    slo = SLOConfig(name="tbc", metric="tbc", value=0.05, percentile=percentile)
    for good_gaps, verdict in ((needed, 1), (needed - 1, 0)):
        record = _one_request_with_gaps([0.01] * good_gaps + [0.1] * (100 - good_gaps))
        assert good_requests(_data([record], slo)) == verdict, f"{good_gaps} good gaps of 100"
