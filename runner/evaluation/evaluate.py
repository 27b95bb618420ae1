"""Evaluate a run directory: read its records, write every derived file of outputs.md.

Used at the end of every run and by `veeksha-run evaluate RUN_DIR` (after a crash, or after a
metric fix): it needs only config.yml and the two JSONL logs, so it works on a directory whose run
was killed (a torn last record is skipped).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veeksha.runner.evaluation.distributions import write_distributions
from veeksha.runner.evaluation.frame import corrupt_line_numbers
from veeksha.runner.evaluation.health import (
    all_passed,
    format_health_text,
    health_json,
    prefix_cache,
    run_checks,
    server_checks,
    thresholds,
    trace_text_flavor,
)
from veeksha.runner.evaluation.plots import remove_stale_temps
from veeksha.runner.evaluation.prefill import build_prefill
from veeksha.runner.evaluation.reading import read_run_logs
from veeksha.runner.evaluation.rundata import prepare, split_warmup
from veeksha.runner.evaluation.slo import slo_results
from veeksha.runner.evaluation.summary import (
    AllFailed,
    all_failed,
    build_summary,
    sent_prompt_tokens,
    server_cache_tokens,
)
from veeksha.runner.evaluation.throughput import build_throughput
from veeksha.runner.evaluation.timeseries import build_timeseries, write_timeseries
from veeksha.shared.config_loader import load_written_config
from veeksha.shared.errors import ContractError
from veeksha.shared.jsonio import read_json, write_atomic, write_json
from veeksha.shared.paths import DISTRIBUTION_METRICS, RunPaths

# Set to 1, true or yes (any case) to skip the PNGs (distributions, timeseries.png), e.g. in tests that
# ignore them: drawing them takes about a second per run. The CSVs and every other file are written
# as usual, and PNGs an earlier evaluation drew are removed (they would not match the new CSVs).
# Any other value (0, false ...) leaves the plots on: `=0` read as set turned them off.
NO_PLOTS_ENV = "VEEKSHA_NO_PLOTS"
NO_PLOTS_VALUES = ("1", "true", "yes")


def plots_off(env: Mapping[str, str] = os.environ) -> bool:
    """Whether NO_PLOTS_ENV turns the PNGs off."""
    return env.get(NO_PLOTS_ENV, "").strip().lower() in NO_PLOTS_VALUES


@dataclass
class Evaluation:
    """What the console summary and `--strict` need."""

    run_dir: Path
    run_status: str | None  # from run.json (None when it is missing)
    summary: dict[str, Any]
    throughput: dict[str, Any]
    slo_results: dict[str, Any] | None  # None when no SLO is configured
    health: dict[str, Any]
    all_slos_met: bool | None  # None when no SLO is configured
    all_health_passed: bool
    timeseries_written: bool
    all_failed: AllFailed | None = None  # set when no request succeeded (exit status 1)
    num_corrupt_lines: int = 0  # lines of the request log that were not a record, skipped
    corrupt_lines: list[int] = field(default_factory=list)  # the first of them (1-based numbers)


def evaluate_run(run_dir: Path, *, rebuilt: bool = False, plots: bool = True) -> Evaluation:
    """Recompute every metric of `run_dir` and write the files. timeseries.csv is rewritten only
    with `rebuilt` or when it is missing (the live one is exact, or was deleted as stale)."""
    paths = RunPaths(Path(run_dir))
    plots = plots and not plots_off()
    for required in (paths.config_yml, paths.request_records):
        if not required.exists():
            raise ContractError(f"{required}: file is missing; is {paths.root} a run directory?")
    cfg = load_written_config(paths.config_yml)
    run_info = read_json(paths.run_json) if paths.run_json.exists() else {}
    all_records, trace = read_run_logs(paths.request_records, paths.dispatch_trace)
    num_corrupt = all_records.num_corrupt_lines
    corrupt_lines = corrupt_line_numbers(paths.request_records) if num_corrupt else []
    sent_tokens = sent_prompt_tokens(all_records.df)  # warmup included: the server looked those up too
    records, warmup = split_warmup(all_records)
    del all_records  # the warmup rows go now, not at the end
    # The time series rebuild is mostly numpy (it releases the GIL): run it beside the rest.
    with ThreadPoolExecutor(1) as pool:
        timeseries_job = pool.submit(build_timeseries, records)
        data = prepare(records, warmup, cfg, trace, drivers_of(run_info))
        summary = build_summary(data)
        server_cache = server_cache_tokens(paths.server_metrics_csv)
        summary["server_prefix_cache_hit_fraction"] = server_cache.hit_fraction if server_cache else None
        failed_run = all_failed(data)
        slos = slo_results(data)
        # Here, where a run and `veeksha-run evaluate` both build it, from the run directory alone.
        cache = prefix_cache(
            summary["server_prefix_cache_hit_fraction"],
            summary["expected_prefix_cache_hit_fraction"],
            thresholds(cfg),
            queried=server_cache.queries if server_cache else None,
            sent=sent_tokens,
            trace_flavor=trace_text_flavor(cfg),
        )
        checks = [*run_checks(data), cache, *server_checks(run_info)]
        health = health_json(checks)
        write_json(paths.summary_stats, summary)
        if slos is not None:
            write_json(paths.slo_results, slos)
        else:
            paths.slo_results.unlink(missing_ok=True)  # present exactly when SLOs are configured
        write_json(paths.health_checks_json, health)
        write_atomic(paths.health_check_txt, format_health_text(checks))
        write_json(paths.prefill_stats, build_prefill(data))
        write_distributions(paths, data, plots=plots)
        timeseries = timeseries_job.result()
    throughput = build_throughput(data, timeseries)
    write_json(paths.throughput_metrics, throughput)
    write_ts = rebuilt or not paths.timeseries_csv.exists()
    if write_ts:
        write_timeseries(paths.timeseries_csv, timeseries)
    if plots:
        _plot_timeseries(paths)
    else:
        _remove_plots(paths)
    return Evaluation(
        run_dir=paths.root,
        run_status=run_info.get("status") if isinstance(run_info, dict) else None,
        summary=summary,
        throughput=throughput,
        slo_results=slos,
        health=health,
        all_slos_met=None if slos is None else slos["all_slos_met"],
        all_health_passed=all_passed(checks),
        timeseries_written=write_ts,
        all_failed=failed_run,
        num_corrupt_lines=num_corrupt,
        corrupt_lines=corrupt_lines,
    )


def drivers_of(run_info: Any) -> list[dict[str, Any]]:
    """run.json's per-driver entries (none for a run written before they existed)."""
    driver = run_info.get("driver") if isinstance(run_info, dict) else None
    entries = driver.get("drivers") if isinstance(driver, dict) else None
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def _remove_plots(paths: RunPaths) -> None:
    """The PNGs a plotting evaluation writes, gone: drawn from the files just rewritten, they would
    show other numbers than those files (an earlier evaluation's, or a run before a metric fix)."""
    pngs = (paths.timeseries_png, *(paths.distribution_png(m) for m in DISTRIBUTION_METRICS))
    for png in pngs:
        png.unlink(missing_ok=True)
    for folder in {png.parent for png in pngs}:  # and a killed plotting evaluation's temporaries
        remove_stale_temps(folder)


def _plot_timeseries(paths: RunPaths) -> None:
    from veeksha.runner.evaluation.timeseries_plot import plot_timeseries

    tmp = paths.timeseries_png.with_name(f".{paths.timeseries_png.name}.tmp.png")
    try:
        plot_timeseries(paths.timeseries_csv, tmp, paths.server_metrics_csv)
        tmp.replace(paths.timeseries_png)  # atomic, like every other output
    finally:  # a failed plot (a full disk) leaves no temporary behind
        tmp.unlink(missing_ok=True)
