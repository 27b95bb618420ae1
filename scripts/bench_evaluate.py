"""Benchmark of `veeksha-run evaluate` on a large synthetic run directory.

    .venv/bin/python scripts/bench_evaluate.py                  # 1,000,000 requests, temp dir
    .venv/bin/python scripts/bench_evaluate.py --requests 100000 --keep /tmp/bench-run

Builds a realistic run directory (rate traffic of linear sessions, streaming, 64-256 output tokens of
one token per chunk, so the tbc lists hold ~160 gaps per request; a few errors, cancelled follow-ups
and warmup sessions), written through the recorder's own `finalize_record`. Then it times the
evaluation in a child process (`veeksha-run evaluate RUN_DIR`, which rebuilds the time series) and
prints wall seconds and the child's peak RSS. Target: < 30 s and < 3 GiB on a 2-core machine.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
from veeksha.runner.evaluation.request_metrics import finalize_record
from veeksha.shared.config import (
    BenchmarkConfig,
    FixedGen,
    LinearGraph,
    PerformanceEvaluator,
    PoissonIntervals,
    RateTraffic,
    RuntimeConfig,
    SLOConfig,
    SyntheticSessions,
    UniformGen,
)
from veeksha.shared.config_loader import dump_config_yaml
from veeksha.shared.jsonio import write_atomic, write_json
from veeksha.shared.paths import RunPaths

SESSION_RATE = 250.0  # sessions/s; ~2.5 requests per session → ~625 requests/s
WARMUP_SESSIONS = 20
ERROR_RATE = 0.005
BATCH = 20_000


def bench_config() -> BenchmarkConfig:
    return BenchmarkConfig(
        traffic_scheduler=RateTraffic(interval_generator=PoissonIntervals(arrival_rate=SESSION_RATE)),
        session_generator=SyntheticSessions(
            session_graph=LinearGraph(
                num_request_generator=UniformGen(min=1, max=4), request_wait_generator=FixedGen(value=0.5)
            )
        ),
        evaluators=[
            PerformanceEvaluator(
                slos=[
                    SLOConfig(name="P99 TTFC", metric="ttfc", value=0.5, percentile=0.99),
                    SLOConfig(name="P50 TBC", metric="tbc", value=0.05, percentile=0.5),
                    SLOConfig(name="P90 E2E", metric="e2e", value=8.0, percentile=0.9),
                ]
            )
        ],
        runtime=RuntimeConfig(warmup_sessions=WARMUP_SESSIONS),
    )


def _sessions(rng: np.random.Generator, num_requests: int):
    """Per-request arrays of a linear-session workload, in dispatch order within each session."""
    num_sessions = num_requests // 2 + 10  # enough sessions of 1-4 requests, then trimmed
    sizes = rng.integers(1, 5, num_sessions)
    sizes = sizes[: np.searchsorted(np.cumsum(sizes), num_requests) + 1]
    sizes[-1] -= sizes.sum() - num_requests
    sizes = sizes[sizes > 0]
    starts = np.cumsum(rng.exponential(1 / SESSION_RATE, len(sizes)))
    n = int(sizes.sum())
    session = np.repeat(np.arange(len(sizes)), sizes)
    first = np.repeat(np.cumsum(sizes) - sizes, sizes)
    node = np.arange(n) - first
    size = np.repeat(sizes, sizes)
    return session, node, size, starts


def generate(root: Path, num_requests: int, seed: int = 1) -> None:
    """Write a complete synthetic run directory (records, dispatch trace, config.yml, run.json)."""
    rng = np.random.default_rng(seed)
    paths = RunPaths(root)
    paths.make_dirs()
    cfg = bench_config()
    write_atomic(paths.config_yml, dump_config_yaml(cfg))
    session, node, size, starts = _sessions(rng, num_requests)
    n = len(session)
    n_out = rng.integers(64, 257, n)
    delta_prompt = rng.integers(100, 501, n)
    ttfc = rng.lognormal(np.log(0.12), 0.4, n)
    tpot = rng.uniform(0.015, 0.035, n)
    delay = rng.exponential(0.0002, n)
    failed = rng.random(n) < ERROR_RATE
    # Walk the sessions level by level: a node is ready when its parent completed plus think time.
    ready = np.zeros(n)
    completed = np.zeros(n)
    total_prompt = np.zeros(n, dtype=np.int64)
    cancelled = np.zeros(n, dtype=bool)
    for level in range(int(node.max()) + 1):
        idx = np.flatnonzero(node == level)
        if level == 0:
            ready[idx] = starts[session[idx]]
            total_prompt[idx] = delta_prompt[idx]
        else:
            parent = idx - 1
            ready[idx] = completed[parent] + 0.5
            total_prompt[idx] = total_prompt[parent] + n_out[parent] + delta_prompt[idx]
            cancelled[idx] = failed[parent] | cancelled[parent]
        dispatched = ready[idx] + delay[idx]
        decode = np.where(failed[idx], 0.0, tpot[idx] * (n_out[idx] - 1))
        completed[idx] = dispatched + 3e-5 + ttfc[idx] + decode + 5e-4
    failed &= ~cancelled
    order = np.argsort(np.where(cancelled, ready, completed), kind="stable")
    warmup_sessions = WARMUP_SESSIONS
    with paths.request_records.open("wb") as rec_f, paths.dispatch_trace.open("wb") as trace_f:
        for lo in range(0, n, BATCH):
            rec_lines, trace_lines = [], []
            for i in order[lo : lo + BATCH].tolist():
                rec, trace = _request(
                    rng,
                    i,
                    session,
                    node,
                    size,
                    starts,
                    ready,
                    completed,
                    n_out,
                    delta_prompt,
                    total_prompt,
                    ttfc,
                    tpot,
                    delay,
                    failed,
                    cancelled,
                    warmup_sessions,
                )
                rec_lines.append(orjson.dumps(rec))
                trace_lines.append(orjson.dumps(trace))
            rec_f.write(b"\n".join(rec_lines) + b"\n")
            trace_f.write(b"\n".join(trace_lines) + b"\n")
    write_json(
        paths.run_json,
        {
            "run_id": "0" * 32,
            "veeksha_version": "bench",
            "status": "completed",
            "started_at": "2025-01-01T00:00:00.000Z",
            "finished_at": "2025-01-01T00:30:00.000Z",
            "config_sha256": "0" * 64,
            "host": "bench",
            "python": sys.version.split()[0],
            "argv": ["bench_evaluate.py"],
            "sweep": None,
            "capacity_search": None,
            "error": None,
        },
    )


def _request(rng, i, session, node, size, starts, ready, completed, n_out, delta_prompt, total_prompt,
             ttfc, tpot, delay, failed, cancelled, warmup_sessions):  # fmt: skip
    sid = int(session[i])
    is_cancelled = bool(cancelled[i])
    dispatched = None if is_cancelled else float(ready[i] + delay[i])
    picked = None if is_cancelled else dispatched + 3e-5
    chunk_times: list[float] = []
    status, error_type, error_message, http_status, finish = "success", None, None, 200, "length"
    if is_cancelled:
        status, error_type, http_status, finish = "cancelled", "cancelled", None, None
        error_message = "not sent: an earlier request of this session failed"
    elif failed[i]:
        status, error_type, error_message, http_status, finish = "error", "http_error", "HTTP 500", 500, None
    else:
        k = int(n_out[i])
        weights = rng.lognormal(0.0, 0.3, k - 1)
        gaps = weights * (tpot[i] * (k - 1) / weights.sum())
        first = picked + float(ttfc[i])
        chunk_times = [first, *(first + np.cumsum(gaps)).tolist()]
    raw = {
        "request_id": int(i),
        "session_id": sid,
        "node_id": int(node[i]),
        "status": status,
        "error_type": error_type,
        "error_message": error_message,
        "http_status": http_status,
        "is_warmup": sid < warmup_sessions,
        "scheduler_ready_at": None if is_cancelled else float(ready[i]),
        "scheduler_dispatched_at": dispatched,
        "client_picked_up_at": picked,
        "client_completed_at": None if is_cancelled else float(completed[i]),
        "result_processed_at": float(ready[i]) if is_cancelled else float(completed[i]) + 5e-5,
        "num_delta_prompt_tokens": int(delta_prompt[i]),
        "num_total_prompt_tokens": None if is_cancelled else int(total_prompt[i]),
        "target_num_delta_prompt_tokens": int(delta_prompt[i]),
        "num_output_tokens": int(n_out[i]) if status == "success" else None,
        "num_requested_output_tokens": int(n_out[i]),
        "token_count_source": "server",
        "is_stream": True,
        "finish_reason": finish,
        "chunk_times": chunk_times,
    }
    trace = {
        "request_id": int(i),
        "session_id": sid,
        "node_id": int(node[i]),
        "session_size": int(size[i]),
        "scheduled_at": float(starts[sid]),
        "ready_at": raw["scheduler_ready_at"],
        "dispatched_at": dispatched,
        "parent_nodes": [] if node[i] == 0 else [int(node[i]) - 1],
        "history_parent": None if node[i] == 0 else int(node[i]) - 1,
        "wait_after_ready": 0.0 if node[i] == 0 else 0.5,
    }
    return finalize_record(raw), trace


def _tree_rss_kib(pid: int) -> int:
    """Resident memory of a process and all its descendants (KiB), from /proc."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def time_child(argv: list[str]) -> tuple[float, float, float, int]:
    """(wall s, peak RSS of the process tree in GiB (sampled every 50 ms), the child's own peak
    RSS in GiB (getrusage), exit code) of a child process."""
    t = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    peak_tree = 0
    while proc.poll() is None:
        peak_tree = max(peak_tree, _tree_rss_kib(proc.pid))
        time.sleep(0.05)
    wall = time.perf_counter() - t
    out = proc.stdout.read() if proc.stdout else ""
    print(out)
    peak_self = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, peak_tree / 2**20, peak_self / 2**20, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--keep", type=Path, help="build (or reuse) the run directory here and keep it")
    ap.add_argument("--function", action="store_true", help="time evaluate_run in a child, not the CLI")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="veeksha-bench-")) / "run"
    try:
        if not RunPaths(root).request_records.exists():
            t = time.perf_counter()
            generate(root, args.requests)
            size_gb = RunPaths(root).request_records.stat().st_size / 1e9
            print(f"generated {args.requests} requests in {time.perf_counter() - t:.1f} s "
                  f"({size_gb:.2f} GB of records) at {root}")  # fmt: skip
        if args.function:
            code = "import sys; from veeksha.runner.evaluation.evaluate import evaluate_run as e; "
            code += "e(__import__('pathlib').Path(sys.argv[1]), rebuilt=True)"
            argv = [sys.executable, "-c", code, str(root)]
        else:
            argv = [str(Path(sys.executable).with_name("veeksha-run")), "evaluate", str(root)]
        wall, peak_tree, peak_self, rc = time_child(argv)
        print(
            f"evaluate: wall {wall:.1f} s, peak RSS {peak_tree:.2f} GiB (whole process tree, sampled; "
            f"largest single process {peak_self:.2f} GiB), exit code {rc}"
        )
        print(f"command: {' '.join(argv)}")
    finally:
        if args.keep is None:
            shutil.rmtree(root.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
