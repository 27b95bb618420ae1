"""summary_stats.json and throughput_metrics.json on a hand-built run."""

from __future__ import annotations

import pytest
from veeksha.runner.evaluation.summary import build_summary, observed_session_rate
from veeksha.runner.evaluation.throughput import build_throughput
from veeksha.runner.evaluation.timeseries import build_timeseries
from veeksha.shared.config import BenchmarkConfig, ConcurrentTraffic, TraceSessions
from veeksha.shared.paths import DISTRIBUTION_METRICS

from .factory import request, run_data, trace_line

REQUIRED = (
    "num_requests num_completed_requests num_errored_requests num_cancelled_requests error_rate "
    "cancellation_rate num_sessions num_completed_sessions num_errored_sessions num_incomplete_sessions "
    "observed_session_dispatch_rate target_session_dispatch_rate duration_s error_code_freq"
).split()


def _run():
    """Four measured sessions (one of each fate) and one warmup session."""
    warm = request(90, sent=0.0, chunks=[0.5], session=9, is_warmup=True)
    s1 = [
        request(0, sent=1.0, chunks=[1.1, 1.3], session=1),  # completed session, 2 of 2
        request(1, sent=2.0, chunks=[2.2, 2.3, 2.5], session=1, node=1),
    ]
    s2 = [
        request(2, sent=1.5, chunks=[], session=2, status="error", done=1.7),  # errored
        request(3, sent=1.5, chunks=[], session=2, node=1, status="cancelled", http_status=None),
    ]
    s2[1].update(scheduler_dispatched_at=None, client_picked_up_at=None, client_completed_at=None,
                 scheduler_ready_at=None, dispatch_delay=None, result_processed_at=1.7)  # fmt: skip
    s3 = [request(4, sent=3.0, chunks=[3.5], session=3)]  # 1 of 3 sent: incomplete
    s4 = [
        request(5, sent=4.0, chunks=[4.2], session=4),  # then cancelled at shutdown: incomplete
        request(6, sent=4.5, chunks=[], session=4, node=1, status="cancelled", done=5.0, http_status=None),
    ]
    records = [warm, *s1, *s2, *s3, *s4]
    sizes = {9: 1, 1: 2, 2: 2, 3: 3, 4: 2}
    trace = records_from_trace(records, sizes)
    return records, trace


def records_from_trace(records, sizes):
    import polars as pl

    lines = [
        trace_line(r, size=sizes[r["session_id"]], parents=[0] if r["node_id"] else None) for r in records
    ]
    return pl.DataFrame(
        {
            "request_id": [t["request_id"] for t in lines],
            "session_id": [t["session_id"] for t in lines],
            "session_size": [t["session_size"] for t in lines],
            "is_root": [not t["parent_nodes"] for t in lines],
        }
    )


def _data(cfg=None):
    records, trace = _run()
    return run_data(records, cfg, trace)


def test_counts_sessions_and_rates():
    s = build_summary(_data())
    assert set(REQUIRED) <= set(s)
    assert (s["num_requests"], s["num_completed_requests"]) == (7, 4)  # warmup left out
    assert (s["num_errored_requests"], s["num_cancelled_requests"], s["num_warmup_requests"]) == (1, 2, 1)
    # Rates are over the 6 requests sent: request 3 was not (its session's first request failed).
    assert s["num_dispatched_requests"] == 6
    assert s["error_rate"] == pytest.approx(1 / 6) and s["cancellation_rate"] == pytest.approx(1 / 6)
    assert (s["num_sessions"], s["num_completed_sessions"]) == (4, 1)
    assert (s["num_errored_sessions"], s["num_incomplete_sessions"]) == (1, 2)
    # Errored requests only (error, timeout): the 2 cancelled ones are in cancellation_rate.
    assert s["error_code_freq"] == {"500": 1}
    assert s["duration_s"] == 4.0  # first dispatch 1.0 → last end 5.0
    # 4 sessions started at 1.0, 1.5, 3.0, 4.0, counted from the warmup session's dispatch (0.0)
    assert s["observed_session_dispatch_rate"] == 1.0
    assert s["target_session_dispatch_rate"] == 1.0  # default: poisson, 1 session/s


def test_distribution_keys_and_values():
    s = build_summary(_data())
    for metric in DISTRIBUTION_METRICS:
        for stat in ("mean", "p50", "p90", "p95", "p99", "min", "max"):
            assert f"{metric}_{stat}" in s
    assert s["session_duration_p50"] == 1.5  # only the completed session: 1.0 → 2.5
    assert s["ttfc_min"] == pytest.approx(0.1) and s["ttfc_max"] == pytest.approx(0.5)
    # tbc pools every gap of every successful measured request: 0.2, 0.1, 0.2
    assert s["tbc_mean"] == pytest.approx(0.5 / 3) and s["tbc_max"] == pytest.approx(0.2)
    assert s["num_output_tokens_mean"] == pytest.approx(7 / 4)


def test_target_rate_only_for_rate_traffic():
    cfg = BenchmarkConfig(traffic_scheduler=ConcurrentTraffic(target_concurrent_sessions=2))
    assert build_summary(_data(cfg))["target_session_dispatch_rate"] is None


def test_throughput():
    data = _data()
    t = build_throughput(data, build_timeseries(data.records))
    assert set(t) == {
        "request_throughput", "output_token_throughput", "total_token_throughput", "goodput",
        "slo_attainment", "peak_output_token_throughput", "mean_in_flight_requests",
    }  # fmt: skip
    assert t["request_throughput"] == 4 / 4.0
    assert t["output_token_throughput"] == 7 / 4.0
    assert t["total_token_throughput"] == (7 + 400) / 4.0  # 4 × 100 prompt tokens
    # in flight: 0.3 + 0.5 + 0.2 (error) + 0.5 + 0.2 + 0.5 (cancelled at 5.0) seconds
    assert t["mean_in_flight_requests"] == pytest.approx(2.2 / 4.0)
    assert t["peak_output_token_throughput"] == 3.0  # request 1's three chunks in second 2


def test_the_servers_cache_hit_fraction_comes_from_its_scraped_rates(tmp_path):
    from veeksha.runner.evaluation.summary import server_cache_hit_fraction

    csv = tmp_path / "server_metrics.csv"
    csv.write_text(
        "elapsed_s,vllm:prefix_cache_hits_total,vllm:prefix_cache_queries_total\n"
        "1.0,,\n2.0,10.0,100.0\n3.0,30.0,100.0\n"
    )
    assert server_cache_hit_fraction(csv) == 0.2  # (10 + 30) / (100 + 100)
    csv.write_text("elapsed_s,vllm:num_requests_running\n1.0,3\n")
    assert server_cache_hit_fraction(csv) is None  # a server without those counters
    assert server_cache_hit_fraction(tmp_path / "absent.csv") is None
    # A row after failed (or starved) scrapes holds the rate over a longer interval: weighted by it.
    csv.write_text(
        "elapsed_s,vllm:prefix_cache_hits_total,vllm:prefix_cache_queries_total\n"
        "1.0,,\n2.0,100.0,100.0\n12.0,0.0,100.0\n"
    )
    assert server_cache_hit_fraction(csv) == pytest.approx(100 / 1100)  # not (100 + 0) / (100 + 100)


CACHE_HEADER = "elapsed_s,vllm:prefix_cache_hits_total,vllm:prefix_cache_queries_total\n"


@pytest.mark.parametrize("cut", ["3,1.5e-", "3,-", "3,1.5"])  # a number cut short, or a cell short
def test_a_server_metrics_line_cut_off_by_a_crash_is_left_out_of_the_cache_hit_fraction(tmp_path, cut):
    """The scraper appends a line a second; a crash mid-write leaves a last line without its newline.
    It is left out (as the uploader leaves it out): no crash on a number cut short, and no hits
    counted without their queries from a line whose cut still parses ((10 + 1.5) / 20 = 0.575)."""
    from veeksha.runner.evaluation.summary import server_cache_hit_fraction

    csv = tmp_path / "server_metrics.csv"
    csv.write_text(CACHE_HEADER + "1,,\n2,10.0,20.0\n" + cut)
    assert server_cache_hit_fraction(csv) == 0.5


def test_a_server_metrics_row_with_a_value_that_is_no_number_is_left_out_whole(tmp_path):
    """A complete line may still hold a stray value: evaluation goes on, and the row's queries go
    with its unreadable hits (counting them alone would lower the fraction). Empty cells keep
    meaning no rate."""
    from veeksha.runner.evaluation.summary import server_cache_hit_fraction

    csv = tmp_path / "server_metrics.csv"
    csv.write_text(CACHE_HEADER + '1,,\n2,10.0,20.0\n3,x,20.0\n4,"5.0,10.0\n5,5.0,10.0\n')
    assert server_cache_hit_fraction(csv) == pytest.approx(15 / 30)


def test_observed_session_rate_counts_only_sessions_after_the_last_warmup_session():
    # Two closed-loop slots, the second ramped in late: its warmup session starts at 1.0 s, after
    # four measured sessions of the first slot. Counting those against the window from 1.0 s gave
    # 12 sessions / 0.8 s = 15/s for a true 10/s.
    records = [
        request(100, sent=0.0, chunks=[0.1], is_warmup=True),
        request(101, sent=1.0, chunks=[1.1], is_warmup=True),
    ]
    records += [
        request(i, sent=0.2 * (i + 1), chunks=[0.2 * (i + 1) + 0.1]) for i in range(4)
    ]  # 0.2 .. 0.8 s
    records += [
        request(10 + i, sent=1.0 + 0.1 * (i + 1), chunks=[1.15 + 0.1 * i]) for i in range(8)
    ]  # 1.1 .. 1.8 s
    rate, counted, window = observed_session_rate(run_data(records))
    assert counted == 8 and window == pytest.approx(0.8)
    assert rate == pytest.approx(10.0)


def _timed_replay() -> BenchmarkConfig:
    """A timed replay at time_scale 10 (the trace file is not read by the evaluation)."""
    return BenchmarkConfig(
        session_generator=TraceSessions(path="t.jsonl", timed_replay=True, time_scale=10.0)
    )


def test_the_observed_rate_of_a_timed_replay_counts_gaps_from_the_first_session():
    # The first record goes out at the run start: N / T_N counted it as a gap. 10 records 1 s apart
    # at time_scale 10 gave 11.11/s for a true 10/s.
    records = [request(i, sent=0.0002 + 0.1 * i, chunks=[0.0502 + 0.1 * i]) for i in range(10)]
    rate, counted, window = observed_session_rate(run_data(records, _timed_replay()))
    assert counted == 10 and window == pytest.approx(0.9)
    assert rate == pytest.approx(10.0)
    summary = build_summary(run_data(records, _timed_replay()))
    assert summary["observed_session_dispatch_rate"] == pytest.approx(10.0)


def test_a_timed_replay_of_one_session_or_no_time_span_has_no_observed_rate():
    one = [request(0, sent=0.000179, chunks=[0.01])]  # was 1 / 0.000179 s = 5589.93/s
    assert observed_session_rate(run_data(one, _timed_replay()))[0] is None
    together = [request(i, sent=0.5, chunks=[0.6]) for i in range(3)]
    assert observed_session_rate(run_data(together, _timed_replay()))[0] is None


def test_error_code_freq_counts_errors_and_timeouts_but_not_cancellations():
    records = [
        request(0, sent=1.0, chunks=[], status="error", http_status=503),
        request(1, sent=1.0, chunks=[], status="timeout", http_status=None, error_type="request_timeout"),
        request(2, sent=1.0, chunks=[], status="cancelled", http_status=None, error_type="cancelled"),
    ]
    s = build_summary(run_data(records))
    assert s["error_code_freq"] == {"503": 1, "request_timeout": 1}
    assert s["num_cancelled_requests"] == 1
