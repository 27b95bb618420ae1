"""Capacity search: the largest arrival rate (or concurrency) whose run meets every SLO.

Phase 1 multiplies the probe by `expansion_factor` until an attempt fails or `max_value` is
reached; phase 2 bisects between the last pass and the first failure down to `precision`.
No value is run twice. Each attempt is an ordinary run directory under `runs/`.
"""

from __future__ import annotations

import csv
import io
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from veeksha.runner.benchmark import check_before_start, run_benchmark, upload
from veeksha.runner.preflight import check_hosts
from veeksha.runner.run_dir import check_output_dir, make_unique_dir, python_argv, stamp, utc_now
from veeksha.shared.config import (
    BenchmarkConfig,
    CapacitySearchConfig,
    FixedIntervals,
    RateTraffic,
)
from veeksha.shared.config_loader import NO_FALLBACKS, EnvFallbacks, dump_config_yaml, load_capacity_search
from veeksha.shared.errors import ConfigError
from veeksha.shared.jsonio import read_json, write_atomic, write_json
from veeksha.shared.paths import (
    CAPSEARCH_ATTEMPTS_CSV,
    CAPSEARCH_DIR_PREFIX,
    CAPSEARCH_RESULTS,
    CAPSEARCH_RUNS_DIR,
    CONFIG_YML,
    RunPaths,
)
from veeksha.shared.records import RUN_COMPLETED, RUN_FAILED, RUN_INTERRUPTED, RUN_RUNNING, RUN_TIMEOUT

RATE_KNOB = "traffic_scheduler.interval_generator.arrival_rate"
CONCURRENCY_KNOB = "traffic_scheduler.target_concurrent_sessions"


@dataclass
class Attempt:
    iteration: int
    value: float
    passed: bool
    run_dir: str
    status: str
    error_rate: float | None
    slo_results: list[dict[str, Any]]
    num_completed: int = 0  # successful requests: none in every attempt means a broken set-up


def knob_of(cfg: BenchmarkConfig) -> str:
    return RATE_KNOB if isinstance(cfg.traffic_scheduler, RateTraffic) else CONCURRENCY_KNOB


def with_value(cfg: BenchmarkConfig, value: float) -> BenchmarkConfig:
    """A copy of `cfg` with the searched knob (arrival rate or concurrency) set to `value`."""
    traffic = cfg.traffic_scheduler
    if isinstance(traffic, RateTraffic):
        gen = traffic.interval_generator
        if isinstance(gen, FixedIntervals):
            gen = replace(gen, arrival_rate=float(value), interval=None)
        else:
            gen = replace(gen, arrival_rate=float(value))
        return replace(cfg, traffic_scheduler=replace(traffic, interval_generator=gen))
    return replace(cfg, traffic_scheduler=replace(traffic, target_concurrent_sessions=int(value)))


def rounder(search: CapacitySearchConfig, integer: bool) -> Callable[[float], float]:
    """Values on the search's grid (integers, or `precision` decimals), never above max_value:
    rounding 10.006 to 10.01 would probe a load the search was told not to."""
    scale = 1 if integer else 10**search.precision
    # The grid's last value; rounded first, as 2.3 * 100 is 229.99999999999997 in binary.
    top = max(math.floor(round(search.max_value * scale, 6)) / scale, 1 / scale)
    if integer:
        return lambda v: min(max(1, round(v)), int(top))
    return lambda v: min(round(v, search.precision), top)


def run_capacity_search(
    path: Path,
    overrides: list[tuple[str, str]],
    fallbacks: EnvFallbacks = NO_FALLBACKS,
    *,
    dry_run: bool = False,
) -> int:
    search = load_capacity_search(path, overrides, fallbacks)
    base = search.benchmark_config
    check_hosts([base], prefix="benchmark_config.")
    knob = knob_of(base)
    integer = knob == CONCURRENCY_KNOB
    rnd = rounder(search, integer)
    if rnd(search.start_value) <= 0:
        raise ConfigError(
            f"config error at start_value: {search.start_value} rounds to 0 at precision "
            f"{search.precision}; raise start_value or precision"
        )
    check_before_start(base)
    check_output_dir(Path(search.output_dir))
    if dry_run:  # every check a search makes before its first attempt has passed; nothing is made
        print(describe_plan(search, knob, rnd, integer))
        return 0
    root = make_unique_dir(Path(search.output_dir), f"{CAPSEARCH_DIR_PREFIX}{stamp(utc_now())}")
    write_atomic(root / CONFIG_YML, dump_config_yaml(search))
    runs_dir = root / CAPSEARCH_RUNS_DIR
    search_id = uuid.uuid4().hex
    print(f"veeksha: capacity search over {knob} in {root}", flush=True)

    history: list[Attempt] = []
    tried: set[float] = set()

    def attempt(value: float) -> Attempt | None:
        value = rnd(value)
        if value in tried or len(history) >= search.max_iterations:
            return None
        tried.add(value)
        info = {"id": search_id, "iteration": len(history), "knob": knob, "value": value}
        result = run_benchmark(with_value(base, value), runs_dir, argv=python_argv(), capacity_search=info)
        a = judge(search, len(history), value, result.run_dir, result.status)
        history.append(a)
        verdict = "INTERRUPTED" if a.status == RUN_INTERRUPTED else "PASS" if a.passed else "FAIL"
        print(f"veeksha: attempt {a.iteration}: {knob}={value} → {verdict}")
        write_results(root, search_id, search, knob, history, RUN_RUNNING)
        if result.status == RUN_INTERRUPTED:
            raise KeyboardInterrupt
        return a

    try:
        stop_reason = search_loop(search, attempt, rnd, integer)
    except KeyboardInterrupt:
        write_results(root, search_id, search, knob, history, RUN_INTERRUPTED)
        print("veeksha: capacity search interrupted; results so far are written", flush=True)
        return 130
    except Exception:  # an attempt that could not run (its server did not start, a full disk)
        write_results(root, search_id, search, knob, history, RUN_FAILED)
        print("veeksha: capacity search failed; results so far are written", flush=True)
        raise  # the command's one line says why
    write_results(root, search_id, search, knob, history, RUN_COMPLETED, stop_reason)
    best = best_attempt(history)
    found = best.value if best else "none (no attempt passed)"
    print(f"veeksha: best {knob} = {found} ({STOP_REASONS[stop_reason]})")
    if base.wandb.enabled:
        upload(root)  # the search's summary run and the `best` tag
    if history and not any(a.num_completed for a in history):
        # Not a capacity: the endpoint, the model or the key is wrong, at every load.
        print(f"veeksha: no attempt had a successful request; see {history[0].run_dir} in {root}", flush=True)
        return 1
    return 0  # the search ran to its end: attempts that failed (a server crashing at a load) are its findings


# Why a search ended (results "stop_reason"), and how the console says it.
STOP_REASONS = {
    "converged": "converged to the precision",
    "max_value": "every attempt passed up to max_value",
    "max_iterations": "stopped by max_iterations before converging",
}


def search_loop(
    search: CapacitySearchConfig,
    attempt: Callable[[float], Attempt | None],
    rnd: Callable[[float], float],
    integer: bool,
) -> str:
    """Expand, then bisect; returns why it stopped (a STOP_REASONS key)."""
    last_pass: float | None = None
    first_fail: float | None = None
    value = search.start_value
    step = 1 if integer else 10 ** (-search.precision)
    # Phase 1: expand until a failure or the maximum.
    while True:
        a = attempt(min(value, search.max_value))
        if a is None:
            return "max_iterations"
        if not a.passed:
            first_fail = a.value
            break
        last_pass = a.value
        if a.value >= rnd(search.max_value):
            return "max_value"
        # Rounding must not turn the next probe into this one (1 × 1.2 → 1 for concurrency).
        value = max(rnd(a.value * search.expansion_factor), a.value + step)
    # Phase 2: bisect between the last pass (or zero) and the first failure.
    lo, hi = (last_pass or 0.0), first_fail
    while hi - lo > step:
        mid = rnd((lo + hi) / 2)
        if mid <= lo or mid >= hi:
            break
        a = attempt(mid)
        if a is None:
            return "max_iterations"
        if a.passed:
            lo = a.value
        else:
            hi = a.value
    return "converged"


def describe_plan(
    search: CapacitySearchConfig, knob: str, rnd: Callable[[float], float], integer: bool
) -> str:
    """What a dry run prints: the probes of phase 1 while every attempt passes (the search loop
    itself, run on attempts that all pass, so the plan cannot drift from the search), then phase 2."""
    probes: list[float] = []

    def passing(value: float) -> Attempt | None:
        value = rnd(value)
        if value in probes or len(probes) >= search.max_iterations:  # as attempt() in the search
            return None
        probes.append(value)
        return Attempt(len(probes) - 1, value, True, "", RUN_COMPLETED, 0.0, [])

    search_loop(search, passing, rnd, integer)
    grid = "whole numbers" if integer else f"{search.precision} decimal(s)"
    return "\n".join(
        [
            f"veeksha-run: capacity search config is valid; it searches {knob}",
            f"  probes while attempts pass: {', '.join(f'{v:g}' for v in probes)} "
            f"(x{search.expansion_factor:g} each, up to max_value {search.max_value:g})",
            f"  after the first failure: bisects between it and the last pass, to {grid}",
            f"  at most {search.max_iterations} attempts, written under {search.output_dir}/",
        ]
    )


def judge(search: CapacitySearchConfig, iteration: int, value: float, run_dir: Path, status: str) -> Attempt:
    paths = RunPaths(run_dir)
    slo = (
        read_json(paths.slo_results) if paths.slo_results.exists() else {"all_slos_met": None, "results": []}
    )
    summary = read_json(paths.summary_stats) if paths.summary_stats.exists() else {}
    error_rate = summary.get("error_rate")
    passed = status in (RUN_COMPLETED, RUN_TIMEOUT) and bool(summary.get("num_completed_requests"))
    passed = passed and slo.get("all_slos_met") is not False
    if search.max_error_rate is not None:
        passed = passed and error_rate is not None and error_rate <= search.max_error_rate
    rel = str(run_dir.relative_to(run_dir.parent.parent))
    completed = int(summary.get("num_completed_requests") or 0)
    return Attempt(iteration, value, passed, rel, status, error_rate, slo.get("results", []), completed)


def best_attempt(history: list[Attempt]) -> Attempt | None:
    passed = [a for a in history if a.passed]
    return max(passed, key=lambda a: a.value) if passed else None


def write_results(
    root: Path,
    search_id: str,
    search: CapacitySearchConfig,
    knob: str,
    history: list[Attempt],
    status: str,
    stop_reason: str | None = None,
) -> None:
    best = best_attempt(history)
    write_json(
        root / CAPSEARCH_RESULTS,
        {
            "id": search_id,
            "status": status,  # running while attempts remain: the uploader waits for the end
            "searched_knob": knob,
            "start_value": search.start_value,
            "max_value": search.max_value,
            "expansion_factor": search.expansion_factor,
            "max_iterations": search.max_iterations,
            "precision": search.precision,
            "iterations_run": len(history),
            "stop_reason": stop_reason,  # converged | max_value | max_iterations; null until it ends
            "best_value": best.value if best else None,
            "best_run_dir": best.run_dir if best else None,
            "history": [
                {
                    "iteration": a.iteration,
                    "value": a.value,
                    "passed": a.passed,
                    "run_dir": a.run_dir,
                    "status": a.status,
                    "error_rate": a.error_rate,
                    "slo_results": a.slo_results,
                }
                for a in history
            ],
        },
    )
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["iteration", "value", "passed", "status", "error_rate", "run_dir"])
    for a in history:
        writer.writerow([a.iteration, a.value, a.passed, a.status, a.error_rate, a.run_dir])
    write_atomic(root / CAPSEARCH_ATTEMPTS_CSV, buf.getvalue())
