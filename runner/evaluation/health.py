"""Health checks: is this run a trustworthy measurement? (spec: outputs.md; formulas: docs/metrics.md)

Each check is PASSED, FAILED or SKIPPED (not applicable to this run, or nothing to look at). The
run passes when no check failed. The same checks are written as health_check_results.txt (for people)
and metrics/health_checks.json (for tools). Their bounds are the `health` thresholds of the first
evaluator in the run's config (shared/config.py HealthThresholds; defaults when there is none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from veeksha.runner.driver.placement import owner_of
from veeksha.runner.evaluation.quantiles import exact_quantiles
from veeksha.runner.evaluation.rundata import RunData
from veeksha.runner.evaluation.summary import error_code_freq, observed_session_rate, token_count_mismatch
from veeksha.runner.sessions.traces import REQUEST_LOG
from veeksha.shared.config import (
    BenchmarkConfig,
    ConcurrentTraffic,
    FixedIntervals,
    GammaIntervals,
    HealthThresholds,
    RateTraffic,
    TraceSessions,
)
from veeksha.shared.config_checks import session_slots
from veeksha.shared.records import (
    CLIENT_COMPLETED_AT,
    CLIENT_PICKED_UP_AT,
    COUNT_SERVER,
    COUNT_TOKENIZER,
    DISPATCH_DELAY,
    HEALTH_FAILED,
    HEALTH_PASSED,
    HEALTH_SKIPPED,
    SCHEDULER_DISPATCHED_AT,
    SCHEDULER_READY_AT,
    SERVER_EXIT,
    TIMEOUT,
)

PASSED, FAILED, SKIPPED = HEALTH_PASSED, HEALTH_FAILED, HEALTH_SKIPPED

RATE_SIGMAS = 3.0  # the session rate band is at least 3 standard deviations of the rate estimate
PROMPT_TOLERANCE_TOKENS = 2  # a prompt is on target within max(2 tokens, 2%)
PROMPT_TOLERANCE_FRACTION = 0.02
WORST = 3  # offenders listed per check
SATURATED_CPU = 0.9  # a driver using this share of its core has no time to spare
# A driver whose worst core lost this share of its time to the hypervisor (CPU steal,
# driver/steal.py) is named: its latencies include those pauses. A note, not a failure: steal is
# the load machine's state, and the lateness bound already fails a run whose dispatches it made late.
STEAL_NOTED = 0.01
# The drivers check compares each driver's sessions with its share of the schedule up to this long
# before the last session sent: drivers stop a moment apart (a stop reaches each in turn, over the
# network to Ray drivers; a session due just before the timeout may fire just after it, unsent).
STOP_SKEW_S = 1.0


@dataclass
class Check:
    name: str
    result: str
    metrics: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)
    detail: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "result": self.result,
            "metrics": self.metrics,
            "thresholds": self.thresholds,
            "detail": self.detail,
        }


def run_checks(data: RunData) -> list[Check]:
    return [
        session_dispatch_rate(data),
        concurrency(data),
        intra_session_lateness(data),
        prompt_length(data),
        output_length(data),
        token_counts(data),
        lifecycle_delays(data),
        drivers(data),
        error_rate(data),
        request_timeouts(data),
        missing_records(data),
    ]


SERVER_CHECK = "server"


def server_checks(run_info: Any) -> list[Check]:
    """A failed `server` check when the server the run launched exited during it (run.json's
    server_exit: when and how, as the console said it); none otherwise. From run.json, not the
    records: they cannot tell a dead server from one that failed every request."""
    exited = run_info.get(SERVER_EXIT) if isinstance(run_info, dict) else None
    if not isinstance(exited, dict):
        return []
    detail = exited.get("detail") or "the server exited during the run"
    return [Check(SERVER_CHECK, FAILED, detail=str(detail))]


# The prefix_cache check judges the server's counters only when the server looked up at most this many
# prompt tokens per prompt token the run sent. A server serving the run alone looks up about what it
# sent: each prompt once (vLLM counts the chat template's tokens in both), again after a preemption
# recomputes it. Far more means other clients' prompts, whose hits are not this run's.
MAX_QUERIED_PER_SENT_TOKEN = 1.5

TRACE_TEXT = "prompts come from a trace file: repeats of its text are the server's to cache"


def trace_text_flavor(cfg: BenchmarkConfig) -> str | None:
    """The trace flavor of sessions whose prompt text may come from a trace file (a conversation, or
    `auto`: the run directory does not say which flavor the file was), else None. A request log's
    prompt words are drawn from the seed, session by session, as synthetic ones are."""
    sessions = cfg.session_generator
    if not isinstance(sessions, TraceSessions) or sessions.flavor == REQUEST_LOG:
        return None
    return sessions.flavor


def prefix_cache(
    server: float | None,
    expected: float | None,
    bounds: HealthThresholds,
    *,
    queried: float | None = None,
    sent: int | None = None,
    trace_flavor: str | None = None,
) -> Check:
    """The server's prefix-cache hit fraction against the sharing the config generated (summary_stats'
    server_ and expected_prefix_cache_hit_fraction). Far more hits than intended: the server already
    held these prompts (an earlier run of the same sessions against a server still up), and answered
    them from its cache, so every prefill-bound metric (TTFC above all) is no measurement.

    No verdict (SKIPPED) when the prompts' text comes from a trace (`trace_flavor`: its repeats, a
    wrapped replay's above all, are real sharing no seed changes), or when the server looked up far
    more prompt tokens (`queried`) than the run sent (`sent`): its counters then cover other clients.
    Built in evaluate.py from the run directory alone: `veeksha-run evaluate` gives the same verdict."""
    name = "prefix_cache"
    if server is None:
        why = "the server reported no prefix-cache counters (no server metrics, or no vllm:prefix_cache_*)"
        return Check(name, SKIPPED, detail=why)
    if expected is None:
        return Check(name, SKIPPED, detail="no prompt token was sent: no sharing to compare with")
    metrics = _cache_metrics(server, expected, queried, sent)
    if trace_flavor is not None:
        return Check(name, SKIPPED, metrics, detail=_trace_detail(trace_flavor))
    if queried is not None and sent is not None and queried > MAX_QUERIED_PER_SENT_TOKEN * sent:
        detail = (
            f"the server served other traffic too (it looked up {queried:,.0f} prompt tokens, "
            f"this run sent {sent:,}): its hit fraction is not this run's"
        )
        return Check(name, SKIPPED, metrics, detail=detail)
    limits = {"max_unexpected_cache_hit_fraction": bounds.max_unexpected_cache_hit_fraction}
    if metrics["unexpected_hit_fraction"] <= bounds.max_unexpected_cache_hit_fraction:
        return Check(name, PASSED, metrics, limits)
    detail = (
        f"the server found {server:.0%} of prompt tokens in its cache "
        f"where the config shares {expected:.0%}: "
        "it had these prompts already: an earlier run of the same sessions (same seed) against "
        "this server still up? Restart the server or reset its prefix cache (or set another `seed`), "
        "then run again"
    )
    return Check(name, FAILED, metrics, limits, detail)


def _cache_metrics(server: float, expected: float, queried: float | None, sent: int | None) -> dict[str, Any]:
    """The two fractions, their difference, and the token counts that are known."""
    metrics: dict[str, Any] = {
        "server_prefix_cache_hit_fraction": server,
        "expected_prefix_cache_hit_fraction": expected,
        "unexpected_hit_fraction": server - expected,
    }
    if queried is not None:
        metrics["server_prefix_cache_queried_tokens"] = queried
    if sent is not None:
        metrics["sent_prompt_tokens"] = sent
    return metrics


def _trace_detail(flavor: str) -> str:
    if flavor != "auto":
        return TRACE_TEXT
    return (
        f"{TRACE_TEXT} (a request log's prompts are drawn from the seed: "
        "give `flavor: request_log` to have them judged)"
    )


def thresholds(cfg: BenchmarkConfig) -> HealthThresholds:
    """The bounds in force: the first evaluator's (a config may list none)."""
    return cfg.evaluators[0].health if cfg.evaluators else HealthThresholds()


def health_json(checks: list[Check]) -> dict[str, Any]:
    return {"all_passed": all_passed(checks), "checks": [c.as_json() for c in checks]}


def all_passed(checks: list[Check]) -> bool:
    return all(c.result != FAILED for c in checks)


def _verdict(ok: bool) -> str:
    return PASSED if ok else FAILED


def _stats(values: np.ndarray) -> dict[str, float | None]:
    p50, p99, top = exact_quantiles(values, [0.5, 0.99, 1.0])
    return {"p50_s": p50, "p99_s": p99, "max_s": top}


def _worst(df: pl.DataFrame, column: str, *, seconds: bool = False, n: int = WORST) -> list[dict[str, Any]]:
    """The n rows with the largest `column`, largest first: request id, session id and the value
    (`value_s` when it is a duration). Equal values go lowest request id first, so a re-evaluation
    names the same rows in the same order (top_k alone picks and orders ties as it happens)."""
    order = [column, "request_id"]  # request ids are unique: a total order, so one answer
    top = df.filter(pl.col(column).is_not_null()).top_k(n, by=order, reverse=[False, True])
    top = top.sort(order, descending=[True, False])
    key = "value_s" if seconds else "value"
    return [
        {"request_id": r["request_id"], "session_id": r["session_id"], key: r[column]}
        for r in top.select("request_id", "session_id", column).iter_rows(named=True)
    ]


# ------------------------------------------------------------------ checks


def session_dispatch_rate(data: RunData) -> Check:
    """Observed vs target session rate (rate traffic).

    The estimate N / T of a renewal process whose gaps have coefficient of variation cv has a
    relative standard deviation of about cv / √N (Poisson: cv = 1; gamma: its cv; fixed: 0). Pass
    when |observed − target| / target ≤ max(5%, 3·cv/√N).
    """
    name = "session_dispatch_rate"
    target = data.target_session_rate
    if target is None:
        return Check(name, SKIPPED, detail="applies to rate traffic with a configured arrival rate")
    rate, n, window = observed_session_rate(data)
    queued = queued_at_stop(data)
    queued_detail = (
        f"{queued} due sessions were still queued for a slot (max_concurrent_sessions) at the stop"
    )
    if rate is None or n < 2:
        if queued:  # too few sent to measure a rate, and the rest waited: the rate was not offered
            few = {"num_sessions": n, "num_sessions_queued_at_stop": queued}
            return Check(name, FAILED, few, detail=queued_detail)
        return Check(name, SKIPPED, {"num_sessions": n}, detail="fewer than 2 sessions dispatched")
    traffic = data.cfg.traffic_scheduler
    assert isinstance(traffic, RateTraffic)
    gen = traffic.interval_generator
    cv = gen.cv if isinstance(gen, GammaIntervals) else 0.0 if isinstance(gen, FixedIntervals) else 1.0
    tolerance = max(thresholds(data.cfg).min_rate_tolerance, RATE_SIGMAS * cv / math.sqrt(n))
    error = abs(rate - target) / target
    detail = ""
    if error > tolerance and rate < target and traffic.max_concurrent_sessions:
        detail = "max_concurrent_sessions queued sessions: the target rate was not offered"
    measures: dict[str, Any] = {
        "observed_rate_per_s": rate,
        "target_rate_per_s": target,
        "num_sessions": n,
        "window_s": window,
        "relative_error": error,
    }
    if queued:
        measures["num_sessions_queued_at_stop"] = queued
        detail = queued_detail
    return Check(
        name,
        _verdict(error <= tolerance and not queued),
        measures,
        {"max_relative_error": tolerance},
        detail,
    )


def queued_at_stop(data: RunData) -> int:
    """Sessions that were due (ready) but never dispatched: the run stopped while they waited for a
    max_concurrent_sessions slot (the driver's _drop_queued records their first requests so)."""
    m = data.measured
    waited = m[SCHEDULER_READY_AT].is_not_null() & m[SCHEDULER_DISPATCHED_AT].is_null()
    return m.filter(waited)["session_id"].n_unique()


def concurrency(data: RunData) -> Check:
    """Mean in-flight sessions vs target (concurrent traffic), after the ramp-up.

    A session is in flight from its first dispatch to its last end (think time included). Window:
    from the end of the ramp-up to the last session start (after that the run drains). Warmup
    sessions count: they occupy slots like any other.
    """
    name = "concurrency"
    traffic = data.cfg.traffic_scheduler
    if not isinstance(traffic, ConcurrentTraffic):
        return Check(name, SKIPPED, detail="applies to concurrent traffic")
    spans = session_spans(data)
    target = traffic.target_concurrent_sessions
    if spans.height == 0:
        return Check(name, SKIPPED, detail="no session was dispatched")
    starts, ends = spans["start"].to_numpy(), spans["end"].to_numpy()
    w0 = max(float(traffic.rampup_seconds), float(starts[0]))
    w1 = float(starts[-1])
    if w1 - w0 < 1.0:
        return Check(name, SKIPPED, {"window_s": max(w1 - w0, 0.0)}, detail="steady window shorter than 1 s")
    overlap = np.clip(np.minimum(ends, w1) - np.maximum(starts, w0), 0, None).sum()
    mean = float(overlap) / (w1 - w0)
    in_window = starts >= w0
    active_at_start = np.arange(1, len(starts) + 1) - np.searchsorted(np.sort(ends), starts, side="right")
    peak = int(active_at_start[in_window].max()) if in_window.any() else 0
    error = abs(mean - target) / target
    bound = thresholds(data.cfg).max_concurrency_error
    return Check(
        name,
        _verdict(error <= bound and peak <= target),
        {
            "mean_concurrent_sessions": mean,
            "max_concurrent_sessions": peak,
            "target_concurrent_sessions": target,
            "window_s": w1 - w0,
            "relative_error": error,
        },
        {"max_relative_error": bound, "max_concurrent_sessions": target},
    )


def session_spans(data: RunData) -> pl.DataFrame:
    """Each dispatched session's (session_id, start, end), warmup included, ordered by start and then
    session id: the concurrency check sums floats in this order, so ties must not fall as group_by
    happens to leave them."""
    cols = ("session_id", SCHEDULER_DISPATCHED_AT, "end_at")
    last_sent = pl.col(SCHEDULER_DISPATCHED_AT).max()
    return (
        pl.concat([data.measured.select(cols), data.warmup.select(cols)])
        .filter(pl.col(SCHEDULER_DISPATCHED_AT).is_not_null())
        .group_by("session_id")
        .agg(start=pl.col(SCHEDULER_DISPATCHED_AT).min(), end=pl.col("end_at").max(), sent=last_sent)
        # A request recovered after a crash has no end: its session ran at least until it was sent.
        .with_columns(end=pl.max_horizontal("end", "sent"))
        .drop("sent")
        .sort("start", "session_id")
    )


def intra_session_lateness(data: RunData) -> Check:
    """dispatched − ready of non-root nodes (ready = last parent's completion + think time)."""
    name = "intra_session_arrival_lateness"
    if data.trace is None:
        return Check(name, SKIPPED, detail="needs traces/dispatch_trace.jsonl (trace_recorder.enabled)")
    nodes = (
        data.measured.select("request_id", "session_id", DISPATCH_DELAY)
        .join(data.trace.select("request_id", "is_root"), on="request_id", how="inner")
        .filter(~pl.col("is_root") & pl.col(DISPATCH_DELAY).is_not_null())
    )
    if nodes.height == 0:
        return Check(name, SKIPPED, detail="no dispatched request with a parent in the session")
    stats = _stats(nodes[DISPATCH_DELAY].to_numpy())
    bound = thresholds(data.cfg).max_lateness_p99_s
    return Check(
        name,
        _verdict(stats["p99_s"] is not None and stats["p99_s"] <= bound),
        {
            "num_requests": nodes.height,
            **stats,
            "worst_offenders": _worst(nodes, DISPATCH_DELAY, seconds=True),
        },
        {"p99_s": bound},
    )


def prompt_length(data: RunData) -> Check:
    """Prompt (delta) tokens vs the generator's target, when counts come from a real tokenizer."""
    name = "prompt_length"
    if data.cfg.client.tokenizer is None:
        return Check(name, SKIPPED, detail="no client.tokenizer: prompt lengths are approximations")
    target, actual = pl.col("target_num_delta_prompt_tokens"), pl.col("num_delta_prompt_tokens")
    rows = (
        data.measured.lazy()
        .filter(target.is_not_null() & actual.is_not_null())
        .select("request_id", "session_id", target, prompt_error=(actual - target).abs())
        .collect()
    )
    if rows.height == 0:
        return Check(name, SKIPPED, detail="no request has a target prompt length")
    allowed = pl.max_horizontal(
        pl.lit(PROMPT_TOLERANCE_TOKENS), pl.col("target_num_delta_prompt_tokens") * PROMPT_TOLERANCE_FRACTION
    )
    on_target = float(rows.select((pl.col("prompt_error") <= allowed).mean()).item())
    bound = thresholds(data.cfg).min_prompts_on_target
    return Check(
        name,
        _verdict(on_target >= bound),
        {
            "num_requests": rows.height,
            "fraction_on_target": on_target,
            "mean_abs_error_tokens": float(rows["prompt_error"].mean()),  # type: ignore[arg-type]  # polars stubs: an aggregate is any literal
            "max_abs_error_tokens": int(rows["prompt_error"].max()),  # type: ignore[arg-type]  # polars stubs: an aggregate is any literal
            "worst_offenders": _worst(rows, "prompt_error"),
        },
        {
            "tolerance_tokens": f"max({PROMPT_TOLERANCE_TOKENS}, {PROMPT_TOLERANCE_FRACTION:.0%} of target)",
            "min_fraction_on_target": bound,
        },
    )


def output_length(data: RunData) -> Check:
    """Replies shorter than requested: a server ignoring ignore_eos (or max_tokens: longer)."""
    name = "output_length"
    requested, got = pl.col("num_requested_output_tokens"), pl.col("num_output_tokens")
    rows = (
        data.measured.lazy()
        .filter(
            pl.col("ok")
            & got.is_not_null()
            & requested.is_not_null()
            & pl.col("token_count_source").is_in([COUNT_SERVER, COUNT_TOKENIZER])
        )
        .select("request_id", "session_id", shortfall=requested - got)
        .collect()
    )
    if rows.height == 0:
        return Check(name, SKIPPED, detail="no successful request with an exact output token count")
    short = int((rows["shortfall"] > 0).sum())
    over = int((rows["shortfall"] < 0).sum())
    fraction_shorter, fraction_longer = short / rows.height, over / rows.height
    metrics = {
        "num_requests": rows.height,
        "num_shorter_than_requested": short,
        "fraction_shorter": fraction_shorter,
        "num_longer_than_requested": over,
        "fraction_longer": fraction_longer,
        "mean_shortfall_tokens": float(rows["shortfall"].clip(lower_bound=0).mean()),  # type: ignore[arg-type]  # polars stubs: an aggregate is any literal
        "worst_offenders": _worst(rows.filter(pl.col("shortfall") > 0), "shortfall"),
    }
    bound = thresholds(data.cfg).max_output_off_fraction
    bounds = {"max_fraction_shorter": bound, "max_fraction_longer": bound}
    if not data.cfg.client.ignore_eos:
        return Check(name, SKIPPED, metrics, bounds, "client.ignore_eos is false: early stops are expected")
    ok = fraction_shorter <= bound and fraction_longer <= bound
    return Check(name, _verdict(ok), metrics, bounds)


def token_counts(data: RunData) -> Check:
    """The client's tokenizer against the server's usage: a different tokenizer (or a server counting
    differently) makes every token-based metric disagree with the server's own numbers. Output counts
    are judged; prompt counts are reported only, since the server's include its chat template."""
    name = "token_counts"
    metrics = token_count_mismatch(data)
    if not metrics["num_output_token_comparisons"]:
        return Check(name, SKIPPED, metrics, detail="needs client.tokenizer and a server that reports usage")
    bound = thresholds(data.cfg).max_output_token_difference
    ok = metrics["output_token_mean_relative_difference"] <= bound
    return Check(name, _verdict(ok), metrics, {"max_output_token_mean_relative_difference": bound})


def lifecycle_delays(data: RunData) -> Check:
    """ready→dispatch, dispatch→pickup, completion→processed: the client's own delays, p99 each."""
    name = "lifecycle_delays"
    stages = data.measured.select(
        "request_id",
        "session_id",
        ready_to_dispatch_s=DISPATCH_DELAY,
        dispatch_to_pickup_s=pl.col(CLIENT_PICKED_UP_AT) - pl.col(SCHEDULER_DISPATCHED_AT),
        completion_to_processed_s=pl.col("result_processed_at") - pl.col(CLIENT_COMPLETED_AT),
    )
    bound = thresholds(data.cfg).max_delay_p99_s
    metrics: dict[str, Any] = {}
    ok = True
    for stage in ("ready_to_dispatch_s", "dispatch_to_pickup_s", "completion_to_processed_s"):
        values = stages[stage].drop_nulls().to_numpy()
        if len(values) == 0:
            continue
        stats = _stats(values)
        metrics[stage.removesuffix("_s")] = {**stats, "worst_offenders": _worst(stages, stage, seconds=True)}
        ok &= stats["p99_s"] is not None and stats["p99_s"] <= bound
    if not metrics:
        return Check(name, SKIPPED, detail="no request was dispatched")
    return Check(name, _verdict(ok), metrics, {"p99_s": bound})


def drivers(data: RunData) -> Check:
    """Each driver's own lateness (ready→dispatch p99 of the requests it sent), its CPU use (its CPU
    seconds over the run's duration) and, where one schedule says what was due (driver_shares), the
    sessions of its share it never sent. A driver that left more than min_rate_tolerance of its
    share unsent (stopped or frozen: its lateness says nothing of what it never sent) limits the run
    and fails the check; else the latest one limits it, and the check fails when its lateness p99 is
    over max_delay_p99_s. A driver at SATURATED_CPU or more of its core is named too: it had no
    time to spare, and more drivers would help; so is one whose worst core lost STEAL_NOTED or more
    of its time to the hypervisor. CPU use and steal are shares of the driver's own run (run_seconds)."""
    name = "drivers"
    delays = (
        data.measured.lazy()
        .select(pl.col("driver_id").fill_null(0), DISPATCH_DELAY)
        .filter(pl.col(DISPATCH_DELAY).is_not_null())
        .collect()
    )
    if delays.height == 0:
        return Check(name, SKIPPED, detail="no request was dispatched")
    entries = {e.get("driver_id"): e for e in data.drivers}
    duration = data.duration_s
    groups = {key[0]: group[DISPATCH_DELAY].to_numpy() for key, group in delays.group_by("driver_id")}
    # Every driver run.json lists, also one that sent no measured request (it shows as such).
    ids = sorted(set(groups) | {d for d in entries if d is not None})
    shares = driver_shares(data, max(int(d) for d in ids) + 1)
    per_driver: dict[str, Any] = {}
    for driver_id in ids:
        entry = entries.get(driver_id, {})
        sent = groups.get(driver_id)
        per_driver[str(driver_id)] = {
            "num_dispatched": 0 if sent is None else len(sent),
            "lateness_p99_s": None if sent is None else exact_quantiles(sent, [0.99])[0],
            **_cpu(entry, duration),
        }
        if shares is not None:
            due, not_sent = shares.of(int(driver_id))
            per_driver[str(driver_id)] |= {"num_sessions_due": due, "num_sessions_not_sent": not_sent}
    bound = thresholds(data.cfg).max_delay_p99_s
    limits: dict[str, Any] = {"lateness_p99_s": bound}
    short: list[str] = []  # drivers that left too much of their share unsent
    if shares is not None:
        limits["max_fraction_not_sent"] = tolerance = thresholds(data.cfg).min_rate_tolerance
        short = [
            d for d, m in per_driver.items() if m["num_sessions_not_sent"] > tolerance * m["num_sessions_due"]
        ]
    if shares is not None and short:  # the one that left most unsent limits the run (of equals, the first)
        limiting = max(short, key=lambda d: per_driver[d]["num_sessions_not_sent"])
        by = _fmt(shares.due_by_s, "s")
        detail = "; ".join(
            f"driver {d} did not send {per_driver[d]['num_sessions_not_sent']} of its "
            f"{per_driver[d]['num_sessions_due']} sessions due by {by}"
            for d in short
        )
        detail += f" (driver {limiting} limits the run)"
    else:
        limiting = max(per_driver, key=lambda d: per_driver[d]["lateness_p99_s"] or 0.0)
        detail = f"driver {limiting} limits the run (largest lateness p99)"
    saturated = [d for d, m in per_driver.items() if (m["cpu_utilization"] or 0.0) >= SATURATED_CPU]
    if saturated:
        detail += f"; driver {', '.join(saturated)} used >= {SATURATED_CPU:.0%} of a core (add drivers)"
    for share, ids_stolen in stolen_cores(per_driver).items():
        detail += (
            f"; the hypervisor took {share} of the time of the worst core of driver {', '.join(ids_stolen)} "
            "(CPU steal): their latencies include those pauses"
        )
    metrics = {"num_drivers": len(per_driver), "limiting_driver": int(limiting), "drivers": per_driver}
    ok = not short and (per_driver[limiting]["lateness_p99_s"] or 0.0) <= bound
    return Check(name, _verdict(ok), metrics, limits, detail)


def _cpu(entry: dict[str, Any], duration: float | None) -> dict[str, Any]:
    """A driver's CPU figures from its run.json entry, as shares of its own run's span (the run's
    duration for entries of older versions, which have no run_seconds)."""
    seconds, steal = entry.get("cpu_seconds"), entry.get("cpu_steal_seconds")
    span = entry.get("run_seconds") or duration
    return {
        "cpu_seconds": seconds,
        "cpu_utilization": seconds / span if seconds is not None and span else None,
        "cpu_steal_seconds": steal,  # of the worst of its cores (driver/steal.py)
        "cpu_steal_fraction": steal / span if steal is not None and span else None,
    }


def stolen_cores(per_driver: dict[str, Any]) -> dict[str, list[str]]:
    """The drivers whose worst core lost STEAL_NOTED or more of its time to the hypervisor, by that
    share as shown (drivers that share cores report the same figure: one note for them all)."""
    noted: dict[str, list[str]] = {}
    for d, m in per_driver.items():
        if (m.get("cpu_steal_fraction") or 0.0) >= STEAL_NOTED:
            noted.setdefault(f"{m['cpu_steal_fraction']:.1%}", []).append(d)
    return noted


@dataclass
class Shares:
    """Each driver's share of the sessions due by `due_by_s`, and how many of those it never sent."""

    due_by_s: float
    due: dict[int, int]
    not_sent: dict[int, int]

    def of(self, driver_id: int) -> tuple[int, int]:
        return self.due.get(driver_id, 0), self.not_sent.get(driver_id, 0)


def driver_shares(data: RunData, num_drivers: int) -> Shares | None:
    """The sessions each of `num_drivers` drivers was due to send, over the schedule up to
    STOP_SKEW_S before the last session sent, and those it never sent; None where no one schedule
    says what was due: other than rate traffic, a request cap (each driver stops at its own share of
    requests, at its own point of the stream), one driver, or records that do not follow the
    placement (a run of an older version).

    Session i of the stream is due no later than session i + 1 (one arrival schedule; a timed trace
    is sorted by time) and runs on driver placement.owner_of(i). So every
    measured session up to the last one due by the cut-off was due, and left a record on its
    driver: sent, or not sent but recorded (queued for a slot at the stop, cancelled after a failure)."""
    cfg = data.cfg
    if not isinstance(cfg.traffic_scheduler, RateTraffic) or cfg.runtime.max_requests >= 0 or num_drivers < 2:
        return None
    driver_id = pl.col("driver_id").cast(pl.Int64, strict=False).fill_null(0)  # none: driver 0
    sessions = (
        data.measured.lazy()
        .group_by("session_id")
        .agg(
            driver=driver_id.min(),
            drivers=driver_id.n_unique(),
            due=pl.col(SCHEDULER_READY_AT).min(),  # its first requests': its arrival time
        )
        .collect()
    )
    if sessions.height == 0 or not sessions.schema["session_id"].is_integer():
        return None
    slots = session_slots(cfg)
    period = slots[1] if slots is not None else None
    owner = owner_of(pl.col("session_id"), period, num_drivers)
    if sessions.filter((pl.col("drivers") > 1) | (pl.col("driver") != owner)).height:
        return None
    last_due = sessions["due"].max()
    if last_due is None:
        return None
    due_by = float(last_due) - STOP_SKEW_S  # type: ignore[arg-type]  # polars stubs: an aggregate is any literal
    last = sessions.filter(pl.col("due") <= due_by)["session_id"].max()
    if last is None:  # nothing due that early: nothing to compare
        return Shares(due_by, {}, {})
    positions = np.arange(cfg.runtime.warmup_sessions, int(last) + 1)  # type: ignore[arg-type]  # polars stubs
    owners, counts = np.unique(owner_of(positions, period, num_drivers), return_counts=True)
    due = {int(d): int(c) for d, c in zip(owners, counts, strict=True)}
    seen = sessions.filter(pl.col("session_id") <= last).group_by("driver").len()
    sent = {int(d): int(n) for d, n in seen.iter_rows()}
    return Shares(due_by, due, {d: max(0, n - sent.get(d, 0)) for d, n in due.items()})


def error_rate(data: RunData) -> Check:
    name = "error_rate"
    n = int(data.measured["dispatched"].sum())  # over the requests sent, as in the summary
    if n == 0:
        return Check(name, SKIPPED, detail="no request was sent")
    failed = int(data.measured["failed"].sum())
    rate = failed / n
    bound = thresholds(data.cfg).max_error_rate
    return Check(
        name,
        _verdict(rate <= bound),
        {
            "num_dispatched_requests": n,
            "num_errored_requests": failed,
            "error_rate": rate,
            "error_code_freq": error_code_freq(data.measured),
        },
        {"max_error_rate": bound},
    )


def request_timeouts(data: RunData) -> Check:
    """Requests that hit the request (or connect) deadline: how long they would have taken is
    unknown, so their latencies are missing from the statistics exactly where they are worst."""
    name = "request_timeouts"
    n = data.measured.height
    if n == 0:
        return Check(name, SKIPPED, detail="no request")
    timed_out = data.measured.filter(pl.col("status") == TIMEOUT)
    bound = thresholds(data.cfg).max_timeouts
    return Check(
        name,
        _verdict(timed_out.height <= bound),
        {
            "num_requests": n,
            "num_timed_out_requests": timed_out.height,
            "timed_out_request_ids": timed_out["request_id"].head(WORST).to_list(),
        },
        {"max_timeouts": bound},
    )


def missing_records(data: RunData) -> Check:
    """Every request the dispatch trace says was sent has a record (warmup included). A missing
    record is a result the driver lost: every count and statistic of the run would be short of it."""
    name = "missing_records"
    if data.trace is None:
        return Check(name, SKIPPED, detail="needs traces/dispatch_trace.jsonl (trace_recorder.enabled)")
    sent = data.trace.lazy().filter(pl.col("dispatched")).select("request_id").collect()
    recorded = pl.concat([data.measured.select("request_id"), data.warmup.select("request_id")])
    if recorded.height == 0:  # no record at all: no id type of its own
        recorded = recorded.cast({"request_id": sent["request_id"].dtype})
    elif sent["request_id"].dtype != recorded["request_id"].dtype:
        sent, recorded = (df.cast({"request_id": pl.String}) for df in (sent, recorded))
    missing = sent.join(recorded, on="request_id", how="anti")
    return Check(
        name,
        _verdict(missing.height == 0),
        {
            "num_dispatched_requests": sent.height,
            "num_missing_records": missing.height,
            "missing_request_ids": missing["request_id"].sort().head(WORST).to_list(),
        },
        {"max_missing_records": 0},
    )


# ------------------------------------------------------------------ text


RULE = "=" * 72


def format_health_text(checks: list[Check]) -> str:
    blocks = []
    for check in checks:
        lines = [RULE, check.name.replace("_", " ").upper(), RULE, f"Result: {check.result}"]
        pairs: list[tuple[str, str]] = []
        if check.detail:
            pairs.append(("note", check.detail))
        _flatten(check.metrics, "", pairs)
        _flatten(check.thresholds, "threshold ", pairs)
        width = max((len(label) for label, _ in pairs), default=0)
        lines += [f"{label.ljust(width)}  {value}" for label, value in pairs]
        blocks.append("\n".join(lines))
    verdict = PASSED if all_passed(checks) else FAILED
    return "\n\n".join(blocks) + f"\n\n{RULE}\nOVERALL: {verdict}\n{RULE}\n"


def _flatten(obj: dict[str, Any], prefix: str, out: list[tuple[str, str]]) -> None:
    for key, value in obj.items():
        if key == "worst_offenders":
            for i, w in enumerate(value, 1):
                out.append((f"{prefix}worst offender {i}", _offender(w)))
            continue
        name, unit = _unit(key)
        label = f"{prefix}{name.replace('_', ' ')}"
        if isinstance(value, dict) and key != "error_code_freq":
            _flatten(value, f"{label} ", out)
        elif isinstance(value, dict):
            out.append((label, ", ".join(f"{k}: {v}" for k, v in value.items()) or "none"))
        else:
            out.append((label, _fmt(value, unit)))


def _unit(key: str) -> tuple[str, str]:
    """A metric key's label and unit: `p99_s` → (p99, s), `observed_rate_per_s` → (observed_rate, /s)."""
    if key.endswith("_per_s"):
        return key.removesuffix("_per_s"), "/s"
    if key.endswith("_s"):
        return key.removesuffix("_s"), "s"
    return key, ""


def _offender(w: dict[str, Any]) -> str:
    key = "value_s" if "value_s" in w else "value"
    return f"request {w['request_id']} (session {w['session_id']}): {_fmt(w[key], _unit(key)[1])}"


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and unit == "s":
        if value != 0 and abs(value) < 1e-3:
            return f"{value * 1e6:.4g} µs"
        return f"{value * 1e3:.4g} ms" if value != 0 and abs(value) < 1 else f"{value:.4g} s"
    if isinstance(value, float):
        return f"{value:.6g}{' ' + unit if unit else ''}"
    return f"{value}{' ' + unit if unit else ''}"
