"""How long after a timeseries.csv row is written does it reach W&B in follow mode (issue 8 §5)?

A real `veeksha-run` against the built-in simulated server, W&B online pointed at the loopback fake W&B
server (tests/uploader/fake_wandb.py); the runner starts `veeksha-upload --follow` itself. A thread
reads metrics/timeseries.csv every 10 ms and notes when each row appears; the fake notes when each
history row arrives. Latency per row = arrival at the fake - appearance in the file.

    .venv/bin/python scripts/bench_follow.py [--seconds 20] [--rate 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.uploader.conftest import make_home  # noqa: E402
from tests.uploader.fake_wandb import FakeWandb  # noqa: E402

VEEKSHA_RUN = str(Path(sys.executable).parent / "veeksha-run")
FILE_POLL_S = 0.01


class RowWatcher(threading.Thread):
    """elapsed_s of each complete timeseries.csv row → time.time() when it was first seen."""

    def __init__(self, out_dir: Path) -> None:
        super().__init__(daemon=True)
        self.out_dir = out_dir
        self.seen: dict[float, float] = {}
        self.stop = threading.Event()
        self.run_json: Path | None = None

    def run(self) -> None:
        csv_path: Path | None = None
        offset, header = 0, None
        while not self.stop.is_set():
            if csv_path is None:
                found = list(self.out_dir.glob("*/metrics/timeseries.csv"))
                csv_path = found[0] if found else None
                if csv_path is not None:
                    self.run_json = csv_path.parent.parent / "run.json"
            if csv_path is not None:
                try:
                    with csv_path.open("rb") as f:
                        f.seek(offset)
                        chunk = f.read()
                except OSError:
                    chunk = b""
                now = time.time()
                end = chunk.rfind(b"\n") + 1
                for line in chunk[:end].decode().splitlines():
                    if header is None:
                        header = line.split(",")
                        continue
                    elapsed = float(line.split(",")[header.index("elapsed_s")])
                    self.seen.setdefault(elapsed, now)
                offset += end
            time.sleep(FILE_POLL_S)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=20, help="benchmark_timeout of the run")
    ap.add_argument("--rate", type=float, default=10.0, help="sessions per second")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-follow-") as tmp, FakeWandb() as fake:
        work = Path(tmp)
        home = work / "home"
        home.mkdir()
        env = make_home(home).env({"WANDB_BASE_URL": fake.base_url, "WANDB_API_KEY": fake.api_key})
        cmd = [
            VEEKSHA_RUN,
            "--server.type",
            "simulated",
            "--traffic_scheduler.interval_generator.arrival_rate",
            str(args.rate),
            "--runtime.benchmark_timeout",
            str(args.seconds),
            "--wandb.enabled",
            "true",
            "--output_dir",
            "out",
        ]
        (work / "out").mkdir()
        watcher = RowWatcher(work / "out")
        watcher.start()
        started = time.monotonic()
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        wall = time.monotonic() - started
        watcher.stop.set()
        watcher.join()
        if proc.returncode != 0 or not fake.runs:
            sys.exit(f"veeksha-run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        [run] = fake.runs.values()
        latencies = []
        for row, arrived in zip(run.history, run.history_arrivals, strict=True):
            written = watcher.seen.get(row.get("elapsed_s"))  # type: ignore[arg-type]
            if "elapsed_s" in row and written is not None:
                latencies.append(arrived - written)
    print(f"veeksha-run {args.seconds} s at {args.rate}/s with a live W&B run: {wall:.1f} s wall, exit 0")
    print(f"timeseries rows written: {len(watcher.seen)}; reached the server: {len(latencies)}")
    print("follow latency (row appended to timeseries.csv -> history row at the W&B server):")
    print(
        f"  p50 {statistics.median(latencies):.2f} s  p99 {pct(latencies, 0.99):.2f} s  "
        f"max {max(latencies):.2f} s  min {min(latencies):.2f} s"
    )


if __name__ == "__main__":
    main()
