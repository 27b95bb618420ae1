"""Run, sweep and capacity-search directories built exactly as outputs.md describes them.

The uploader's tests need many directories in many states (completed, running, corrupt, with planted
secrets); building them takes milliseconds, a real benchmark takes seconds. One test also uploads a
directory made by `veeksha-run` itself (test_real_run.py).
"""

from __future__ import annotations

import csv
import io
import random
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import yaml
from PIL import Image, ImageDraw
from veeksha.shared.config import (
    BenchmarkConfig,
    CapacitySearchConfig,
    ClientConfig,
    PerformanceEvaluator,
    PoissonIntervals,
    RateTraffic,
    SLOConfig,
    WandbConfig,
)
from veeksha.shared.config_loader import config_sha256, dump_config_yaml, redacted_dict
from veeksha.shared.jsonio import write_atomic, write_json
from veeksha.shared.paths import (
    CAPSEARCH_ATTEMPTS_CSV,
    CAPSEARCH_RESULTS,
    CAPSEARCH_RUNS_DIR,
    DISTRIBUTION_METRICS,
    SWEEP_MANIFEST,
    SWEEP_SUMMARY_CSV,
    SWEEP_SUMMARY_JSON,
    RunPaths,
)
from veeksha.shared.records import DISPATCH_TRACE_FIELDS, REQUEST_RECORD_FIELDS, TIMESERIES_COLUMNS

# name → state: one check of each state, so the uploader's handling of all three is exercised.
HEALTH_CHECKS = {
    "session dispatch rate": "PASSED",
    "prompt length": "PASSED",
    "output length": "SKIPPED",
    "lifecycle delays": "PASSED",
    "error rate": "FAILED",
}
SLOS = (("P99 TTFC", "ttfc", 0.99, 0.5), ("P90 TBC", "tbc", 0.9, 0.05), ("P50 E2E", "e2e", 0.5, 2.0))


@dataclass
class RunSpec:
    """Knobs of one built run directory."""

    name: str | None = None
    status: str = "completed"
    seconds: int = 6
    seed: int = 0
    wandb: dict[str, Any] = field(default_factory=dict)
    slos: bool = True
    secrets: dict[str, str] = field(default_factory=dict)  # planted raw into config.yml
    sweep: dict[str, Any] | None = None
    capacity_search: dict[str, Any] | None = None
    params: dict[str, Any] = field(default_factory=dict)  # config overrides (sweep values)


def make_config(spec: RunSpec) -> BenchmarkConfig:
    cfg = BenchmarkConfig(
        client=ClientConfig(api_base="http://127.0.0.1:8000/v1", model="test-model"),
        wandb=WandbConfig(**spec.wandb),
    )
    if spec.slos:
        slos = [SLOConfig(name=n, metric=m, percentile=p, value=v) for n, m, p, v in SLOS]
        cfg = replace(cfg, evaluators=[PerformanceEvaluator(slos=slos)])
    if "arrival_rate" in spec.params:
        rate = PoissonIntervals(arrival_rate=spec.params["arrival_rate"])
        cfg = replace(cfg, traffic_scheduler=RateTraffic(interval_generator=rate))
    return cfg


def config_text(cfg: BenchmarkConfig, secrets: dict[str, str]) -> str:
    """config.yml as the runner writes it, or (secrets planted) as an older or hand-edited one would be."""
    if not secrets:
        return dump_config_yaml(cfg)
    tree = redacted_dict(cfg)
    client = tree["client"]
    if "authorization" in secrets:
        client["headers"] = {"Authorization": f"Bearer {secrets['authorization']}", "X-Trace": "keep-me"}
    if "sampling_token" in secrets:
        client["additional_sampling_params"] = {
            "temperature": 0.7,
            "extra_body": {"hf_token": secrets["sampling_token"]},
        }
    if "header_value" in secrets:  # a non-secret-looking key holding an Authorization-like value
        client.setdefault("headers", {})["X-Forwarded-Auth"] = f"Basic {secrets['header_value']}"
    if "server_env" in secrets or "server_flag" in secrets:  # as runners before 2026-11-30 wrote them
        tree["server"] = {
            "type": "command",
            "command": ["vllm", "serve", "m", "--api-key", secrets.get("server_flag", "x"), "--port", "8000"],
            "ready_url": "http://127.0.0.1:8000/health",
            "env": {"MY_SERVICE_CRED": secrets.get("server_env", "x"), "EMPTY": ""},
        }
    return yaml.safe_dump(tree, sort_keys=False)


def quantiles(rng: random.Random, scale: float) -> list[float]:
    values = sorted(rng.expovariate(1.0 / scale) for _ in range(200))
    out = []
    for i in range(101):
        pos = i / 100 * (len(values) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(values) - 1)
        out.append(values[lo] + (values[hi] - values[lo]) * (pos - lo))
    return out


def write_png(path: Path, label: str, seed: int) -> None:
    img = Image.new("RGB", (64, 48), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.line([(0, 47), (20 + seed % 20, 10), (63, 0)], fill=(30, 90, 200), width=2)
    draw.text((2, 2), label[:8], fill=(0, 0, 0))
    img.save(path)


def summary_stats(rng: random.Random, metric_q: dict[str, list[float]], seconds: int) -> dict[str, Any]:
    stats: dict[str, Any] = {
        "num_requests": 40,
        "num_completed_requests": 38,
        "num_errored_requests": 2,
        "num_cancelled_requests": 0,
        "error_rate": 0.05,
        "cancellation_rate": 0.0,
        "num_sessions": 20,
        "num_completed_sessions": 19,
        "num_errored_sessions": 1,
        "num_incomplete_sessions": 0,
        "observed_session_dispatch_rate": round(rng.uniform(1.8, 2.2), 4),
        "target_session_dispatch_rate": 2.0,
        "duration_s": float(seconds),
        "error_code_freq": {"http_error": 1, "500": 1},
    }
    for m, q in metric_q.items():
        stats.update(
            {
                f"{m}_mean": sum(q) / len(q),
                f"{m}_p50": q[50],
                f"{m}_p90": q[90],
                f"{m}_p95": q[95],
                f"{m}_p99": q[99],
                f"{m}_min": q[0],
                f"{m}_max": q[100],
            }
        )
    return stats


def slo_results(stats: dict[str, Any]) -> dict[str, Any]:
    results = []
    for name, metric, pct, value in SLOS:
        m = "end_to_end_latency" if metric == "e2e" else metric
        key = f"{m}_p{round(pct * 100)}"
        observed = stats.get(key)
        results.append(
            {
                "name": name,
                "metric": m,
                "percentile": pct,
                "threshold": value,
                "observed_value": observed,
                "met": observed is not None and observed <= value,
                "slo_metric_key": key,
                "lower_is_better": True,
                "num_samples": 38,
            }
        )
    return {"all_slos_met": all(r["met"] for r in results), "results": results}


def health(rng: random.Random) -> tuple[dict[str, Any], str]:
    checks, lines = [], []
    for name, result in HEALTH_CHECKS.items():
        metrics = {"observed": round(rng.random(), 4)}
        thresholds = {"max": 0.5}
        checks.append({"name": name, "result": result, "metrics": metrics, "thresholds": thresholds})
        lines += ["=" * 60, name.upper(), "=" * 60, f"Result: {result}"]
        lines += [f"{k:<24}{v}" for k, v in {**metrics, **thresholds}.items()] + [""]
    return {"all_passed": all(c["result"] != "FAILED" for c in checks), "checks": checks}, "\n".join(lines)


def timeseries_rows(rng: random.Random, seconds: int) -> list[dict[str, Any]]:
    rows = []
    for t in range(seconds):
        completed = 0 if t == 0 else rng.randint(3, 9)
        tokens = completed * rng.randint(20, 60)
        latency = {}  # percentiles only over requests completed in that second: none → empty cells
        if completed:
            latency = {
                "ttfc_p50": round(rng.uniform(0.05, 0.1), 6),
                "ttfc_p99": round(rng.uniform(0.1, 0.3), 6),
                "tbc_p50": round(rng.uniform(0.005, 0.01), 6),
                "tbc_p99": round(rng.uniform(0.01, 0.03), 6),
            }
        rows.append(
            {
                "elapsed_s": t,
                "dispatched": rng.randint(4, 10),
                "completed": completed,
                "errored": 1 if t == 2 else 0,
                "in_flight": rng.randint(0, 6),
                "output_tokens": tokens,
                "output_tokens_per_s": float(tokens),
                "request_throughput": float(completed),
                **latency,
            }
        )
    return rows


def csv_text(columns: tuple[str, ...] | list[str], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: "" if row.get(c) is None else row[c] for c in columns})
    return buf.getvalue()


def build_run(parent: Path, spec: RunSpec | None = None) -> Path:
    """A run directory following outputs.md (metrics for every distribution metric, PNGs, traces)."""
    spec = spec or RunSpec()
    rng = random.Random(spec.seed)
    cfg = make_config(spec)
    digest = config_sha256(cfg)
    name = spec.name or f"20250101-{120000 + spec.seed:06d}-{digest[:8]}"
    paths = RunPaths(parent / name)
    paths.make_dirs()
    write_atomic(paths.config_yml, config_text(cfg, spec.secrets))
    info = {
        "run_id": uuid.UUID(int=rng.getrandbits(128)).hex,
        "veeksha_version": "0.1.0",
        "status": spec.status,
        "started_at": "2025-01-01T12:00:00.000Z",
        "finished_at": None if spec.status == "running" else f"2025-01-01T12:00:{spec.seconds:02d}.000Z",
        "config_sha256": digest,
        "host": "bench-host",
        "python": "3.11.7",
        "argv": ["veeksha-run", "--config", "bench.veeksha.yml"],
        "sweep": spec.sweep,
        "capacity_search": spec.capacity_search,
        "error": None,
    }
    write_json(paths.run_json, info)
    if spec.status == "running":
        return paths.root
    scales = {m: 0.05 * (i + 1) for i, m in enumerate(DISTRIBUTION_METRICS)}
    metric_q = {m: quantiles(rng, s) for m, s in scales.items()}
    stats = summary_stats(rng, metric_q, spec.seconds)
    write_json(paths.summary_stats, stats)
    write_json(
        paths.throughput_metrics,
        {
            "request_throughput": 6.3,
            "output_token_throughput": 251.5,
            "total_token_throughput": 1402.25,
            "goodput": 5.1,
            "slo_attainment": 0.81,
            "peak_output_token_throughput": 388.0,
            "mean_in_flight_requests": 2.4,
        },
    )
    if spec.slos:
        write_json(paths.slo_results, slo_results(stats))
    checks, text = health(rng)
    write_json(paths.health_checks_json, checks)
    write_atomic(paths.health_check_txt, text)
    write_json(paths.prefill_stats, {"buckets": [{"min_tokens": 0, "max_tokens": 512, "ttfc_p50": 0.07}]})
    write_atomic(paths.timeseries_csv, csv_text(TIMESERIES_COLUMNS, timeseries_rows(rng, spec.seconds)))
    for m, q in metric_q.items():
        rows = [{"cdf": f"{i / 100:.2f}", "value": v} for i, v in enumerate(q)]
        write_atomic(paths.distribution_csv(m), csv_text(("cdf", "value"), rows))
        write_png(paths.distribution_png(m), m, spec.seed)
    blank = dict.fromkeys(REQUEST_RECORD_FIELDS)
    records = [blank | {"request_id": i, "status": "success"} for i in range(3)]
    write_atomic(paths.request_records, b"".join(orjson.dumps(r) + b"\n" for r in records))
    trace = [{f: i for f in DISPATCH_TRACE_FIELDS} for i in range(3)]
    write_atomic(paths.dispatch_trace, b"".join(orjson.dumps(t) + b"\n" for t in trace))
    return paths.root


# ---------------------------------------------------------------- sweeps and capacity searches


def build_sweep(parent: Path, count: int = 2, *, wandb: dict[str, Any] | None = None) -> Path:
    """sweep-<stamp>/ with one run per arrival rate, manifest and summary as the runner writes them."""
    root = parent / "sweep-20250101-120000"
    root.mkdir(parents=True)
    sweep_id = uuid.uuid4().hex
    manifest: dict[str, Any] = {"sweep_id": sweep_id, "count": count, "runs": []}
    rows = []
    for i in range(count):
        params = {"traffic_scheduler.interval_generator.arrival_rate": float(i + 1)}
        info = {"id": sweep_id, "index": i, "count": count, "params": params}
        spec = RunSpec(seed=100 + i, wandb=wandb or {}, sweep=info, params={"arrival_rate": float(i + 1)})
        run_dir = build_run(root, spec)
        entry = {"index": i, "run_dir": run_dir.name, "params": params, "status": "completed"}
        manifest["runs"].append(entry)
        headline = {"ttfc_p99": 0.2 + i, "request_throughput": 5.0 + i, "all_slos_met": i == 0}
        rows.append({"run_dir": run_dir.name, "status": "completed", **params, **headline})
    write_json(root / SWEEP_MANIFEST, manifest)
    write_json(root / SWEEP_SUMMARY_JSON, {"sweep_id": sweep_id, "runs": rows})
    write_atomic(root / SWEEP_SUMMARY_CSV, csv_text(list(rows[0]), rows))
    return root


def build_capsearch(parent: Path, values: tuple[float, ...] = (2.0, 4.0, 3.0), best: int = 2) -> Path:
    """capsearch-<stamp>/ with config.yml, runs/<attempt dirs>, results and attempts CSV."""
    root = parent / "capsearch-20250101-130000"
    (root / CAPSEARCH_RUNS_DIR).mkdir(parents=True)
    cs_cfg = CapacitySearchConfig(benchmark_config=make_config(RunSpec()))
    write_atomic(root / "config.yml", dump_config_yaml(cs_cfg))
    search_id = uuid.uuid4().hex
    knob = "traffic_scheduler.interval_generator.arrival_rate"
    history = []
    for i, value in enumerate(values):
        info = {"id": search_id, "iteration": i, "knob": knob, "value": value}
        spec = RunSpec(seed=200 + i, capacity_search=info, params={"arrival_rate": value})
        run_dir = build_run(root / CAPSEARCH_RUNS_DIR, spec)
        passed = i != 1
        rel = f"{CAPSEARCH_RUNS_DIR}/{run_dir.name}"
        slo = {"all_slos_met": passed}
        history.append({"iteration": i, "value": value, "passed": passed, "run_dir": rel, "slo_results": slo})
    results = {
        "searched_knob": knob,
        "start_value": values[0],
        "max_value": 100.0,
        "expansion_factor": 2.0,
        "max_iterations": 20,
        "precision": 2,
        "iterations_run": len(values),
        "best_value": values[best],
        "best_run_dir": history[best]["run_dir"],
        "history": history,
    }
    write_json(root / CAPSEARCH_RESULTS, results)
    attempts = [{k: v for k, v in h.items() if k != "slo_results"} for h in history]
    write_atomic(root / CAPSEARCH_ATTEMPTS_CSV, csv_text(list(attempts[0]), attempts))
    return root
