"""Builders of request records and run directories for the evaluation tests.

Records go through the recorder's real `finalize_record`, so every test exercises the same path as
a run; times are seconds since the run start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from veeksha.runner.evaluation.frame import records_from_dicts
from veeksha.runner.evaluation.request_metrics import finalize_record
from veeksha.runner.evaluation.rundata import RunData, prepare, split_warmup
from veeksha.shared.config import BenchmarkConfig
from veeksha.shared.config_loader import dump_config_yaml
from veeksha.shared.jsonio import write_atomic, write_json
from veeksha.shared.paths import RunPaths


def raw_record(**fields: Any) -> dict[str, Any]:
    """A raw (driver-side) record: a streaming success by default; override any field."""
    rec: dict[str, Any] = {
        "request_id": 0,
        "session_id": 0,
        "node_id": 0,
        "status": "success",
        "error_type": None,
        "error_message": None,
        "http_status": 200,
        "is_warmup": False,
        "scheduler_ready_at": 1.0,
        "scheduler_dispatched_at": 1.0,
        "client_picked_up_at": 1.0,
        "client_completed_at": 2.0,
        "result_processed_at": 2.0,
        "num_delta_prompt_tokens": 100,
        "num_total_prompt_tokens": 100,
        "target_num_delta_prompt_tokens": 100,
        "num_output_tokens": 2,
        "num_requested_output_tokens": 2,
        "token_count_source": "server",
        "is_stream": True,
        "finish_reason": "length",
        "chunk_times": [1.5, 2.0],
    }
    rec.update(fields)
    return rec


def request(
    rid: int,
    *,
    sent: float,
    chunks: list[float],
    session: int | None = None,
    node: int = 0,
    n_out: int | None = None,
    status: str = "success",
    delay: float = 0.0,
    done: float | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A finalized record: ready = sent - delay, dispatched = picked up = sent, completed = last chunk."""
    completed = done if done is not None else (chunks[-1] if chunks else sent)
    failed = status != "success"
    raw = raw_record(
        request_id=rid,
        session_id=rid if session is None else session,
        node_id=node,
        status=status,
        error_type=None if not failed else fields.pop("error_type", "http_error"),
        http_status=fields.pop("http_status", 500 if failed else 200),
        scheduler_ready_at=sent - delay,
        scheduler_dispatched_at=sent,
        client_picked_up_at=sent,
        client_completed_at=completed,
        result_processed_at=completed,
        num_output_tokens=len(chunks) if n_out is None else n_out,
        num_requested_output_tokens=len(chunks) if n_out is None else n_out,
        chunk_times=chunks,
    )
    raw.update(fields)
    return finalize_record(raw)


def write_run(
    root: Path,
    records: list[dict[str, Any]],
    cfg: BenchmarkConfig | None = None,
    trace: list[dict[str, Any]] | None = None,
    *,
    tail: bytes = b"",
) -> RunPaths:
    """A run directory as the runner leaves it (config.yml, run.json, the two JSONL logs)."""
    paths = RunPaths(root)
    paths.make_dirs()
    write_atomic(paths.config_yml, dump_config_yaml(cfg or BenchmarkConfig()))
    write_json(
        paths.run_json,
        {"run_id": "a" * 32, "status": "completed", "started_at": "2025-01-01T00:00:00.000Z"},
    )
    paths.request_records.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records) + tail)
    if trace is not None:
        paths.dispatch_trace.write_bytes(b"".join(orjson.dumps(t) + b"\n" for t in trace))
    return paths


def trace_line(rec: dict[str, Any], *, size: int = 1, parents: list[int] | None = None) -> dict[str, Any]:
    """The dispatch trace line matching a record."""
    return {
        "request_id": rec["request_id"],
        "session_id": rec["session_id"],
        "node_id": rec["node_id"],
        "session_size": size,
        "scheduled_at": rec["scheduler_ready_at"],
        "ready_at": rec["scheduler_ready_at"],
        "dispatched_at": rec["scheduler_dispatched_at"],
        "parent_nodes": parents or [],
        "history_parent": parents[-1] if parents else None,
        "wait_after_ready": 0.0,
    }


def run_data(
    records: list[dict[str, Any]],
    cfg: BenchmarkConfig | None = None,
    trace: Any = None,
    drivers: list[dict[str, Any]] | None = None,
) -> RunData:
    """What the evaluators see for these records (warmup split off, as evaluate_run does);
    `drivers` is run.json's driver.drivers."""
    measured, warmup = split_warmup(records_from_dicts(records))
    return prepare(measured, warmup, cfg or BenchmarkConfig(), trace, drivers)
