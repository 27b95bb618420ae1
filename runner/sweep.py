"""Running a config file: one benchmark, or a sweep (one run per `!expand` combination).

A sweep directory holds one run directory per combination, `sweep_manifest.json` (written before
the first run and updated after each) and `sweep_summary.json` / `.csv` (one row per run).
"""

from __future__ import annotations

import csv
import io
import uuid
from pathlib import Path
from typing import Any

from veeksha.runner.benchmark import RunResult, check_before_start, run_benchmark, upload
from veeksha.runner.preflight import check_hosts
from veeksha.runner.run_dir import check_output_dir, make_unique_dir, python_argv, stamp, utc_now
from veeksha.shared.config_loader import NO_FALLBACKS, EnvFallbacks, LoadedRun, load_benchmark_runs
from veeksha.shared.errors import ConfigError
from veeksha.shared.jsonio import read_json, write_atomic, write_json
from veeksha.shared.paths import (
    RUN_JSON,
    SWEEP_DIR_PREFIX,
    SWEEP_MANIFEST,
    SWEEP_SUMMARY_CSV,
    SWEEP_SUMMARY_JSON,
    RunPaths,
)
from veeksha.shared.records import RUN_COMPLETED, RUN_FAILED, RUN_INTERRUPTED, RUN_RUNNING, RUN_TIMEOUT

# Summary columns copied from each run's metrics files (when present).
HEADLINE_KEYS = (
    "num_requests",
    "error_rate",
    "observed_session_dispatch_rate",
    "ttfc_p50",
    "ttfc_p99",
    "tpot_p50",
    "tpot_p99",
    "end_to_end_latency_p99",
)
HEADLINE_THROUGHPUT = ("request_throughput", "output_token_throughput", "goodput")


def run_from_config(
    path: Path | None,
    overrides: list[tuple[str, str]],
    *,
    strict: bool,
    dry_run: bool,
    fallbacks: EnvFallbacks = NO_FALLBACKS,
) -> int:
    runs = load_benchmark_runs(path, overrides, fallbacks)  # every run validated before any traffic
    check_hosts(run.config for run in runs)
    for run in runs:  # a typo in the last run's trace path is found now, not hours into the sweep
        check_before_start(run.config)
    if len({run.config.output_dir for run in runs}) > 1:
        raise ConfigError(
            "config error at output_dir: !expand is not allowed here (a sweep writes all its runs "
            "under one directory); give one output_dir"
        )
    check_output_dir(Path(runs[0].config.output_dir))
    if dry_run:
        print(f"veeksha-run: config is valid; it expands to {len(runs)} run(s)")
        for i, run in enumerate(runs):
            print(f"  run {i}: {run.params or '(no sweep parameters)'}")
        return 0
    if len(runs) == 1:
        result = run_benchmark(runs[0].config, Path(runs[0].config.output_dir), argv=python_argv())
        return exit_code([result], strict=strict)
    return exit_code(run_sweep(runs), strict=strict)


def exit_code(results: list[RunResult], *, strict: bool) -> int:
    """130 interrupted; 1 a run failed, none of its requests succeeded or its evaluation failed (the
    run printed why), or, with --strict, an SLO or a health check failed; else 0."""
    if any(r.status == RUN_INTERRUPTED for r in results):
        return 130
    if any(
        r.status not in (RUN_COMPLETED, RUN_TIMEOUT) or r.all_failed or r.evaluation_failed for r in results
    ):
        return 1
    if strict and any(r.all_slos_met is False or r.all_health_passed is False for r in results):
        return 1
    return 0


def run_sweep(runs: list[LoadedRun]) -> list[RunResult]:
    root = make_unique_dir(Path(runs[0].config.output_dir), f"{SWEEP_DIR_PREFIX}{stamp(utc_now())}")
    sweep_id = uuid.uuid4().hex
    print(f"veeksha: sweep of {len(runs)} runs in {root}", flush=True)
    manifest: dict[str, Any] = {"sweep_id": sweep_id, "count": len(runs), "status": RUN_RUNNING, "runs": []}
    write_json(root / SWEEP_MANIFEST, manifest)  # a sweep in progress is visible as such
    results: list[RunResult] = []
    for index, run in enumerate(runs):
        info = {"id": sweep_id, "index": index, "count": len(runs), "params": run.params}
        try:
            result = run_benchmark(run.config, root, argv=python_argv(), sweep=info)
        except KeyboardInterrupt:  # (starting its server, evaluating): its run.json says which
            manifest["status"] = RUN_INTERRUPTED
            manifest["runs"].append(_entry_without_result(root, sweep_id, index, run, RUN_INTERRUPTED))
            results.append(RunResult(root, RUN_INTERRUPTED, "interrupted"))
            break
        except Exception as e:  # one failed run (e.g. its server did not start) ends only itself
            print(f"veeksha: sweep run {index} failed: {e}", flush=True)
            manifest["runs"].append(_entry_without_result(root, sweep_id, index, run, RUN_FAILED))
            results.append(RunResult(root, RUN_FAILED, str(e)))
            write_json(root / SWEEP_MANIFEST, manifest)
            write_summary(root, manifest)
            continue
        results.append(result)
        manifest["runs"].append(
            {"index": index, "run_dir": result.run_dir.name, "params": run.params, "status": result.status}
        )
        write_json(root / SWEEP_MANIFEST, manifest)
        write_summary(root, manifest)
        if result.status == RUN_INTERRUPTED:
            manifest["status"] = RUN_INTERRUPTED
            break
    if manifest["status"] == RUN_RUNNING:
        manifest["status"] = RUN_COMPLETED
    write_json(root / SWEEP_MANIFEST, manifest)
    write_summary(root, manifest)
    if runs[0].config.wandb.enabled:
        upload(root)  # the sweep's summary run; member runs are already uploaded and are skipped
    return results


def _entry_without_result(
    root: Path, sweep_id: str, index: int, run: LoadedRun, status: str
) -> dict[str, Any]:
    """The manifest entry of a run that raised: its directory, if it got as far as making one (its
    run.json, which names the sweep and the index, says what became of it), else none."""
    for candidate in sorted(p for p in root.iterdir() if (p / RUN_JSON).is_file()):
        info = read_json(candidate / RUN_JSON)
        sweep = info.get("sweep") if isinstance(info, dict) else None
        if isinstance(sweep, dict) and sweep.get("id") == sweep_id and sweep.get("index") == index:
            return {"index": index, "run_dir": candidate.name, "params": run.params, "status": info["status"]}
    return {"index": index, "run_dir": None, "params": run.params, "status": status}


def refresh_sweep_summary(run_root: Path) -> None:
    """After `veeksha-run evaluate` on a sweep's member: the sweep's table again, from the member
    files as they are now (a member evaluated late had an empty row, and its sweep was uploaded so)."""
    info = read_json(run_root / RUN_JSON) if (run_root / RUN_JSON).is_file() else None
    sweep_root = run_root.parent
    if not isinstance(info, dict) or not info.get("sweep") or not (sweep_root / SWEEP_MANIFEST).is_file():
        return
    manifest = read_json(sweep_root / SWEEP_MANIFEST)
    if isinstance(manifest, dict) and isinstance(manifest.get("runs"), list):
        write_summary(sweep_root, manifest)


def write_summary(root: Path, manifest: dict[str, Any]) -> None:
    """One row per run (outputs.md): a run without a directory has its status and parameters only."""
    rows = [summary_row(root, entry) for entry in manifest["runs"]]
    write_json(root / SWEEP_SUMMARY_JSON, {"sweep_id": manifest["sweep_id"], "runs": rows})
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(root / SWEEP_SUMMARY_CSV, buf.getvalue())


def summary_row(root: Path, entry: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"run_dir": entry["run_dir"], "status": entry["status"]}
    row.update(entry["params"])
    if not entry["run_dir"]:
        return row
    paths = RunPaths(root / entry["run_dir"])
    for file, keys in (
        (paths.summary_stats, HEADLINE_KEYS),
        (paths.throughput_metrics, HEADLINE_THROUGHPUT),
    ):
        if file.exists():
            data = read_json(file)
            row.update({k: data.get(k) for k in keys})
    row["all_slos_met"] = (
        read_json(paths.slo_results).get("all_slos_met") if paths.slo_results.exists() else None
    )
    return row
