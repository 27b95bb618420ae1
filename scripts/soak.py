"""Memory soak: does any process of a run grow while the load stays the same?

Runs `veeksha-run` against the simulated server for MINUTES at a steady, moderate rate. Every 10 s
(--sample-every) it prints each process's resident memory (VmRSS from /proc/<pid>/status, MiB) and
open descriptors (/proc/<pid>/fd). At the end it prints, per process, the least-squares slope per
minute over the samples after the warm-up. A flat process has a slope near 0.

    .venv/bin/python scripts/soak.py [--minutes 10] [--rate 20]
    .venv/bin/python scripts/soak.py --big-responses --minutes 5   # ~10 MB streamed per response

Default load: Poisson arrivals of 1-3-turn chats (history inherited) with 64-token replies from a
sped-up simulated server, about 2 × RATE requests per second. `--big-responses` sends one-request
sessions whose replies are about 10 MB, streamed in 120 KB events, one every 2 s.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

VEEKSHA_RUN = str(Path(sys.executable).parent / "veeksha-run")
SAMPLE_EVERY_S = 10.0
ROLES = ("recorder", "driver", "server")

# The server must never be the bottleneck: a slow server would grow queues, which is not a leak.
FAST_SERVER = {
    "type": "simulated",
    "decode_step_base": 0.002,
    "decode_step_per_seq": 0.00002,
    "max_batch_size": 512,
}
BIG_REPLY_TOKENS = 1_700_000  # ≈ 10 MB of text: the simulated server's words average ~6 bytes
BIG_TOKENS_PER_EVENT = 20_000


def soak_config(args: argparse.Namespace, out_dir: Path) -> dict:
    """The run's config: steady traffic for the whole soak, nothing but the load varying."""
    cfg: dict = {
        "output_dir": str(out_dir),
        "server": dict(FAST_SERVER),
        "client": {"type": "openai_chat_completions"},
        "traffic_scheduler": {
            "type": "rate",
            "interval_generator": {"type": "poisson", "arrival_rate": args.rate},
        },
        "runtime": {"benchmark_timeout": args.minutes * 60},
        "trace_recorder": {"enabled": True},
    }
    if args.big_responses:
        cfg["server"].update(
            tokens_per_chunk=BIG_TOKENS_PER_EVENT,
            max_kv_tokens=4 * BIG_REPLY_TOKENS,
            max_batch_size=8,
        )
        cfg["traffic_scheduler"]["interval_generator"]["arrival_rate"] = 0.5
        cfg["session_generator"] = {
            "type": "synthetic",
            "channels": [{"type": "text", "body_length_generator": {"type": "fixed", "value": 100}}],
            "output_spec": {
                "text": {"output_length_generator": {"type": "fixed", "value": BIG_REPLY_TOKENS}}
            },
        }
    else:
        cfg["session_generator"] = {
            "type": "synthetic",
            "session_graph": {
                "type": "linear",
                "inherit_history": True,
                "num_request_generator": {"type": "uniform", "min": 1, "max": 3},
            },
            "channels": [
                {"type": "text", "body_length_generator": {"type": "uniform", "min": 100, "max": 300}}
            ],
            "output_spec": {"text": {"output_length_generator": {"type": "fixed", "value": 64}}},
        }
    return cfg


# ---------------------------------------------------------------------------------------------------
# /proc


def children(pid: int) -> list[int]:
    """Direct children of `pid`, found by scanning /proc (the server runs in its own session)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Field 4 is the parent pid; the command name (field 2) may hold spaces, so split after ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def role_of(pid: int) -> str | None:
    try:
        cmdline = (Path(f"/proc/{pid}/cmdline")).read_bytes().replace(b"\0", b" ")
    except OSError:
        return None
    if b"spawn_main" in cmdline:
        return "driver"
    if b"veeksha.runner.simserver" in cmdline:
        return "server"
    return None  # the server's watchdog, multiprocessing's resource tracker


def find_processes(recorder: int) -> dict[str, int]:
    found = {"recorder": recorder}
    for child in children(recorder):
        role = role_of(child)
        if role is not None:
            found[role] = child
    return found


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def open_fds(pid: int) -> int | None:
    try:
        return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------------


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, in value per minute."""
    n = len(points)
    if n < 2:
        return float("nan")
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 60 if var else float("nan")


def sample_until_done(
    run: subprocess.Popen[bytes], deadline: float, every_s: float = SAMPLE_EVERY_S
) -> dict[str, list[tuple[float, float, int]]]:
    """Print and keep (elapsed s, RSS MiB, fds) per role every `every_s` while the driver lives."""
    samples: dict[str, list[tuple[float, float, int]]] = {r: [] for r in ROLES}
    start = time.monotonic()
    print(f"{'t s':>6} " + " ".join(f"{r + ' MiB':>13} {'fds':>4}" for r in ROLES), flush=True)
    seen_driver = False
    next_at = start + every_s
    while run.poll() is None and time.monotonic() < deadline:
        time.sleep(max(0.0, next_at - time.monotonic()))
        next_at += every_s
        procs = find_processes(run.pid)
        if "driver" not in procs:
            if seen_driver:  # the driver has finished: the recorder now evaluates, not a soak
                break
            continue
        seen_driver = True
        elapsed = time.monotonic() - start
        cells = []
        for role in ROLES:
            pid = procs.get(role)
            rss = rss_mib(pid) if pid else None
            fds = open_fds(pid) if pid else None
            if rss is None or fds is None:
                cells.append(f"{'-':>13} {'-':>4}")
                continue
            samples[role].append((elapsed, rss, fds))
            cells.append(f"{rss:13.1f} {fds:4d}")
        print(f"{elapsed:6.0f} " + " ".join(cells), flush=True)
    return samples


def report(samples: dict[str, list[tuple[float, float, int]]], warmup_s: float) -> None:
    print(f"\nslope per minute after the first {warmup_s / 60:g} min (least squares):")
    for role in ROLES:
        after = [s for s in samples[role] if s[0] >= warmup_s]
        if len(after) < 2:
            print(f"  {role:8}: too few samples after warm-up ({len(after)})")
            continue
        rss = slope_per_minute([(t, m) for t, m, _ in after])
        fds = slope_per_minute([(t, float(f)) for t, _, f in after])
        first, last = after[0], after[-1]
        print(
            f"  {role:8}: RSS {rss:+7.3f} MiB/min ({first[1]:.1f} -> {last[1]:.1f} MiB), "
            f"fds {fds:+6.2f}/min ({first[2]} -> {last[2]}), {len(after)} samples"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=20.0, help="sessions per second (default 20)")
    ap.add_argument("--warmup-minutes", type=float, default=2.0)
    ap.add_argument("--big-responses", action="store_true", help="~10 MB replies, one every 2 s")
    ap.add_argument("--sample-every", type=float, default=SAMPLE_EVERY_S, help="seconds between samples")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="veeksha-soak-") as tmp:
        config = Path(tmp) / "soak.veeksha.yml"
        config.write_text(yaml.safe_dump(soak_config(args, Path(tmp) / "out")))
        run = subprocess.Popen([VEEKSHA_RUN, "--config", str(config)], stdout=subprocess.DEVNULL)
        try:
            # Set-up and evaluation are outside the soak: stop sampling a minute after the planned end.
            samples = sample_until_done(run, time.monotonic() + args.minutes * 60 + 60, args.sample_every)
            report(samples, args.warmup_minutes * 60)
            run.wait()
        finally:
            if run.poll() is None:
                run.terminate()
                run.wait()


if __name__ == "__main__":
    main()
