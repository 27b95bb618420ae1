"""Driver fidelity benchmark: Poisson sessions against the simulated server.

For each target rate it runs `veeksha-run` for DURATION seconds and prints the achieved session
rate, p50/p99 dispatch_delay and the driver process's CPU seconds per 1,000 requests.

    .venv/bin/python scripts/bench_driver.py [--rates 10 100] [--duration 60]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

VEEKSHA_RUN = str(Path(sys.executable).parent / "veeksha-run")

# A fast simulated engine so that the server, not the driver, is never the bottleneck at 100/s.
SERVER_FLAGS = [
    "--server.type",
    "simulated",
    "--server.decode_step_base",
    "0.002",
    "--server.decode_step_per_seq",
    "0.00002",
    "--server.max_batch_size",
    "512",
]


def quantile(sorted_values: list[float], q: float) -> float:
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def run(rate: float, duration: float, out: Path) -> dict[str, float]:
    cmd = [
        VEEKSHA_RUN,
        *SERVER_FLAGS,
        "--output_dir",
        str(out),
        "--traffic_scheduler.interval_generator.arrival_rate",
        str(rate),
        "--runtime.benchmark_timeout",
        str(duration),
        "--session_generator.output_spec.text.output_length_generator.type",
        "fixed",
        "--session_generator.output_spec.text.output_length_generator.value",
        "64",
        "--session_generator.channels",
        "[{type: text, body_length_generator: {type: fixed, value: 200}}]",
    ]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    info = orjson.loads((run_dir / "run.json").read_bytes())
    records = [
        orjson.loads(x) for x in (run_dir / "metrics/request_level_metrics.jsonl").read_bytes().splitlines()
    ]
    dispatched = sorted(
        r["scheduler_dispatched_at"] for r in records if r["scheduler_dispatched_at"] is not None
    )
    delays = sorted(r["dispatch_delay"] for r in records if r["dispatch_delay"] is not None)
    n = len(records)
    return {
        "target": rate,
        "achieved": len(dispatched) / dispatched[-1],
        "requests": n,
        "errors": sum(r["status"] != "success" for r in records),
        "p50_ms": quantile(delays, 0.5) * 1e3,
        "p99_ms": quantile(delays, 0.99) * 1e3,
        "max_ms": delays[-1] * 1e3,
        "cpu_per_1k": info["driver"]["cpu_seconds"] / n * 1000,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", type=float, nargs="+", default=[10.0, 100.0])
    ap.add_argument("--duration", type=float, default=60.0)
    args = ap.parse_args()
    print(
        f"{'target/s':>9} {'achieved/s':>10} {'requests':>8} {'errors':>6} "
        f"{'delay p50 ms':>12} {'p99 ms':>8} {'max ms':>8} {'driver CPU s/1k req':>19}"
    )
    for rate in args.rates:
        with tempfile.TemporaryDirectory() as tmp:
            r = run(rate, args.duration, Path(tmp))
        print(
            f"{r['target']:9.1f} {r['achieved']:10.2f} {r['requests']:8d} {r['errors']:6d} "
            f"{r['p50_ms']:12.3f} {r['p99_ms']:8.3f} {r['max_ms']:8.2f} {r['cpu_per_1k']:19.3f}"
        )


if __name__ == "__main__":
    main()
