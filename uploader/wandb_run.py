"""One run directory → one W&B run (the table "What one run directory becomes" of wandb.md).

The functions that shape data (config, summary, history, table rows) are plain and testable without
the SDK; `log_run_dir` hands them to an open run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from veeksha.shared import __version__
from veeksha.shared.jsonio import dump_json
from veeksha.shared.paths import CONFIG_YML, DISTRIBUTION_METRICS, RUN_JSON
from veeksha.shared.records import (
    DISTRIBUTION_CSV_COLUMNS,
    HEALTH_FAILED,
    HEALTH_PASSED,
    SLO_RESULT_FIELDS,
    SUMMARY_STAT_SUFFIXES,
    summary_key_part,
    summary_stat_key,
)
from veeksha.shared.redact import redact_argv
from veeksha.uploader.reader import RunData
from veeksha.uploader.redaction import Redactor

ELAPSED = "elapsed_s"
HISTORY_PREFIX = "timeseries/"
# The server's scraped metrics: their own rows, on their own x-axis (scrapes are not whole seconds).
SERVER_ELAPSED = "server_elapsed_s"
SERVER_PREFIX = "server/"
SCALARS = (int, float, bool, str, type(None))


def veeksha_version(run_info: dict[str, Any]) -> str:
    return str(run_info.get("veeksha_version") or __version__)


def run_config(data: RunData, redactor: Redactor, run_kind: str) -> dict[str, Any]:
    """The resolved config, redacted again, plus veeksha_version and run_kind."""
    redactor.tree(data.config)  # first pass: learn every secret, so free text is scrubbed too
    config = redactor.tree(data.config)
    return {**config, "veeksha_version": veeksha_version(data.run_info), "run_kind": run_kind}


def scalars(obj: dict[str, Any]) -> dict[str, Any]:
    """Scalars of a JSON object, nested objects kept as objects (of scalars); lists are left out."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(value, dict):
            out[key] = scalars(value)
        elif isinstance(value, SCALARS):
            out[key] = value
    return out


def key_parts(names: list[Any]) -> list[str]:
    """Summary key parts for a list of names, one each: '/' would nest keys, and two names equal
    once it is replaced (or duplicated, in a directory written before names had to be unique) would
    overwrite one another's verdict; later ones get `_2`, `_3`."""
    taken: set[str] = set()
    parts = []
    for name in names:
        base = part = summary_key_part(name)
        n = 1
        while part in taken:
            n += 1
            part = f"{base}_{n}"
        taken.add(part)
        parts.append(part)
    return parts


def slo_summary(slo: dict[str, Any] | None) -> dict[str, Any]:
    if not slo:
        return {}
    out: dict[str, Any] = {"slo/all_slos_met": slo.get("all_slos_met")}
    results = slo.get("results") or []
    for part, r in zip(key_parts([r.get("name") for r in results]), results, strict=True):
        out[f"slo/{part}/observed"] = r.get("observed_value")
        out[f"slo/{part}/threshold"] = r.get("threshold")
        out[f"slo/{part}/met"] = r.get("met")
    return out


def health_summary(health: dict[str, Any] | None) -> dict[str, Any]:
    """`health/<check>/result` is the state (PASSED, FAILED, SKIPPED); `/passed` is a boolean only for
    checks that ran: a skipped check has no `/passed`, so filtering on `passed = false` finds failures."""
    if not health:
        return {}
    out: dict[str, Any] = {"health/all_passed": health.get("all_passed")}
    checks = health.get("checks") or []
    for part, check in zip(key_parts([c.get("name") for c in checks]), checks, strict=True):
        state = check.get("result")
        out[f"health/{part}/result"] = state
        if state in (HEALTH_PASSED, HEALTH_FAILED):
            out[f"health/{part}/passed"] = state == HEALTH_PASSED
    return out


def summary_values(data: RunData) -> dict[str, Any]:
    """Every scalar of summary_stats.json and throughput_metrics.json, SLO and health verdicts, status."""
    return {
        **scalars(data.summary_stats),
        **scalars(data.throughput),
        **slo_summary(data.slo),
        **health_summary(data.health),
        "run_status": data.status,
    }


def client_history(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """timeseries.csv rows as history rows: `elapsed_s` plus `timeseries/<column>` (empty cells left out)."""
    return _history(rows, ELAPSED, HISTORY_PREFIX)


def server_history(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """server_metrics.csv rows as history rows: `server_elapsed_s` plus `server/<series>`."""
    return _history(rows, SERVER_ELAPSED, SERVER_PREFIX)


def _history(rows: list[dict[str, Any]], axis: str, prefix: str) -> list[dict[str, Any]]:
    return [
        {axis: row[ELAPSED], **{f"{prefix}{k}": v for k, v in row.items() if k != ELAPSED}}
        for row in rows
        if ELAPSED in row
    ]


def history_rows(data: RunData) -> list[dict[str, Any]]:
    """The client's rows, then the server's (a live follower interleaves them as they are written)."""
    return client_history(data.timeseries) + server_history(data.server_metrics)


def slo_rows(slo: dict[str, Any] | None) -> list[list[Any]]:
    return [[r.get(c) for c in SLO_RESULT_FIELDS] for r in (slo or {}).get("results") or []]


def stat_metrics(summary_stats: dict[str, Any]) -> list[str]:
    """Distribution metrics present in summary_stats.json (the contract's list first)."""
    found = [m for m in DISTRIBUTION_METRICS if summary_stat_key(m, "p50") in summary_stats]
    p50 = summary_stat_key("", "p50")
    extra = {k.removesuffix(p50) for k in summary_stats if k.endswith(p50)} - set(found)
    return found + sorted(extra)


def summary_stat_rows(summary_stats: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for m in stat_metrics(summary_stats):
        values = [summary_stats.get(summary_stat_key(m, s)) for s in SUMMARY_STAT_SUFFIXES]
        rows.append([m, *(float(v) if isinstance(v, int | float) else None for v in values)])
    return rows


def replacement_files(data: RunData, redactor: Redactor) -> dict[str, bytes]:
    """Scrubbed versions of config.yml and run.json when they hold anything secret."""
    out: dict[str, bytes] = {}
    config = redactor.tree(data.config)
    if config != data.config:
        out[CONFIG_YML] = yaml.safe_dump(config, sort_keys=False).encode()
    info = dict(data.run_info)
    if isinstance(info.get("argv"), list):
        info["argv"] = redact_argv([str(a) for a in info["argv"]])
    info = redactor.tree(info)
    if info != data.run_info:
        out[RUN_JSON] = dump_json(info)
    return out


def define_history(run: Any) -> None:
    """History rows use `elapsed_s` as their x-axis (a float), not W&B's integer step."""
    run.define_metric(ELAPSED, summary="none")
    run.define_metric(f"{HISTORY_PREFIX}*", step_metric=ELAPSED, summary="none")
    run.define_metric(SERVER_ELAPSED, summary="none")
    run.define_metric(f"{SERVER_PREFIX}*", step_metric=SERVER_ELAPSED, summary="none")


def log_history(run: Any, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        run.log(row)


def log_results(run: Any, data: RunData, redactor: Redactor, artifact: Any | None) -> None:
    """Media, then summary (a held history row could overwrite a summary value), then the artifact."""
    import wandb

    media: dict[str, Any] = {}
    if data.slo:
        media["slo_results"] = wandb.Table(columns=list(SLO_RESULT_FIELDS), data=slo_rows(data.slo))
    stats = summary_stat_rows(data.summary_stats)
    if stats:
        media["summary_stats"] = wandb.Table(columns=["metric", *SUMMARY_STAT_SUFFIXES], data=stats)
    if data.health:
        checks = [[c.get("name"), c.get("result")] for c in data.health.get("checks") or []]
        media["health_checks"] = wandb.Table(columns=["name", "result"], data=checks)
    for metric, points in data.quantiles.items():
        # Declared column types: skips per-cell type inference (most of a table's cost).
        cdf, value = DISTRIBUTION_CSV_COLUMNS
        table = wandb.Table(columns=[cdf, value], data=[[c, v] for c, v in points], dtype=[float, float])
        media[f"quantiles/{metric}"] = table
        media[f"cdf/{metric}"] = wandb.plot.line(table, x=value, y=cdf, title=f"{metric} CDF")
    for rel in data.images:
        media[f"plots/{Path(rel).stem}"] = wandb.Image(str(data.paths.root / rel), caption=Path(rel).name)
    if media:
        run.log(media)

    run.summary.update(redactor.tree(summary_values(data)))
    if artifact is not None:
        run.log_artifact(artifact)


def log_run_dir(run: Any, data: RunData, redactor: Redactor, artifact: Any | None) -> None:
    """The whole run at once: history first, then results (a live follower does the same in steps)."""
    define_history(run)
    log_history(run, history_rows(data))
    log_results(run, data, redactor, artifact)
