"""A capacity search's results: each attempt judged from its run directory alone, and the files that
list them (capacity_search_results.json, the attempts CSV), written by the search after each attempt
and again by `veeksha-run evaluate` on an attempt (refresh_capacity_search). The rules: the
docstring of capacity_search.py.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veeksha.runner.liveness import Owner, owner_fields
from veeksha.shared.config import CapacitySearchConfig
from veeksha.shared.config_loader import load_written_config, read_written_yaml
from veeksha.shared.errors import UsageError, VeekshaError
from veeksha.shared.jsonio import read_json, write_atomic, write_json
from veeksha.shared.paths import (
    CAPSEARCH_ATTEMPTS_CSV,
    CAPSEARCH_RESULTS,
    CAPSEARCH_RUNS_DIR,
    CONFIG_YML,
    HEALTH_CHECKS_JSON,
    RUN_JSON,
    SLO_RESULTS,
    SUMMARY_STATS,
    RunPaths,
)
from veeksha.shared.records import (
    EVALUATION_ERROR,
    HEALTH_FAILED,
    RUN_COMPLETED,
    RUN_CRASHED,
    RUN_INTERRUPTED,
    RUN_RUNNING,
    RUN_TIMEOUT,
    missing_metrics,
    run_finished,
)
from veeksha.shared.schema import build

# An attempt's verdict (results `history[].verdict`, attempts CSV `verdict`).
PASS, FAIL, UNKNOWN = "pass", "fail", "unknown"
# stop_reason of a search that stopped at an attempt without a verdict.
EVALUATION_FAILED = "evaluation_failed"
# The health checks that say whether an attempt's load was applied (runner/evaluation/health.py):
# the session rate of rate traffic, the sessions in flight of concurrent traffic. Each is SKIPPED
# for the other kind of traffic.
RATE_CHECK, CONCURRENCY_CHECK = "session_dispatch_rate", "concurrency"
# The health check that fails when the server held the run's prompts already (health.prefix_cache).
PREFIX_CACHE_CHECK = "prefix_cache"


@dataclass
class Attempt:
    iteration: int
    value: float
    passed: bool | None  # None: no verdict (`why_unknown` says why)
    run_dir: str
    status: str
    error_rate: float | None
    slo_results: list[dict[str, Any]]
    num_completed: int = 0  # successful requests: none in every attempt means a broken set-up
    why_unknown: str | None = None
    # No request was sent (why_unknown says so): `evaluate` judges it alike, only a longer run can tell.
    nothing_sent: bool = False
    # The server answered from its prefix cache (why_unknown says so): `evaluate` judges it alike.
    cache_answered: bool = False
    why_failed: str | None = None
    load_note: str | None = None  # more load than the target was applied (not a failure by itself)

    @property
    def verdict(self) -> str:
        return UNKNOWN if self.passed is None else PASS if self.passed else FAIL

    @property
    def reason(self) -> str | None:
        """Why it did not pass, and whether it ran above its target load (results `history[].reason`,
        the CSV's `reason`); None for a pass at its target."""
        if self.why_unknown:
            return self.why_unknown
        said = [why for why in (self.why_failed, self.load_note) if why]
        return "; ".join(said) or None


def judge(run_dir: Path, max_error_rate: float | None) -> Attempt:
    """The attempt in `run_dir`, judged from its files alone: the search and a later `veeksha-run
    evaluate` judge it alike."""
    paths = RunPaths(run_dir)
    info = read_json(paths.run_json)
    where = info.get("capacity_search") or {}
    summary = optional_json(paths.summary_stats)
    slo = optional_json(paths.slo_results)
    health = optional_json(paths.health_checks_json)
    why_unknown = no_verdict(paths, info, summary, slo, health)
    summary = summary or {}
    silent = why_unknown is None and sent_nothing(info, summary)
    if silent:
        why_unknown = nothing_sent_reason(paths, where)
    cached = None if why_unknown else answered_from_cache(health or {})
    why_unknown = why_unknown or cached
    error_rate = summary.get("error_rate")
    completed = int(summary.get("num_completed_requests") or 0)
    passed, why_failed, load_note = None, None, None
    if why_unknown is None:
        short, load_note = load_applied(health or {})
        why_failed = failure(info.get("status"), completed, slo, error_rate, max_error_rate, short)
        passed = why_failed is None
    return Attempt(
        iteration=int(where.get("iteration", -1)),
        value=where["value"],  # as the search set it: an int for concurrency
        passed=passed,
        run_dir=f"{CAPSEARCH_RUNS_DIR}/{run_dir.name}",
        status=str(info.get("status")),
        error_rate=error_rate,
        slo_results=slo.get("results", []) if slo else [],
        num_completed=completed,
        why_unknown=why_unknown,
        nothing_sent=silent,
        cache_answered=cached is not None,
        why_failed=why_failed,
        load_note=load_note,
    )


def optional_json(path: Path) -> dict[str, Any] | None:
    """A metrics file, or None when it is missing or torn (a full disk): the attempt then has no
    verdict, and the search's other attempts are still listed."""
    try:
        data = read_json(path) if path.exists() else None
    except VeekshaError:
        return None
    return data if isinstance(data, dict) else None


def no_verdict(
    paths: RunPaths,
    info: dict[str, Any],
    summary: dict[str, Any] | None,
    slo: dict[str, Any] | None,
    health: dict[str, Any] | None,
) -> str | None:
    """Why the attempt cannot be judged; None when it can."""
    status = info.get("status")
    if status in (RUN_RUNNING, RUN_INTERRUPTED, RUN_CRASHED):
        return f"its run is {status}: the load was not applied to the end"
    if missing_metrics(info) is not None:  # run.json says why; the runner printed it too
        return f"it has no metrics: its evaluation failed or was cut short ({EVALUATION_ERROR} in run.json)"
    if not run_finished(info):
        return "it has not been evaluated"
    if summary is None:
        return f"its {SUMMARY_STATS} is missing or unreadable"
    # No slo_results.json is no verdict on the SLOs, not a pass. (A search has SLOs; one made
    # before that rule may have had none, and then has no slo_results.json to miss.)
    if slo is None and load_written_config(paths.config_yml).slos:
        return f"its {SLO_RESULTS} is missing or unreadable"
    # Written with the summary: without it, whether the load was applied is not known.
    if health is None:
        return f"its {HEALTH_CHECKS_JSON} is missing or unreadable"
    return None


def sent_nothing(info: dict[str, Any], summary: dict[str, Any]) -> bool:
    """An attempt that ran to its end without sending a request (its first arrival came after the
    run's end: 0.1/s in a 2 s run) measured nothing about its load. Judged a `fail` ("no request
    succeeded") it used up an attempt and steered the search down to a wrong answer. A `failed` run
    (its server died) stays a fail: that is a finding. A summary without the count (older) is judged
    as before."""
    ran_out = info.get("status") in (RUN_COMPLETED, RUN_TIMEOUT)
    return ran_out and summary.get("num_dispatched_requests") == 0


def nothing_sent_reason(paths: RunPaths, where: dict[str, Any]) -> str:
    """What to change, named as the search's config file has it (under benchmark_config)."""
    timeout = load_written_config(paths.config_yml).runtime.benchmark_timeout
    load = f"{where.get('knob')}={where.get('value')}"
    if timeout <= 0:  # (no time limit: the run ended on its session count)
        return f"no request was sent: the run ended before the first arrival at {load}"
    return (
        f"no request was sent: benchmark_config.runtime.benchmark_timeout ({timeout:g} s) is too short "
        f"for {load}; lengthen it"
    )


def answered_from_cache(health: dict[str, Any]) -> str | None:
    """Why the attempt measured nothing when its prefix_cache health check failed (with the check's
    own detail), else None. The server held its prompts already (a search run again against a server
    still up repeats seed + i): its TTFC came from the cache, it passed, and the search reported a
    capacity it never saw. No verdict, not a fail: the load was never served for real either way."""
    checks = health.get("checks")
    for check in checks if isinstance(checks, list) else []:
        if isinstance(check, dict) and check.get("name") == PREFIX_CACHE_CHECK:
            if check.get("result") == HEALTH_FAILED:
                detail = check.get("detail")
                return f"its {PREFIX_CACHE_CHECK} health check failed" + (f": {detail}" if detail else "")
    return None


def failure(
    status: object,
    completed: int,
    slo: dict[str, Any] | None,
    error_rate: float | None,
    max_error_rate: float | None,
    load_short: str | None,
) -> str | None:
    """Why an attempt that can be judged fails; None when it passes. A run that failed (its server
    died at this load) or had no successful request fails. So does one whose target load was not
    applied (`load_short`, from load_applied): its SLOs measured only the load the client managed to
    send (TTFC counts from the client's pick-up, so sessions queued in the client are invisible to it)."""
    if status not in (RUN_COMPLETED, RUN_TIMEOUT):
        return f"its run's status is {status}"
    if not completed:
        return "no request succeeded"
    if load_short is not None:
        return load_short
    if slo is not None and slo.get("all_slos_met") is not True:
        return _slos_missed(slo)
    if max_error_rate is not None and (error_rate is None or error_rate > max_error_rate):
        return f"error rate {error_rate} above max_error_rate {max_error_rate}"
    return None


def _slos_missed(slo: dict[str, Any]) -> str:
    results = slo.get("results")
    missed = (
        [str(r.get("name")) for r in results if isinstance(r, dict) and not r.get("met")]
        if isinstance(results, list)
        else []
    )
    return f"SLO not met: {', '.join(missed)}" if missed else "its SLOs were not all met"


def load_applied(health: dict[str, Any]) -> tuple[str | None, str | None]:
    """(why the attempt's target load was not applied, a note that more than it was), from its health
    checks; (None, None) when the load check passed or did not apply (SKIPPED). A failed check is a
    shortfall only when less load than the target was applied: more does not fail an attempt by itself
    (if the SLOs held under more load, they hold at the target); its reason says so all the same."""
    checks = health.get("checks")
    for check in checks if isinstance(checks, list) else []:
        if not isinstance(check, dict) or check.get("result") != HEALTH_FAILED:
            continue
        metrics = check.get("metrics")
        metrics = metrics if isinstance(metrics, dict) else {}
        if check.get("name") == RATE_CHECK:
            return _rate_applied(metrics, str(check.get("detail") or ""))
        if check.get("name") == CONCURRENCY_CHECK:
            return _concurrency_applied(metrics)
    return None, None


def _rate_applied(metrics: dict[str, Any], detail: str) -> tuple[str | None, str | None]:
    rate, target = _number(metrics, "observed_rate_per_s"), _number(metrics, "target_rate_per_s")
    said = f"; {detail}" if detail else ""
    if rate is None or target is None:
        return f"target load not reached: {RATE_CHECK} failed{said}", None
    if rate > target:  # (a short window of Poisson arrivals: 3.94/s observed at a 2/s target)
        return None, f"load above target: {rate:.2f}/s for the {target:g}/s target{said}"
    return f"target load not reached: session rate {rate:.2f}/s of the {target:g}/s target{said}", None


def _concurrency_applied(metrics: dict[str, Any]) -> tuple[str | None, str | None]:
    """The check fails when the mean strays from the target or the peak exceeds it. A mean at or
    above the target is more load than asked (the peak is above it then): a note. A mean below it is
    a shortfall; with a peak above the target, the sessions came and went, not the load asked for."""
    mean, peak = _number(metrics, "mean_concurrent_sessions"), _number(metrics, "max_concurrent_sessions")
    target = _number(metrics, "target_concurrent_sessions")
    if mean is None or peak is None or target is None:
        return f"target load not reached: {CONCURRENCY_CHECK} failed", None
    on_average = f"{mean:.3g} concurrent sessions on average"
    if mean >= target:
        return None, f"load above target: {on_average}, up to {peak:g}, for the {target:g} targeted"
    if peak > target:
        return f"target load not held: {on_average}, up to {peak:g}, for the {target:g} targeted", None
    return f"target load not reached: {on_average} of the {target:g} targeted", None


def _number(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def attempts_on_disk(root: Path, search_id: str, max_error_rate: float | None) -> list[Attempt]:
    """Every attempt of the search that made a run directory (its run.json names the search), judged,
    in the order they ran."""
    found = _attempt_dirs(root, search_id)
    return sorted((judge(p, max_error_rate) for p in found), key=lambda a: a.iteration)


def attempt_of(run_dir: Path) -> str | None:
    """The id of the search whose attempt `run_dir` is, by its run.json; None for any other folder."""
    try:
        info = read_json(run_dir / RUN_JSON) if (run_dir / RUN_JSON).is_file() else None
    except VeekshaError:  # a torn run.json: nothing to judge it by
        return None
    where = info.get("capacity_search") if isinstance(info, dict) else None
    return str(where.get("id")) if isinstance(where, dict) else None


def best_attempt(history: list[Attempt]) -> Attempt | None:
    passed = [a for a in history if a.passed]
    return max(passed, key=lambda a: a.value) if passed else None


def results_header(search_id: str, search: CapacitySearchConfig, knob: str) -> dict[str, Any]:
    """The results' fields that are the search's own, not computed from its attempts."""
    return {
        "id": search_id,
        "status": RUN_RUNNING,  # running while attempts remain: the uploader waits for the end
        "searched_knob": knob,
        "start_value": search.start_value,
        "max_value": search.max_value,
        "expansion_factor": search.expansion_factor,
        "max_iterations": search.max_iterations,
        "precision": search.precision,
        "stop_reason": None,  # converged | max_value | max_iterations | evaluation_failed; null until it ends
        **owner_fields(),  # the search's process: `evaluate` tells a killed search by it
    }


# Results fields computed from the attempts (the rest is results_header).
COMPUTED = ("iterations_run", "best_value", "best_run_dir", "history")


def write_results(root: Path, header: dict[str, Any], history: list[Attempt]) -> None:
    best = best_attempt(history)
    computed = {
        "iterations_run": len(history),
        "best_value": best.value if best else None,
        "best_run_dir": best.run_dir if best else None,
        "history": [
            {
                "iteration": a.iteration,
                "value": a.value,
                "passed": a.passed,  # null when the verdict is unknown
                "verdict": a.verdict,
                "run_dir": a.run_dir,
                "status": a.status,
                "error_rate": a.error_rate,
                "reason": a.reason,  # why it failed or has no verdict, or ran above its target; else null
                "slo_results": a.slo_results,
            }
            for a in history
        ],
    }
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["iteration", "value", "passed", "verdict", "status", "error_rate", "run_dir", "reason"])
    for a in history:
        writer.writerow(
            [a.iteration, a.value, a.passed, a.verdict, a.status, a.error_rate, a.run_dir, a.reason or ""]
        )
    # The CSV first: the results file carries the status an uploader waits for, so whoever sees it
    # ended finds every attempt in the CSV already.
    write_atomic(root / CAPSEARCH_ATTEMPTS_CSV, buf.getvalue())
    write_json(root / CAPSEARCH_RESULTS, {**header, **computed})


# ---------------------------------------------------------------- after `veeksha-run evaluate`


def refresh_capacity_search(run_dir: Path, other_host_gone: bool = False) -> str | None:
    """After `veeksha-run evaluate` on an attempt: its search's results and attempts CSV again, from
    the attempts on disk (this one re-judged). A search left `running` by a process that died is
    marked crashed. Returns what to tell the user; None for a run of no search."""
    # Its parents are those of the whole path: `evaluate <attempt>` from inside runs/ (or `.`) gave
    # a relative path, whose parents are `.`, and the search was not found.
    run_dir = Path(os.path.abspath(run_dir))
    root = run_dir.parent.parent
    search_id = attempt_of(run_dir)
    if search_id is None or run_dir.parent.name != CAPSEARCH_RUNS_DIR:
        return None
    try:
        results = read_json(root / CAPSEARCH_RESULTS) if (root / CAPSEARCH_RESULTS).is_file() else None
        if not isinstance(results, dict) or results.get("id") != search_id:
            return None
        return _refresh(root, run_dir, results, other_host_gone)
    except VeekshaError as e:  # the attempt itself is evaluated; only the search's files are stale
        return f"capacity search {root}: results not rewritten ({e})"


def _refresh(root: Path, run_dir: Path, results: dict[str, Any], other_host_gone: bool) -> str | None:
    header = {k: v for k, v in results.items() if k not in COMPUTED}
    crashed = False
    if header.get("status") == RUN_RUNNING:
        runner = Owner.named_in(header, read_json(run_dir / RUN_JSON))
        if runner.alive:
            return (
                f"capacity search {root} is still running (process {runner.pid}); it writes this "
                "attempt's verdict into its results itself"
            )
        if runner.elsewhere and not other_host_gone:
            return runner.may_be_running(f"capacity search {root}")
        header["status"], crashed = RUN_CRASHED, True
    history = _rewrite(root, header)
    if crashed:
        return _crashed_note(root, history)
    this = next(a for a in history if a.run_dir.endswith(f"/{run_dir.name}"))
    knob = str(header.get("searched_knob")).rsplit(".", 1)[-1]
    return f"capacity search {root}: attempt {this.iteration} ({knob}={this.value}) is now {this.verdict}"


def _rewrite(root: Path, header: dict[str, Any]) -> list[Attempt]:
    max_error_rate = build(CapacitySearchConfig, read_written_yaml(search_config(root))).max_error_rate
    history = attempts_on_disk(root, str(header["id"]), max_error_rate)
    write_results(root, header, history)
    return history


def _crashed_note(root: Path, history: list[Attempt]) -> str:
    return (
        f"capacity search {root} was left running by a process that died: marked crashed; its "
        f"results list the {len(history)} attempt(s) on disk"
    )


# ---------------------------------------------------------------- `veeksha-run evaluate CAPSEARCH_DIR`


def is_search_root(path: Path) -> bool:
    return (path / CAPSEARCH_RESULTS).is_file() and not (path / RUN_JSON).exists()


def _results_header(root: Path) -> dict[str, Any]:
    results = read_json(root / CAPSEARCH_RESULTS)
    if not isinstance(results, dict) or "id" not in results:
        raise UsageError(
            f"{root / CAPSEARCH_RESULTS} is not a capacity search's results; evaluate its runs one by one"
        )
    search_config(root)  # checked before any attempt is evaluated: the results are rewritten by it
    return {k: v for k, v in results.items() if k not in COMPUTED}


def search_config(root: Path) -> Path:
    """The search's own config.yml (its max_error_rate judges the attempts). Without it the config
    loader's error told the user to check a --config path that `evaluate` does not take."""
    path = root / CONFIG_YML
    if not path.is_file():
        raise UsageError(
            f"{root} has no {CONFIG_YML}: a capacity search writes it first, and its attempts are judged "
            f"by it (max_error_rate); put the search's config back there, or evaluate its runs one by one"
        )
    return path


def _attempt_dirs(root: Path, search_id: str) -> list[Path]:
    runs = root / CAPSEARCH_RUNS_DIR
    return [p for p in sorted(runs.iterdir()) if attempt_of(p) == search_id] if runs.is_dir() else []


def check_search_ended(root: Path, other_host_gone: bool) -> None:
    """Before `veeksha-run evaluate CAPSEARCH_DIR` touches an attempt: the search's process has ended
    (a search killed before its first attempt made a directory has only its results to finish)."""
    header = _results_header(root)
    if header.get("status") != RUN_RUNNING:
        return
    first = [read_json(d / RUN_JSON) for d in _attempt_dirs(root, str(header["id"]))[:1]]
    Owner.named_in(header, *first).check_ended(
        f"capacity search {root}", other_host_gone, "evaluate one of its attempts"
    )


def attempts_to_finish(root: Path) -> list[Path]:
    """The attempts `veeksha-run evaluate CAPSEARCH_DIR` evaluates: those not finished."""
    return unevaluated_attempts(root, str(_results_header(root)["id"]))


def unevaluated_attempts(root: Path, search_id: str) -> list[Path]:
    """The search's attempts without metrics (not finished): the uploader's summary run waits for them."""
    return [d for d in _attempt_dirs(root, search_id) if not run_finished(read_json(d / RUN_JSON))]


def refresh_search(root: Path) -> str | None:
    """After check_search_ended and its attempts' evaluation: the results and attempts CSV from the
    attempts on disk; a search left `running` (its process is gone) is marked crashed."""
    header = _results_header(root)
    crashed = header.get("status") == RUN_RUNNING
    if crashed:
        header["status"] = RUN_CRASHED
    history = _rewrite(root, header)
    return _crashed_note(root, history) if crashed else None
