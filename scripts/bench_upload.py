"""Seconds per directory of a `veeksha-upload --recursive` backfill, for several --jobs values.

    .venv/bin/python scripts/bench_upload.py [--dirs 50] [--jobs 1,2] [--seconds 60] [--online]

Offline by default; --online uploads to the loopback fake W&B server of the tests (real SDK, real
HTTP; the fake answers at once, so this measures the uploader and the SDK, not a network).

Builds --dirs run directories (outputs.md layout, --seconds rows of timeseries each, every distribution
metric with its CSV and PNG) in a temporary folder, then times one real `veeksha-upload` process per
--jobs value on a fresh copy of the tree, with a private HOME so nothing touches the user's W&B files.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.uploader.builders import RunSpec, build_run  # noqa: E402
from tests.uploader.fake_wandb import FakeWandb  # noqa: E402

UPLOAD = str(Path(sys.executable).parent / "veeksha-upload")


def build_tree(root: Path, dirs: int, seconds: int) -> None:
    for i in range(dirs):
        build_run(root / f"batch-{i % 5}", RunSpec(seed=i, seconds=seconds))


def private_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), XDG_DATA_HOME=str(home / ".share"))
    return env


def time_backfill(tree: Path, jobs: int, home: Path, fake: FakeWandb | None) -> tuple[float, str]:
    mode = "online" if fake else "offline"
    cmd = [UPLOAD, str(tree), "--recursive", "--mode", mode, "--jobs", str(jobs)]
    env = private_env(home)
    if fake:
        env.update(WANDB_BASE_URL=fake.base_url, WANDB_API_KEY=fake.api_key)
    start = time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"veeksha-upload failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return elapsed, result.stdout.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dirs", type=int, default=50)
    ap.add_argument("--jobs", default="1,2", help="comma-separated --jobs values")
    ap.add_argument("--seconds", type=int, default=60, help="timeseries rows per run directory")
    ap.add_argument("--online", action="store_true", help="upload to a loopback fake W&B server")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-upload-") as tmp:
        base = Path(tmp)
        template = base / "template"
        t0 = time.perf_counter()
        build_tree(template, args.dirs, args.seconds)
        print(f"built {args.dirs} run directories in {time.perf_counter() - t0:.1f} s", flush=True)
        print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
        for jobs in (int(j) for j in args.jobs.split(",")):
            tree = base / f"jobs-{jobs}"
            shutil.copytree(template, tree)
            home = base / f"home-{jobs}"
            home.mkdir()
            if args.online:
                with FakeWandb() as fake:
                    elapsed, summary = time_backfill(tree, jobs, home, fake)
                    summary += f"; the fake holds {len(fake.runs)} runs"
            else:
                elapsed, summary = time_backfill(tree, jobs, home, None)
            per_dir = elapsed / args.dirs
            line = f"--jobs {jobs}: {elapsed:6.1f} s total, {per_dir:.3f} s per directory"
            print(f"{line}  ({summary})", flush=True)


if __name__ == "__main__":
    main()
