"""Running a config file: one benchmark, or a sweep (one run per `!expand` combination).

A sweep directory holds one run directory per combination, `sweep_manifest.json` and
`sweep_summary.json` / `.csv` (one row per combination). The manifest lists every combination before
the first run starts (`pending`), and is rewritten as each starts (`running`) and ends (its run's
status); those a sweep ends without are `not_run`. A sweep killed outright stays `running` until
`veeksha-run evaluate` finds its process gone (refresh_sweep) and marks it `crashed`.
"""

from __future__ import annotations

import csv
import io
import os
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
from veeksha.runner.benchmark import (
    RunResult,
    check_before_start,
    check_ray_clusters,
    resolve_external_endpoint,
    run_benchmark,
    upload,
    will_upload,
)
from veeksha.runner.liveness import Owner, owner_fields
from veeksha.runner.preflight import check_hosts
from veeksha.runner.run_dir import check_output_dir, make_unique_dir, python_argv, stamp, utc_now
from veeksha.shared.config import BenchmarkConfig, check_seed_offsets
from veeksha.shared.config_loader import NO_FALLBACKS, EnvFallbacks, LoadedRun, load_benchmark_runs
from veeksha.shared.errors import ConfigError, ContractError, UsageError
from veeksha.shared.jsonio import read_json, write_atomic, write_json
from veeksha.shared.paths import (
    RUN_JSON,
    SWEEP_DIR_PREFIX,
    SWEEP_MANIFEST,
    SWEEP_SUMMARY_CSV,
    SWEEP_SUMMARY_JSON,
    RunPaths,
)
from veeksha.shared.records import (
    MEMBER_NOT_RUN,
    MEMBER_PENDING,
    RUN_COMPLETED,
    RUN_CRASHED,
    RUN_FAILED,
    RUN_INTERRUPTED,
    RUN_RUNNING,
    RUN_TIMEOUT,
    run_finished,
)
from veeksha.shared.schema import to_dict

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
    check_output_dir_not_swept(runs)
    check_upload_not_swept(runs)
    check_distinct_runs(runs)
    check_own_seeds(runs)
    check_hosts(run.config for run in runs)
    for run in runs:  # a typo in the last run's trace path is found now, not hours into the sweep
        check_before_start(run.config)
    # Joined and checked now: else every member failed with it, in a sweep directory made for nothing.
    check_ray_clusters(run.config for run in runs)
    check_output_dir(Path(runs[0].config.output_dir))
    if dry_run:
        print(f"veeksha-run: config is valid; it expands to {len(runs)} run(s)")
        for i, run in enumerate(runs):
            print(f"  run {i}: {run.params or '(no sweep parameters)'}")
        return 0
    if len(runs) == 1:
        result = run_benchmark(runs[0].config, Path(runs[0].config.output_dir), argv=python_argv())
        return exit_code([result], strict=strict)
    # An endpoint already up names its model now, before the sweep's directory (as a single run):
    # else every member failed with the same config error, in a sweep directory made for nothing.
    runs = [replace(run, config=resolve_external_endpoint(run.config)) for run in runs]
    return exit_code(run_sweep(runs), strict=strict)


def check_output_dir_not_swept(runs: list[LoadedRun]) -> None:
    """A sweep writes all its runs under one directory: any !expand on output_dir is refused (README),
    also one whose values are all the same."""
    if any("output_dir" in run.params for run in runs):
        raise ConfigError(
            "config error at output_dir: !expand is not allowed here (a sweep writes all its runs "
            "under one directory); give one output_dir"
        )


# Where and whether a sweep uploads: one W&B group, its summary run under the first run's section.
ONE_PER_SWEEP = ("wandb", "wandb.enabled", "wandb.mode", "wandb.project", "wandb.entity", "wandb.group")


def check_upload_not_swept(runs: list[LoadedRun]) -> None:
    """An !expand on where or whether the sweep uploads is refused: the summary would follow the first
    run's choice (and upload a run that opted out, or leave out one that opted in). A run's name,
    tags and notes may vary."""
    swept = sorted({key for run in runs for key in run.params if key in ONE_PER_SWEEP})
    if swept:
        raise ConfigError(
            f"config error at {swept[0]}: !expand is not allowed here (a sweep uploads as one W&B "
            "group, its summary beside its runs); give one value, or run one sweep per value"
        )


def check_distinct_runs(runs: list[LoadedRun]) -> None:
    """Two combinations of one config would measure the same thing twice, under two indexes: an
    !expand list holds a value twice (or two spellings of it, 1 and 1.0). Configs are grouped by
    their redacted form, then compared whole (two API keys are redacted alike)."""
    seen: dict[bytes, list[int]] = {}
    for j, run in enumerate(runs):
        group = seen.setdefault(orjson.dumps(to_dict(run.config), option=orjson.OPT_SORT_KEYS), [])
        i = next((i for i in group if runs[i].config == run.config), None)
        if i is not None:
            first, second = repr(runs[i].params), repr(run.params)
            shown = first if first == second else f"{first} and {second}"
            raise ConfigError(
                f"config error at !expand: runs {i} and {j} of the sweep are the same config ({shown}); "
                "list each value once (to repeat a run, sweep seed instead)"
            )
        group.append(j)


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
    """Each run in turn, then the sweep's summary uploaded (W&B enabled). Ctrl-C, as for a capacity
    search: during a run's traffic it ends that run (evaluated and uploaded like any run: run_benchmark
    returns it `interrupted`), and the sweep then ends and uploads its summary. Anywhere else (a
    server's start or stop, an evaluation, an upload, between runs: a KeyboardInterrupt out of
    run_benchmark or this loop) it stops at once: nothing more is uploaded, and the command to upload
    later is printed."""
    root = make_unique_dir(Path(runs[0].config.output_dir), f"{SWEEP_DIR_PREFIX}{stamp(utc_now())}")
    manifest = new_manifest(uuid.uuid4().hex, runs)
    results: list[RunResult] = []
    stopped = False  # a Ctrl-C outside a run's traffic: no upload starts after it
    try:
        print(f"veeksha: sweep of {len(runs)} runs in {root}", flush=True)
        save(root, manifest)  # a sweep in progress is visible as such, with all it is to run
        for index, run in enumerate(runs):
            result = _run_member(root, manifest, index, run)
            results.append(result)
            save(root, manifest)
            if result.status == RUN_INTERRUPTED:
                manifest["status"] = RUN_INTERRUPTED
                break
    except KeyboardInterrupt:
        # Outside a member's recording (before the first, between two, a member's server start,
        # evaluation or upload): the sweep ends as interrupted all the same, not killed with its
        # manifest still saying running.
        end_interrupted(root, manifest, runs)
        results.append(RunResult(root, RUN_INTERRUPTED, "interrupted"))
        stopped = True
    if manifest["status"] == RUN_RUNNING:
        manifest["status"] = RUN_COMPLETED
    end_pending(manifest)
    save(root, manifest)
    cfg = runs[0].config  # its wandb section is the one the uploader reads for the sweep
    if stopped and will_upload(cfg):
        # The user stopped what was going (an upload, maybe): no new upload starts now. Stopped before
        # any run had a directory, there is nothing to upload (the uploader skips such a sweep).
        if any(entry.get("run_dir") for entry in manifest["runs"]):
            print(f"veeksha: sweep not uploaded; upload its runs and summary with: veeksha-upload {root}")
    elif cfg.wandb.enabled:
        upload(root, cfg)  # the sweep's summary run; member runs are already uploaded and are skipped
    return results


def new_manifest(sweep_id: str, runs: list[LoadedRun]) -> dict[str, Any]:
    """Every combination is listed before the first run starts: a sweep that is killed or
    interrupted still says what it was to run, and with which parameters."""
    return {
        "sweep_id": sweep_id,
        "count": len(runs),
        "status": RUN_RUNNING,
        # Who runs it: `veeksha-run evaluate` tells a sweep whose process died from one still going.
        **owner_fields(),
        "runs": [_entry(index, None, run.params, MEMBER_PENDING) for index, run in enumerate(runs)],
    }


def _entry(index: int, run_dir: str | None, params: dict[str, Any], status: str) -> dict[str, Any]:
    return {"index": index, "run_dir": run_dir, "params": params, "status": status}


def save(root: Path, manifest: dict[str, Any]) -> None:
    # The summary first: it is derived from the manifest, so whoever sees the manifest's new state
    # (a follower, a user's script) finds the summary already saying the same.
    write_summary(root, manifest)
    write_json(root / SWEEP_MANIFEST, manifest)


def own_sessions(run: LoadedRun, index: int) -> BenchmarkConfig:
    """Run `index`'s config. Seed + index only when the run has no server section (an endpoint
    already up, whose prefix cache outlives each run) and the sweep does not vary `seed`; else the
    seed as given (each run's own fresh server: one workload for every variant). Why: draws_own_seed.
    Its config.yml keeps the seed it used, so the sweep stays reproducible."""
    if not draws_own_seed(run):
        return run.config
    return replace(run.config, seed=run.config.seed + index)


def draws_own_seed(run: LoadedRun) -> bool:
    """Whether a run of a sweep takes seed + its index: only against an endpoint already up (no server
    section), and when the sweep does not vary `seed` itself. Such a server outlives each run: with one
    seed every run sent the same prompts, and its prefix cache answered the later runs from the first
    one's (a capacity search's attempts: seed + iteration). A run with a server section starts a fresh
    server, and keeps the seed: the same seed gives the same sessions, prompt lengths and arrival
    times, the same workload for each server variant a sweep compares."""
    return run.config.server is None and "seed" not in run.params


def check_own_seeds(runs: list[LoadedRun]) -> None:
    """The last run that takes seed + index has a seed a config takes (check_seed_offsets), before
    anything starts: run 1 of a sweep at seed 2**63-1 wrote seed 2**63, and its evaluation failed."""
    offset = [index for index, run in enumerate(runs) if draws_own_seed(run)]
    if offset:
        given = f"{len(runs)} runs against an endpoint already up (no server section)"
        check_seed_offsets(runs[offset[-1]].config.seed, offset[-1] + 1, key="seed", given=given)


def _run_member(root: Path, manifest: dict[str, Any], index: int, run: LoadedRun) -> RunResult:
    """Run one combination, its manifest entry `running` meanwhile (its directory is made once its
    server is up: run.json, which names the sweep and the index, says which it is), then its outcome."""
    sweep_id = manifest["sweep_id"]
    manifest["runs"][index]["status"] = RUN_RUNNING
    save(root, manifest)
    info = {"id": sweep_id, "index": index, "count": manifest["count"], "params": run.params}
    try:
        cfg = own_sessions(run, index)
        result = run_benchmark(cfg, root, argv=python_argv(), sweep=info, known_secrets=run.sweep_secrets)
    except Exception as e:  # one failed run (e.g. its server did not start) ends only itself
        print(f"veeksha: sweep run {index} failed: {e}", flush=True)
        manifest["runs"][index] = _entry_without_result(root, sweep_id, index, run, RUN_FAILED)
        return RunResult(root, RUN_FAILED, str(e))
    manifest["runs"][index] = _entry(index, result.run_dir.name, run.params, result.status)
    return result


def end_interrupted(root: Path, manifest: dict[str, Any], runs: list[LoadedRun]) -> None:
    """A Ctrl-C outside a member's recording (which ends its run as interrupted itself): the sweep is
    `interrupted`, and so is a member it had marked `running` (its run.json, if it got as far as one:
    started its server, evaluating, uploading, says what became of it)."""
    manifest["status"] = RUN_INTERRUPTED
    for index, entry in enumerate(manifest["runs"]):
        if entry.get("status") == RUN_RUNNING:
            manifest["runs"][index] = _entry_without_result(
                root, manifest["sweep_id"], index, runs[index], RUN_INTERRUPTED
            )


def end_pending(manifest: dict[str, Any]) -> None:
    """The sweep has ended: the combinations it did not start never will."""
    for entry in manifest["runs"]:
        if entry.get("status") == MEMBER_PENDING:
            entry["status"] = MEMBER_NOT_RUN


def _entry_without_result(
    root: Path, sweep_id: str, index: int, run: LoadedRun, status: str
) -> dict[str, Any]:
    """The manifest entry of a run that raised: its directory, if it got as far as making one (its
    run.json, which names the sweep and the index, says what became of it), else none."""
    if member := member_runs(root, sweep_id).get(index):
        return _entry(index, member[0], run.params, member[1].get("status") or status)
    return _entry(index, None, run.params, status)


def member_runs(root: Path, sweep_id: str) -> dict[int, tuple[str, dict[str, Any]]]:
    """The run directories under `root` whose run.json names this sweep: index -> (name, run.json)."""
    found: dict[int, tuple[str, dict[str, Any]]] = {}
    for candidate in sorted(p for p in root.iterdir() if (p / RUN_JSON).is_file()):
        try:
            info = read_json(candidate / RUN_JSON)
        except ContractError:
            continue  # torn by a crash: that run's own evaluation reports it
        sweep = info.get("sweep") if isinstance(info, dict) else None
        if isinstance(sweep, dict) and sweep.get("id") == sweep_id and isinstance(sweep.get("index"), int):
            found[sweep["index"]] = (candidate.name, info)
    return found


# ---------------------------------------------------------------- `veeksha-run evaluate`


def is_sweep_root(path: Path) -> bool:
    """A sweep directory (not one of its runs): what `veeksha-run evaluate` may be given too."""
    return (path / SWEEP_MANIFEST).is_file() and not (path / RUN_JSON).is_file()


def refresh_sweep_summary(run_root: Path, other_host_gone: bool = False) -> str | None:
    """After `veeksha-run evaluate` on a sweep's member: its sweep refreshed (refresh_sweep); None
    for a run of no sweep."""
    # Its parent is that of the whole path: `evaluate .` from inside the member has none (`.`).
    run_root = Path(os.path.abspath(run_root))
    info = read_json(run_root / RUN_JSON) if (run_root / RUN_JSON).is_file() else None
    if not isinstance(info, dict) or not info.get("sweep") or not is_sweep_root(run_root.parent):
        return None
    return refresh_sweep(run_root.parent, other_host_gone)


def refresh_sweep(root: Path, other_host_gone: bool = False) -> str | None:
    """The manifest's entries and the table again from each member's run.json, as they are now (a
    member evaluated late had an empty row; a killed one was still `running`, or missing from an
    older manifest), and a sweep whose process is gone marked `crashed`: final, so the uploader
    takes it. Returns what the user should be told, if anything."""
    manifest = _read_manifest(root)
    if manifest is None:
        return None
    rebuild_entries(root, manifest)
    if manifest.get("status") != RUN_RUNNING:  # ended (or an old sweep that did not say)
        if manifest.get("status") is not None:
            end_pending(manifest)
        save(root, manifest)
        return None
    runner = sweep_owner(root, manifest)
    if runner.alive:  # it rewrites the manifest itself after each run: only the table is redone
        write_summary(root, manifest)
        return None
    if runner.elsewhere and not other_host_gone:
        write_summary(root, manifest)
        return runner.may_be_running(f"sweep {root}")
    # (An older manifest has no entry for those: its count says how many there were.)
    started = sum(1 for entry in manifest["runs"] if entry.get("status") != MEMBER_PENDING)
    never = max(int(manifest.get("count") or 0) - started, 0)
    end_crashed(manifest)
    save(root, manifest)
    return (
        f"sweep {root} was left running by a process that died: marked crashed; "
        f"{never} combination(s) never ran"
    )


def end_crashed(manifest: dict[str, Any]) -> None:
    """The sweep's process died: the sweep is `crashed`, and so is a member it was starting (its
    server loading: no directory, so no run.json that `evaluate` could mark); the rest never ran."""
    manifest["status"] = RUN_CRASHED
    for entry in manifest["runs"]:
        if entry.get("status") == RUN_RUNNING and not entry.get("run_dir"):
            entry["status"] = RUN_CRASHED
    end_pending(manifest)


def _read_manifest(root: Path) -> dict[str, Any] | None:
    manifest = read_json(root / SWEEP_MANIFEST)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("runs"), list):
        return None
    return manifest


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest of a sweep directory `veeksha-run evaluate` was given; UsageError naming the file
    when it is not one (with none, every step did nothing and evaluate exited 0 without a word)."""
    manifest = read_json(root / SWEEP_MANIFEST)
    runs = manifest.get("runs") if isinstance(manifest, dict) else None
    entries_ok = isinstance(runs, list) and all(isinstance(entry, dict) for entry in runs)
    # (The sweep_id is what names its members in their run.json: without one none is found.)
    if not entries_ok or not isinstance(manifest.get("sweep_id"), str):
        raise UsageError(
            f"{root / SWEEP_MANIFEST} is not a sweep manifest (an object with a sweep_id, whose runs "
            "are a list of objects); evaluate its run directories one by one"
        )
    return manifest


def rebuild_entries(root: Path, manifest: dict[str, Any]) -> None:
    """Each started combination's run directory and status from its run.json (the one file a killed
    runner leaves current). A member the manifest lacks (older sweeps listed a run once it had
    ended) is added with the parameters its run.json holds."""
    entries = {
        e["index"]: e for e in manifest["runs"] if isinstance(e, dict) and isinstance(e.get("index"), int)
    }
    for index, (name, info) in member_runs(root, str(manifest.get("sweep_id"))).items():
        params = info["sweep"].get("params") or {}
        entry = entries.setdefault(index, _entry(index, None, params, MEMBER_PENDING))
        entry.update(run_dir=name, status=info.get("status"))
    manifest["runs"] = [entries[index] for index in sorted(entries)]


def sweep_owner(root: Path, manifest: dict[str, Any]) -> Owner:
    """The sweep's process: its manifest names it, or (an older one) any member's run.json."""
    members = [info for _, info in member_runs(root, str(manifest.get("sweep_id"))).values()]
    return Owner.named_in(manifest, *members[:1])


def check_sweep_ended(root: Path, other_host_gone: bool) -> None:
    """Before `veeksha-run evaluate SWEEP_DIR` touches a member: its manifest is one, and the sweep's
    process has ended."""
    manifest = read_manifest(root)
    if manifest.get("status") != RUN_RUNNING:
        return
    sweep_owner(root, manifest).check_ended(
        f"sweep {root}", other_host_gone, "evaluate one of its run directories"
    )


def members_to_finish(root: Path) -> list[Path]:
    """The members `veeksha-run evaluate SWEEP_DIR` evaluates: those not finished (killed while
    running, or whose evaluation failed or was cut)."""
    manifest = _read_manifest(root)
    sweep_id = str(manifest.get("sweep_id")) if manifest else ""
    return [root / name for name, info in member_runs(root, sweep_id).values() if not run_finished(info)]


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
