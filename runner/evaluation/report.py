"""The compact console summary printed after a run and by `veeksha-run evaluate`."""

from __future__ import annotations

from typing import Any

from veeksha.runner.evaluation.evaluate import Evaluation
from veeksha.runner.evaluation.health import stolen_cores
from veeksha.shared.paths import RunPaths
from veeksha.shared.records import FIELDS, HEALTH_FAILED, HEALTH_PASSED, HEALTH_SKIPPED

# In the field table's order: TTFA sits beside TTFC.
LATENCIES = tuple((f.short, f.name) for f in FIELDS if f.short and f.distribution)


def _seconds(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v * 1000:.1f} ms" if abs(v) < 1 else f"{v:.3f} s"


def _num(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:,.{digits}f}"


def _pct(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}%}"


def format_summary(ev: Evaluation) -> str:
    s, t = ev.summary, ev.throughput
    lines = [f"Run {ev.run_dir}" + (f"  [{ev.run_status}]" if ev.run_status else "")]
    if ev.num_corrupt_lines:
        lines.append(
            f"  corrupt   {ev.num_corrupt_lines} line(s) of the request log are not records and were "
            f"skipped (line {', '.join(map(str, ev.corrupt_lines))})"
        )
    lines.append(
        f"  requests  {s['num_requests']:,}: {s['num_completed_requests']:,} completed, "
        f"{s['num_errored_requests']:,} errored, {s['num_cancelled_requests']:,} cancelled "
        f"(error rate {_pct(s['error_rate'])})"
    )
    lines.append(
        f"  sessions  {s['num_sessions']:,}: {s['num_completed_sessions']:,} completed, "
        f"{s['num_errored_sessions']:,} errored, {s['num_incomplete_sessions']:,} incomplete"
    )
    rate = f"  session rate {_num(s['observed_session_dispatch_rate'])}/s"
    if s.get("target_session_dispatch_rate") is not None:
        rate += f" (target {_num(s['target_session_dispatch_rate'])}/s)"
    lines.append(f"  duration  {_num(s['duration_s'], 1)} s" + rate)
    goodput = ""
    if t["goodput"] is not None:  # slo_attainment is a share of the successes, not of every request
        attained = f"{_pct(t['slo_attainment'])} of successful requests met every SLO"
        goodput = f", goodput {_num(t['goodput'])} req/s ({attained})"
    lines.append(
        f"  throughput {_num(t['request_throughput'])} req/s, {_num(t['output_token_throughput'], 1)} output "
        f"tok/s, {_num(t['total_token_throughput'], 1)} total tok/s{goodput}"
    )
    lines.append(f"  {'latency':<9}{'p50':>11}{'p99':>11}")
    for label, metric in LATENCIES:
        lines.append(f"  {label:<9}{_seconds(s[f'{metric}_p50']):>11}{_seconds(s[f'{metric}_p99']):>11}")
    lines += _drivers_line(ev)
    lines += _steal_line(ev)
    if ev.slo_results is not None:
        results = ev.slo_results["results"]
        met = sum(r["met"] for r in results)
        lines.append(f"  SLOs      {met}/{len(results)} met")
        lines += [_slo_line(r) for r in results]
    checks = ev.health["checks"]
    failed = [c["name"] for c in checks if c["result"] == HEALTH_FAILED]
    skipped = sum(c["result"] == HEALTH_SKIPPED for c in checks)
    verdict = HEALTH_PASSED if ev.all_health_passed else f"{HEALTH_FAILED} (" + ", ".join(failed) + ")"
    if checks and skipped == len(checks):  # nothing to check (no request): "PASSED" would mislead
        verdict = "no check ran"
    lines.append(
        f"  health    {verdict}: {len(checks) - len(failed) - skipped} passed, {len(failed)} failed, "
        f"{skipped} skipped (health_check_results.txt)"
    )
    if ev.all_failed is not None:
        lines.append(all_failed_line(ev))
    return "\n".join(lines)


def _drivers_line(ev: Evaluation) -> list[str]:
    """With several drivers: each one's lateness p99 and CPU use, and which one limits the run."""
    check = next((c for c in ev.health["checks"] if c["name"] == "drivers"), None)
    if check is None or check["metrics"].get("num_drivers", 0) < 2:
        return []
    per = check["metrics"]["drivers"]
    lateness = " / ".join(_seconds(m["lateness_p99_s"]) for m in per.values())
    cpu = " / ".join(_pct(m["cpu_utilization"], 0) for m in per.values())
    limiting = check["metrics"]["limiting_driver"]
    return [f"  drivers   {len(per)}: lateness p99 {lateness}; CPU {cpu}; driver {limiting} limits the run"]


def _steal_line(ev: Evaluation) -> list[str]:
    """When a virtual machine's hypervisor took STEAL_NOTED or more of a driver's core: the
    latencies were measured through those pauses, which a reader of the figures should know."""
    check = next((c for c in ev.health["checks"] if c["name"] == "drivers"), None)
    noted = stolen_cores(check["metrics"].get("drivers", {})) if check is not None else {}
    return [
        f"  steal     the hypervisor took {share} of the time of the worst core of driver {', '.join(ids)}: "
        "latency tails include those pauses"
        for share, ids in noted.items()
    ]


def all_failed_line(ev: Evaluation) -> str:
    """The one line saying the run measured nothing (its exit status is 1)."""
    f = ev.all_failed
    assert f is not None
    who = "every warmup request (the run has no other)" if f.warmup_only else "every request"
    return (
        f"veeksha: {who} failed ({f.errored:,} errors, {f.cancelled:,} cancelled); "
        f"see {RunPaths(ev.run_dir).request_records}"
    )


def _slo_line(r: dict[str, Any]) -> str:
    verdict = "PASS" if r["met"] else "FAIL"
    return (
        f"    {verdict}  {r['name']}: {r['slo_metric_key']} = {_seconds(r['observed_value'])} "
        f"(threshold {_seconds(r['threshold'])}, n = {r['num_samples']:,})"
    )
