"""Each health check passing, failing and skipping, and the text format."""

from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import replace

import polars as pl
import pytest
from veeksha.runner.evaluation import health
from veeksha.runner.evaluation.evaluate import evaluate_run
from veeksha.runner.evaluation.reading import read_trace
from veeksha.runner.lost_records import lost_record
from veeksha.shared.config import (
    BenchmarkConfig,
    ClientConfig,
    ConcurrentTraffic,
    FixedIntervals,
    HealthThresholds,
    PerformanceEvaluator,
    PoissonIntervals,
    RateTraffic,
)
from veeksha.shared.jsonio import read_json

from .factory import request, run_data, trace_line, write_run


def _data(records, cfg=None, trace=None):
    return run_data(records, cfg, trace)


def _rate_cfg(rate, gen=None):
    return BenchmarkConfig(
        traffic_scheduler=RateTraffic(interval_generator=gen or PoissonIntervals(arrival_rate=rate))
    )


def _sessions_every(interval, n=100, **kw):
    return [request(i, sent=interval * (i + 1), chunks=[interval * (i + 1) + 0.05], **kw) for i in range(n)]


# ------------------------------------------------------------------ session dispatch rate


def test_dispatch_rate_passes_near_target_and_fails_far_from_it():
    records = _sessions_every(0.1)  # 100 sessions, last at 10.0 s → 10/s
    check = health.session_dispatch_rate(_data(records, _rate_cfg(10.0)))
    assert check.result == "PASSED" and check.metrics["observed_rate_per_s"] == 10.0
    # Poisson, N = 100: band max(5%, 3/√100 = 30%)
    assert check.thresholds["max_relative_error"] == 0.3
    assert health.session_dispatch_rate(_data(records, _rate_cfg(20.0))).result == "FAILED"
    fixed = _rate_cfg(0, FixedIntervals(interval=0.09))  # 11.1/s target, fixed gaps: 5% band
    assert health.session_dispatch_rate(_data(records, fixed)).result == "FAILED"


def test_sessions_still_queued_for_a_slot_at_the_stop_fail_the_dispatch_rate():
    # The driver records a session that was due but still waited for a max_concurrent_sessions slot
    # when the run stopped as a cancelled request: ready, never dispatched. On rate alone the sessions
    # that were sent can look on target; the ones left in the queue say the rate was not offered.
    records = _sessions_every(0.1)
    queued = [
        request(
            100 + k,
            sent=10.0,
            chunks=[],
            status="cancelled",
            error_type="cancelled",
            scheduler_ready_at=9.5 + 0.1 * k,
            scheduler_dispatched_at=None,
            client_picked_up_at=None,
            client_completed_at=None,
            result_processed_at=None,
        )
        for k in range(3)
    ]
    cfg = _rate_cfg(10.0)
    check = health.session_dispatch_rate(_data([*records, *queued], cfg))
    assert check.result == "FAILED"
    assert check.metrics["num_sessions_queued_at_stop"] == 3
    assert check.metrics["num_sessions"] == 100  # dispatched sessions only
    assert "3 due sessions were still queued" in check.detail
    assert (
        health.session_dispatch_rate(_data(records, cfg)).metrics.get("num_sessions_queued_at_stop") is None
    )


def test_sessions_queued_at_the_stop_fail_the_dispatch_rate_even_when_fewer_than_2_were_sent():
    # 10/s, one slot, a server 5 s to first token, a 2-s timeout: one session sent, the rest queued.
    sent = [request(0, sent=0.1, chunks=[2.5])]
    queued = [
        request(
            1 + k,
            sent=2.0,
            chunks=[],
            status="cancelled",
            error_type="cancelled",
            scheduler_ready_at=0.2 + 0.1 * k,
            scheduler_dispatched_at=None,
            client_picked_up_at=None,
            client_completed_at=None,
            result_processed_at=None,
        )
        for k in range(18)
    ]
    check = health.session_dispatch_rate(_data([*sent, *queued], _rate_cfg(10.0)))
    assert check.result == "FAILED"
    assert check.metrics["num_sessions_queued_at_stop"] == 18 and check.metrics["num_sessions"] == 1
    assert "18 due sessions were still queued" in check.detail


def test_dispatch_rate_skipped_for_concurrent_traffic():
    cfg = BenchmarkConfig(traffic_scheduler=ConcurrentTraffic(target_concurrent_sessions=2))
    assert health.session_dispatch_rate(_data(_sessions_every(0.1), cfg)).result == "SKIPPED"


# ------------------------------------------------------------------ concurrency


def _closed_loop(slots, seconds=20):
    """`slots` back-to-back streams of 1-s sessions."""
    out, rid = [], 0
    for slot in range(slots):
        for k in range(seconds):
            out.append(request(rid, sent=k + 0.001 * slot, chunks=[k + 0.5, k + 0.999], session=rid))
            rid += 1
    return out


def test_concurrency_passes_at_target_and_fails_below():
    cfg = BenchmarkConfig(
        traffic_scheduler=ConcurrentTraffic(target_concurrent_sessions=2, rampup_seconds=1.0)
    )
    check = health.concurrency(_data(_closed_loop(2), cfg))
    assert check.result == "PASSED"
    assert check.metrics["max_concurrent_sessions"] == 2
    assert abs(check.metrics["mean_concurrent_sessions"] - 2) < 0.05
    assert health.concurrency(_data(_closed_loop(1), cfg)).result == "FAILED"
    cfg = replace(cfg, traffic_scheduler=ConcurrentTraffic(target_concurrent_sessions=1))
    assert health.concurrency(_data(_closed_loop(2), cfg)).result == "FAILED"  # more than allowed


def test_concurrency_counts_a_session_whose_request_was_lost_without_an_end():
    # A request recovered from a crash has no completion time: its session ran at least until it
    # was sent. One such record made the mean NaN and failed the check of a run at its target.
    cfg = BenchmarkConfig(traffic_scheduler=ConcurrentTraffic(target_concurrent_sessions=2))
    records = _closed_loop(2)
    lost = lost_record(
        {"request_id": 999, "session_id": 999, "node_id": 0, "session_size": 1, "dispatched_at": 19.5},
        "the run's processes died",
    )
    check = health.concurrency(_data([*records, lost], cfg))
    assert check.result == "PASSED", check.metrics
    assert abs(check.metrics["mean_concurrent_sessions"] - 2) < 0.05


def test_a_session_lasts_until_its_last_send_when_a_later_request_was_lost():
    done = request(0, sent=1.0, chunks=[1.2, 1.4], session=7)
    lost = lost_record(
        {"request_id": 1, "session_id": 7, "node_id": 1, "session_size": 2, "dispatched_at": 1.6},
        "the run's processes died",
    )
    spans = health.session_spans(_data([done, lost]))
    assert spans.select("start", "end").row(0) == (1.0, 1.6)  # not 1.4, its finished request's end


def test_concurrency_skipped_for_rate_traffic():
    assert health.concurrency(_data(_closed_loop(1))).result == "SKIPPED"


# ------------------------------------------------------------------ intra-session lateness


def _follow_ups(lateness):
    records, lines = [], []
    for s in range(10):
        root = request(2 * s, sent=s, chunks=[s + 0.2], session=s)
        child = request(2 * s + 1, sent=s + 0.5, chunks=[s + 0.7], session=s, node=1, delay=lateness)
        records += [root, child]
        lines += [(root["request_id"], s, True), (child["request_id"], s, False)]
    trace = pl.DataFrame(lines, schema=["request_id", "session_id", "is_root"], orient="row")
    return records, trace.with_columns(session_size=pl.lit(2, dtype=pl.Int64))


def test_lateness_of_follow_up_requests():
    records, trace = _follow_ups(0.001)
    check = health.intra_session_lateness(_data(records, trace=trace))
    assert check.result == "PASSED" and check.metrics["num_requests"] == 10  # roots are not counted
    records, trace = _follow_ups(0.05)
    check = health.intra_session_lateness(_data(records, trace=trace))
    assert check.result == "FAILED" and check.metrics["p99_s"] == 0.05
    assert len(check.metrics["worst_offenders"]) == 3
    assert health.intra_session_lateness(_data(records)).result == "SKIPPED"  # no trace


# ------------------------------------------------------------------ prompt and output length


def _tokenizer_cfg():
    return BenchmarkConfig(
        client=ClientConfig(tokenizer="/models/tokenizer.json")
    )  # only its presence matters


def test_prompt_length_vs_target():
    on = _sessions_every(0.1, num_delta_prompt_tokens=500, target_num_delta_prompt_tokens=505)
    assert health.prompt_length(_data(on, _tokenizer_cfg())).result == "PASSED"  # within 2%
    off = _sessions_every(0.1, num_delta_prompt_tokens=450, target_num_delta_prompt_tokens=500)
    check = health.prompt_length(_data(off, _tokenizer_cfg()))
    assert check.result == "FAILED" and check.metrics["max_abs_error_tokens"] == 50
    assert health.prompt_length(_data(on)).result == "SKIPPED"  # approximate counts


def test_output_length_catches_servers_ignoring_ignore_eos():
    full = _sessions_every(0.1, num_output_tokens=64, num_requested_output_tokens=64)
    assert health.output_length(_data(full)).result == "PASSED"
    short = full[:90] + _sessions_every(0.1, n=10, num_output_tokens=12, num_requested_output_tokens=64)
    check = health.output_length(_data(short))
    assert check.result == "FAILED" and check.metrics["num_shorter_than_requested"] == 10
    cfg = BenchmarkConfig(client=ClientConfig(ignore_eos=False))
    assert health.output_length(_data(short, cfg)).result == "SKIPPED"


# ------------------------------------------------------------------ lifecycle delays, error rate


def test_lifecycle_delays():
    quick = _sessions_every(0.1, delay=0.0005)
    assert health.lifecycle_delays(_data(quick)).result == "PASSED"
    slow_pickup = [dict(r, client_picked_up_at=r["scheduler_dispatched_at"] + 0.05) for r in quick]
    check = health.lifecycle_delays(_data(slow_pickup))
    assert check.result == "FAILED"
    assert check.metrics["dispatch_to_pickup"]["p99_s"] == pytest.approx(0.05)
    assert check.metrics["ready_to_dispatch"]["p99_s"] == pytest.approx(0.0005)


def test_error_rate():
    ok = _sessions_every(0.1)
    assert health.error_rate(_data(ok)).result == "PASSED"
    bad = ok[:95] + [request(100 + i, sent=1.0, chunks=[], status="error", done=1.1) for i in range(5)]
    check = health.error_rate(_data(bad))
    assert check.result == "FAILED" and check.metrics["error_rate"] == 0.05
    assert health.error_rate(_data([])).result == "SKIPPED"


def test_the_error_rate_counts_only_requests_that_were_sent():
    """A failed first turn leaves its session's other turns unsent (recorded as cancelled): a server
    that failed everything it was sent has an error rate of 1, however many turns went unsent."""
    sessions = []
    for sid in range(10):
        first = request(10 * sid, sent=1.0, chunks=[], session=sid, status="error", done=1.1)
        unsent = [
            dict(
                request(10 * sid + k, sent=1.0, chunks=[], session=sid, node=k, status="cancelled"),
                scheduler_dispatched_at=None,
                client_picked_up_at=None,
                client_completed_at=None,
            )
            for k in (1, 2, 3)
        ]
        sessions += [first, *unsent]
    check = health.error_rate(_data(sessions))
    assert check.result == "FAILED"
    assert check.metrics["error_rate"] == 1.0 and check.metrics["num_dispatched_requests"] == 10
    assert health.error_rate(_data(sessions[1:4])).result == "SKIPPED"  # nothing was sent


def test_any_timed_out_request_fails_the_run_by_default():
    ok = _sessions_every(0.1)
    assert health.request_timeouts(_data(ok)).result == "PASSED"
    late = [*ok[:99], request(99, sent=9.9, chunks=[], status="timeout", error_type="request_timeout")]
    check = health.request_timeouts(_data(late))
    assert check.result == "FAILED"
    assert check.metrics["num_timed_out_requests"] == 1 and check.metrics["timed_out_request_ids"] == [99]
    assert health.error_rate(_data(late)).result == "PASSED"  # 1% errors alone would pass
    assert health.request_timeouts(_data(late, _health_cfg(max_timeouts=1))).result == "PASSED"


def _traced_run(tmp_path, records, extra_trace):
    """The dispatch trace as the reader reads it from a run directory: one line per record, plus more."""
    paths = write_run(tmp_path, records, trace=[trace_line(r) for r in records] + extra_trace)
    return read_trace(paths.dispatch_trace)


def test_a_dispatched_request_without_a_record_fails_the_run(tmp_path):
    records = [*_sessions_every(0.1, n=10), request(10, sent=0.05, chunks=[0.06], is_warmup=True)]
    check = health.missing_records(_data(records, trace=_traced_run(tmp_path / "a", records, [])))
    assert check.result == "PASSED" and check.metrics["num_dispatched_requests"] == 11  # warmup too
    lost = trace_line(request(11, sent=1.05, chunks=[1.1]))
    never_sent = dict(trace_line(request(12, sent=1.05, chunks=[])), dispatched_at=None, ready_at=None)
    check = health.missing_records(
        _data(records, trace=_traced_run(tmp_path / "b", records, [lost, never_sent]))
    )
    assert check.result == "FAILED"
    assert check.metrics["num_missing_records"] == 1 and check.metrics["missing_request_ids"] == [11]
    assert health.missing_records(_data(records)).result == "SKIPPED"  # no trace: nothing to compare


def test_no_record_at_all_for_a_dispatched_request(tmp_path):
    lost = trace_line(request(0, sent=1.0, chunks=[1.1]))
    check = health.missing_records(_data([], trace=_traced_run(tmp_path, [], [lost])))
    assert check.result == "FAILED" and check.metrics["missing_request_ids"] == [0]


# ------------------------------------------------------------------ configurable thresholds


def _health_cfg(**bounds):
    return BenchmarkConfig(evaluators=[PerformanceEvaluator(health=HealthThresholds(**bounds))])


def test_the_defaults_are_the_documented_bounds():
    assert dataclasses.asdict(HealthThresholds()) == {
        "max_error_rate": 0.01,
        "max_timeouts": 0,
        "min_rate_tolerance": 0.05,
        "max_concurrency_error": 0.05,
        "max_lateness_p99_s": 0.010,
        "max_delay_p99_s": 0.010,
        "min_prompts_on_target": 0.99,
        "max_output_off_fraction": 0.01,
        "max_output_token_difference": 0.05,
        "max_unexpected_cache_hit_fraction": 0.5,
    }
    assert health.thresholds(BenchmarkConfig()) == HealthThresholds()
    no_evaluator = BenchmarkConfig(evaluators=[])
    assert health.thresholds(no_evaluator) == HealthThresholds()


def test_each_bound_comes_from_the_config():
    ok = _sessions_every(0.1)
    bad = ok[:95] + [request(100 + i, sent=1.0, chunks=[], status="error", done=1.1) for i in range(5)]
    check = health.error_rate(_data(bad, _health_cfg(max_error_rate=0.05)))
    assert check.result == "PASSED" and check.thresholds == {"max_error_rate": 0.05}
    slow = [dict(r, client_picked_up_at=r["scheduler_dispatched_at"] + 0.05) for r in ok]
    check = health.lifecycle_delays(_data(slow, _health_cfg(max_delay_p99_s=0.1)))
    assert check.result == "PASSED" and check.thresholds == {"p99_s": 0.1}
    records, trace = _follow_ups(0.05)
    check = health.intra_session_lateness(_data(records, _health_cfg(max_lateness_p99_s=0.06), trace))
    assert check.result == "PASSED"
    off = _sessions_every(0.1, num_delta_prompt_tokens=450, target_num_delta_prompt_tokens=500)
    cfg = replace(
        _health_cfg(min_prompts_on_target=0.0), client=ClientConfig(tokenizer="/models/tokenizer.json")
    )
    assert health.prompt_length(_data(off, cfg)).result == "PASSED"
    short = ok[:90] + _sessions_every(0.1, n=10, num_output_tokens=1, num_requested_output_tokens=64)
    assert health.output_length(_data(short, _health_cfg(max_output_off_fraction=0.1))).result == "PASSED"
    rate = replace(_health_cfg(min_rate_tolerance=1.0), traffic_scheduler=_rate_cfg(20.0).traffic_scheduler)
    # observed 10/s: 50% off
    assert health.session_dispatch_rate(_data(ok, rate)).result == "PASSED"
    half = replace(
        _health_cfg(max_concurrency_error=0.6),
        traffic_scheduler=ConcurrentTraffic(target_concurrent_sessions=2, rampup_seconds=1.0),
    )
    assert health.concurrency(_data(_closed_loop(1), half)).result == "PASSED"  # 1 of 2: 50% off


def test_evaluation_reads_the_bounds_from_the_runs_config_yml(tmp_path):
    bad = _sessions_every(0.1)[:95] + [
        request(100 + i, sent=1.0, chunks=[], status="error", done=1.1) for i in range(5)
    ]
    paths = write_run(tmp_path, bad, _health_cfg(max_error_rate=0.1))
    evaluate_run(paths.root, plots=False)
    checks = {c["name"]: c for c in read_json(paths.health_checks_json)["checks"]}
    assert checks["error_rate"]["result"] == "PASSED"
    assert checks["error_rate"]["thresholds"] == {"max_error_rate": 0.1}


# ------------------------------------------------------------------ output


def test_text_format_and_json():
    checks = health.run_checks(_data(_sessions_every(0.1), _rate_cfg(10.0)))
    text = health.format_health_text(checks)
    blocks = text.split("\n\n")
    first = blocks[0].splitlines()
    assert re.fullmatch(r"=+", first[0]) and first[2] == first[0]
    assert first[1] == "SESSION DISPATCH RATE" and first[3] == "Result: PASSED"
    value_columns = {re.match(r"^(.*?\S)\s{2,}(\S.*)$", line).start(2) for line in first[4:]}
    assert len(value_columns) == 1  # labels padded: every value starts in the same column
    assert "OVERALL: PASSED" in text
    as_json = health.health_json(checks)
    assert as_json["all_passed"] is True
    assert [c["name"] for c in as_json["checks"]] == [
        "session_dispatch_rate", "concurrency", "intra_session_arrival_lateness", "prompt_length",
        "output_length", "token_counts", "lifecycle_delays", "drivers", "error_rate", "request_timeouts",
        "missing_records",
    ]  # fmt: skip
    assert all(set(c) >= {"name", "result", "metrics", "thresholds"} for c in as_json["checks"])


# ------------------------------------------------------------------ drivers


def _two_drivers(late_ms: float) -> list[dict]:
    """100 requests over 10 s; driver 1's are `late_ms` late, driver 0's 1 ms."""
    return [
        request(
            i,
            sent=0.1 * (i + 1),
            chunks=[0.1 * (i + 1) + 0.05],
            delay=(late_ms if i % 2 else 1.0) / 1000,
            driver_id=i % 2,
        )
        for i in range(100)
    ]


CPU = [{"driver_id": 0, "cpu_seconds": 2.0}, {"driver_id": 1, "cpu_seconds": 9.5}]


def test_drivers_names_the_latest_driver_and_each_ones_cpu_share():
    check = health.drivers(run_data(_two_drivers(4.0), drivers=CPU))
    assert check.result == "PASSED" and check.metrics["num_drivers"] == 2
    assert check.metrics["limiting_driver"] == 1
    per = check.metrics["drivers"]
    assert per["0"]["lateness_p99_s"] == pytest.approx(0.001) and per["1"]["lateness_p99_s"] == pytest.approx(
        0.004
    )
    assert per["0"]["num_dispatched"] == per["1"]["num_dispatched"] == 50
    duration = 10.05 - 0.1  # first dispatch to last end
    assert per["1"]["cpu_utilization"] == pytest.approx(9.5 / duration)
    assert "driver 1 limits the run" in check.detail and "driver 1 used >= 90% of a core" in check.detail


def test_drivers_names_a_driver_whose_core_the_hypervisor_took_time_from():
    """CPU steal (driver/steal.py) of the driver's worst core over its own run: a note, not a failure."""
    stolen = [
        {"driver_id": 0, "cpu_seconds": 2.0, "cpu_steal_seconds": 0.02, "num_cpus": 2, "run_seconds": 8.0},
        {"driver_id": 1, "cpu_seconds": 2.0, "cpu_steal_seconds": 0.2, "num_cpus": 2, "run_seconds": 8.0},
    ]
    check = health.drivers(run_data(_two_drivers(4.0), drivers=stolen))
    per = check.metrics["drivers"]
    assert per["1"]["cpu_steal_seconds"] == 0.2 and per["1"]["cpu_steal_fraction"] == pytest.approx(0.025)
    assert per["0"]["cpu_steal_fraction"] == pytest.approx(0.0025)  # below the note
    assert per["1"]["cpu_utilization"] == pytest.approx(2.0 / 8.0)  # over its own run, as the steal
    assert check.result == "PASSED"
    assert "took 2.5% of the time of the worst core of driver 1 (CPU steal)" in check.detail
    assert "driver 0" not in check.detail.split("limits the run")[1]


def test_drivers_that_share_cores_get_one_steal_note():
    """Unpinned drivers on one machine all report its worst core: one note names them all."""
    same = [
        {"driver_id": d, "cpu_seconds": 2.0, "cpu_steal_seconds": 0.4, "num_cpus": 2, "run_seconds": 8.0}
        for d in (0, 1)
    ]
    check = health.drivers(run_data(_two_drivers(4.0), drivers=same))
    assert check.detail.count("CPU steal") == 1
    assert "took 5.0% of the time of the worst core of driver 0, 1" in check.detail


def test_drivers_steal_is_unknown_without_its_run_json_fields():
    """Runs of an older version, or drivers on a platform without /proc/stat."""
    check = health.drivers(run_data(_two_drivers(4.0), drivers=CPU))
    assert all(
        m["cpu_steal_seconds"] is None and m["cpu_steal_fraction"] is None
        for m in check.metrics["drivers"].values()
    )
    assert "steal" not in check.detail


def test_drivers_fails_when_the_limiting_drivers_lateness_is_over_the_bound():
    check = health.drivers(run_data(_two_drivers(25.0)))
    assert check.result == "FAILED" and check.thresholds["lateness_p99_s"] == 0.010
    assert check.metrics["drivers"]["1"]["cpu_seconds"] is None  # no run.json entries: not known


def test_drivers_counts_records_without_a_driver_id_as_driver_0():
    """Runs written before several drivers existed: one driver, 0."""
    check = health.drivers(_data(_sessions_every(0.1)))
    assert check.result == "PASSED" and list(check.metrics["drivers"]) == ["0"]


def _frozen_driver_0(last_of_driver_0: int, n: int = 160) -> list[dict]:
    """Session i sent at 0.06·(i + 1) s by driver i % 2, 1 ms late on driver 0, 4 ms on driver 1;
    driver 0 sends nothing after session `last_of_driver_0` (frozen past the run's end)."""
    return [
        request(
            i,
            sent=0.06 * (i + 1),
            chunks=[0.06 * (i + 1) + 0.02],
            delay=(1.0 if i % 2 == 0 else 4.0) / 1000,
            driver_id=i % 2,
        )
        for i in range(n)
        if i % 2 or i <= last_of_driver_0
    ]


def test_drivers_fails_naming_a_driver_that_stopped_sending_its_share():
    # Driver 0 was frozen (SIGSTOP) from 2.1 s past the end of the run: its sessions due meanwhile
    # were never sent, so its lateness stayed low, and the check passed naming driver 1.
    check = health.drivers(run_data(_frozen_driver_0(34), _rate_cfg(20.0)))
    assert check.result == "FAILED" and check.metrics["limiting_driver"] == 0
    per = check.metrics["drivers"]
    # Due by 8.596 s (1 s before the last session, due at 9.596 s): up to session 141, the last one
    # recorded by then; 71 of them driver 0's, which sent 18.
    assert per["0"]["num_sessions_due"] == 71 and per["0"]["num_sessions_not_sent"] == 53
    assert per["1"]["num_sessions_due"] == 71 and per["1"]["num_sessions_not_sent"] == 0
    assert check.detail.startswith("driver 0 did not send 53 of its 71 sessions due by 8.596 s"), check.detail
    assert check.thresholds["max_fraction_not_sent"] == 0.05


def test_drivers_passes_when_every_driver_sent_its_share_up_to_the_stop():
    # The last second is left out: drivers stop a moment apart (a stop reaches each in turn; a
    # session due just before the timeout may fire just after it).
    check = health.drivers(run_data(_frozen_driver_0(150), _rate_cfg(20.0)))
    assert check.result == "PASSED" and check.metrics["limiting_driver"] == 1
    assert check.metrics["drivers"]["0"]["num_sessions_not_sent"] == 0


def test_drivers_shares_follow_the_slots_of_a_session_cap():
    # max_concurrent_sessions 3 on 2 drivers: slot s on driver s % 2, session i on slot i % 3, so
    # driver 0 runs sessions 0, 2, 3, 5, 6, ... (two of every three).
    cfg = BenchmarkConfig(
        traffic_scheduler=RateTraffic(
            interval_generator=PoissonIntervals(arrival_rate=20.0), max_concurrent_sessions=3
        )
    )
    records = [
        request(i, sent=0.06 * (i + 1), chunks=[0.06 * (i + 1) + 0.02], driver_id=(i % 3) % 2)
        for i in range(90)
    ]
    check = health.drivers(run_data(records, cfg))
    assert check.result == "PASSED", check.detail
    per = check.metrics["drivers"]
    assert (per["0"]["num_sessions_due"], per["1"]["num_sessions_due"]) == (49, 24)  # sessions 0..72
    frozen = [r for r in records if r["driver_id"] == 1 or r["session_id"] < 30]
    check = health.drivers(run_data(frozen, cfg))
    assert check.result == "FAILED" and check.detail.startswith("driver 0 did not send 27 of its 47")


def test_drivers_shares_are_not_judged_without_one_schedule():
    # A request cap stops each driver at its own share of requests: at its own point of the stream.
    capped = _rate_cfg(20.0)
    capped = replace(capped, runtime=replace(capped.runtime, max_requests=120))
    check = health.drivers(run_data(_frozen_driver_0(34), capped))
    assert check.result == "PASSED" and "num_sessions_due" not in check.metrics["drivers"]["0"]
    # Records that do not follow the placement (another version's run): nothing to compare with.
    check = health.drivers(run_data(_frozen_driver_0(34), _rate_cfg(20.0), drivers=[*CPU, {"driver_id": 2}]))
    assert check.result == "PASSED" and "num_sessions_due" not in check.metrics["drivers"]["0"]


# ------------------------------------------------------------------ token counts


def _counted(client_out: int | None, server_out: int, client_prompt: int | None = 100) -> dict:
    rec = request(0, sent=1.0, chunks=[1.1, 1.2])
    rec.update(
        num_output_tokens=server_out,
        client_output_tokens=client_out,
        num_total_prompt_tokens=110,
        client_prompt_tokens=client_prompt,
    )
    return rec


def test_token_counts_compare_the_client_tokenizer_with_the_server_usage():
    records = [{**_counted(100, 100), "request_id": 0}, {**_counted(120, 100), "request_id": 1}]
    check = health.token_counts(_data(records))
    assert check.result == "FAILED"  # mean |client - server| / server = 10% > 5%
    assert check.metrics["output_token_mismatch_fraction"] == 0.5
    assert check.metrics["output_token_mean_relative_difference"] == pytest.approx(0.1)
    assert check.metrics["prompt_token_mean_relative_difference"] == pytest.approx(10 / 110)
    same = [{**_counted(100, 100), "request_id": i} for i in range(2)]
    assert health.token_counts(_data(same)).result == "PASSED"


def test_token_counts_are_skipped_without_a_client_count():
    check = health.token_counts(_data([_counted(None, 100, client_prompt=None)]))
    assert check.result == "SKIPPED" and check.metrics["output_token_mismatch_fraction"] is None


# ------------------------------------------------------------------ the same bytes every time


def test_sessions_that_start_together_are_spanned_in_session_id_order():
    # The concurrency check sums the sessions' overlaps in this order (a float sum).
    ids = list(range(40))
    random.Random(2).shuffle(ids)
    records = [request(i, sent=1.0, chunks=[1.0 + 0.1 * (i + 1)], session=i) for i in ids]
    spans = health.session_spans(_data(records))
    assert spans["session_id"].to_list() == sorted(ids)


def test_worst_offenders_with_equal_values_are_the_lowest_request_ids_in_order():
    ids = list(range(12))
    random.Random(3).shuffle(ids)
    rows = pl.DataFrame({"request_id": ids, "session_id": ids, "v": [5] * 12})
    worst = health._worst(rows, "v")
    assert [w["request_id"] for w in worst] == [0, 1, 2]


def test_missing_records_are_named_lowest_request_id_first(tmp_path):
    # Numbers in number order (10 after 9), also when no record at all was written.
    lost = [trace_line(request(i, sent=1.0 + 0.01 * i, chunks=[1.1])) for i in (70, 100, 9, 50, 40)]
    check = health.missing_records(_data([], trace=_traced_run(tmp_path, [], lost)))
    assert check.metrics["missing_request_ids"] == [9, 40, 50]


def test_drivers_lists_a_driver_that_sent_nothing():
    """Driver 2 of 3 dispatched no measured request (a share of 0, or it failed early): it is still
    listed, with its CPU, and cannot be the one that limits the run."""
    three = [*CPU, {"driver_id": 2, "cpu_seconds": 0.3}]
    check = health.drivers(run_data(_two_drivers(4.0), drivers=three))
    assert check.metrics["num_drivers"] == 3 and list(check.metrics["drivers"]) == ["0", "1", "2"]
    idle = check.metrics["drivers"]["2"]
    assert idle["num_dispatched"] == 0 and idle["lateness_p99_s"] is None and idle["cpu_seconds"] == 0.3
    assert check.metrics["limiting_driver"] == 1 and check.result == "PASSED"
