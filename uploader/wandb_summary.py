"""The extra summary run of a sweep (`sweep_summary` table) or a capacity search (attempts + result)."""

from __future__ import annotations

from typing import Any

from veeksha.shared import __version__
from veeksha.shared.records import RUN_COMPLETED
from veeksha.uploader.groups import CAPSEARCH_SUMMARY, SWEEP_SUMMARY, ContainerData
from veeksha.uploader.redaction import Redactor
from veeksha.uploader.wandb_run import scalars

TABLE_KEY = {SWEEP_SUMMARY: "sweep_summary", CAPSEARCH_SUMMARY: "attempts"}


def table_columns(rows: list[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    return columns


def table_rows(rows: list[dict[str, Any]], columns: list[str]) -> list[list[Any]]:
    return [[_cell(row.get(c)) for c in columns] for row in rows]


def _cell(value: Any) -> Any:
    # Tables hold scalars; a list or object cell (e.g. per-attempt SLO results) is shown as text.
    if isinstance(value, dict | list):
        import orjson

        return orjson.dumps(value).decode()
    return value


def summary_config(data: ContainerData, redactor: Redactor) -> dict[str, Any]:
    """A capacity search's own config (a sweep has none of its own), plus what a run's config has
    (the veeksha version that wrote the directory, else the uploader's; the run kind) and
    `container_id`: the sweep or search id, which the summary run's W&B id is derived from."""
    redactor.tree(data.config)  # first pass: learn every secret, so free text is scrubbed too
    base = redactor.tree(data.config) if data.kind == CAPSEARCH_SUMMARY else {}
    return {
        **base,
        "veeksha_version": data.veeksha_version or __version__,
        "run_kind": data.kind,
        "container_id": data.ident,
    }


def summary_values(data: ContainerData) -> dict[str, Any]:
    if data.kind == SWEEP_SUMMARY:
        return {
            "sweep_id": data.ident,
            "num_runs": len(data.table),
            "num_completed": sum(1 for r in data.table if r.get("status") == RUN_COMPLETED),
            "num_all_slos_met": sum(1 for r in data.table if r.get("all_slos_met") is True),
        }
    result = {k: v for k, v in data.result.items() if k != "history"}
    return {**scalars(result), "num_attempts": len(data.table)}


def log_container(run: Any, data: ContainerData, redactor: Redactor, artifact: Any | None) -> None:
    import wandb

    key = TABLE_KEY[data.kind]
    rows = [redactor.tree(r) for r in data.table]
    columns = table_columns(rows)
    media: dict[str, Any] = {}
    if columns:
        table = wandb.Table(columns=[*columns], data=table_rows(rows, columns), allow_mixed_types=True)
        media[key] = table
        if data.kind == CAPSEARCH_SUMMARY and {"iteration", "value"} <= set(columns):
            media["search/value_by_iteration"] = wandb.plot.scatter(
                table, "iteration", "value", title="capacity search: value per attempt"
            )
    if media:
        run.log(media)
    run.summary.update(redactor.tree(summary_values(data)))
    if artifact is not None:
        run.log_artifact(artifact)
