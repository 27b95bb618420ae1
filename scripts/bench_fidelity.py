#!/usr/bin/env python
"""Fidelity on one client core: the real runner against the simulated server in precise mode.

For each rate, on a fresh server:
- the simulated server runs with `precise` timing (chunk k due at arrival + ttft + k * itl, absolute)
  pinned to `--server-core`, so the truth is known and its own lateness is measured (GET /sim/stats);
- `veeksha-run` (recorder process + spawned driver process, which inherits the affinity) runs pinned
  to `--client-core`: Poisson single-request sessions, `--tokens` output tokens, `--duration` seconds,
  evaluation plots off (VEEKSHA_NO_PLOTS=1);
- the run directory's request records give TTFC error against the truth (ttfc − ttft) and the
  dispatch delay, both over the requests after the first `--warmup-s` seconds (those sessions run as
  `runtime.warmup_sessions`): the run opens one connection per concurrent stream then (about 560 at
  800/s), and a new connection's set-up is latency the server's truth does not count. The TTFC error
  of every request is printed too, as its own row. CPU per request is the driver's run CPU
  (run.json) plus the recorder process's own CPU while the driver was alive (sampled from /proc, so
  the evaluation that follows is not counted), divided by all completed requests. The machine's
  speed drifts (the server's CPU for the same 20 s at 800/s has ranged from 10 to 16.5 s), so the
  client's CPU over the server's is printed too: the server serves the same requests in every run
  at a rate (its CPU counts its whole life, start-up and idle included), so the ratio compares runs
  made in different phases. A fixed loop is timed on both cores before and after each run (the
  "core probe" rows): about 140 ms on a fast core here, 205 ms on a slow one. The "steal" rows are
  the time the hypervisor took from each core (the driver's own run.json figure for the client's):
  a run with seconds of it measured the virtual machine as much as the client.

    .venv/bin/python scripts/bench_fidelity.py [--rates 400 800] [--duration 20]

Exit status 0 when every goal is met.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from veeksha.runner.driver.steal import stolen_seconds

VEEKSHA_RUN = str(Path(sys.executable).parent / "veeksha-run")
SAMPLE_S = 0.02
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROBE_LOOPS = 3_000_000


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def pin(core: int, nice: int) -> Callable[[], None]:
    """preexec_fn of a process started in its own session: run on `core` only (children inherit it),
    and give the session's scheduler autogroup `nice`. With autogroups on (Linux's default for
    desktops and this machine), CPU is shared between sessions first, so a plain nice would change
    nothing against other jobs; the processes inside keep their own nice relative to each other."""

    def setup() -> None:
        os.sched_setaffinity(0, {core})
        if nice:
            try:
                Path("/proc/self/autogroup").write_text(str(nice))
            except OSError:  # no autogroups: the process's own nice is what counts
                os.setpriority(os.PRIO_PROCESS, 0, nice)

    return setup


def core_speed_ms(core: int) -> float:
    """Milliseconds for a fixed pure-Python loop on `core` (median of three). This machine's cores
    flip between fast and slow phases from one second to the next (about 140 against 205 ms for the
    same loop), so the probe, taken before and after each run, shows what the run got."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            total = 0
            for i in range(PROBE_LOOPS):
                total += i & 7
            times.append(1e3 * (time.perf_counter() - start))
    finally:
        os.sched_setaffinity(0, before)
    return sorted(times)[1]


def kernel_mitigations() -> str:
    """The kernel's speculative-execution mitigations that make every kernel entry or return
    dearer: the client and the server spend about a third of their CPU in the kernel, so runs on
    hosts that differ here differ in speed where the pure-Python probe shows nothing."""
    base = Path("/sys/devices/system/cpu/vulnerabilities")
    parts = []
    for name in ("spec_rstack_overflow", "spectre_v2", "retbleed"):
        try:
            parts.append(f"{name}: {(base / name).read_text().strip()}")
        except OSError:
            continue
    return "; ".join(parts) or "unknown"


def _schedstat(pid: int) -> tuple[float, float]:
    """(seconds run, seconds waited runnable on a run queue) of a process's main thread."""
    try:
        run_ns, wait_ns, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
    except (OSError, ValueError):
        return float("nan"), float("nan")
    return int(run_ns) / 1e9, int(wait_ns) / 1e9


# -- server ------------------------------------------------------------------------------------------


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    cfg = {
        "port": 0,
        "precise": {"ttft": args.ttft_ms / 1e3, "itl": args.itl_ms / 1e3},
        "prefix_cache": False,
        "max_kv_tokens": 10**9,
        "default_max_tokens": args.tokens,
    }
    cmd = [
        sys.executable,
        "-m",
        "veeksha.runner.simserver.server",
        "--config-json",
        orjson.dumps(cfg).decode(),
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=pin(args.server_core, args.nice),
    )
    line = proc.stdout.readline().split()  # type: ignore[union-attr]
    if len(line) != 3:
        proc.kill()
        raise SystemExit(f"the simulated server did not start: {line}")
    return proc, f"http://{line[1]}:{line[2]}"


def server_stats(base: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{base}/sim/stats", timeout=10) as resp:
        return orjson.loads(resp.read())


# -- CPU of the recorder while the driver runs ----------------------------------------------------------


def _proc_cpu(pid: int) -> float | None:
    """utime + stime of the process itself (children not included), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def driver_pids(recorder: int) -> list[int]:
    """The spawned drivers: the recorder's children running multiprocessing.spawn (not the resource
    tracker)."""
    pids = []
    for task in Path(f"/proc/{recorder}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
                pids.append(int(child))
    return pids


def _driver_pid(recorder: int) -> int | None:
    return next(iter(driver_pids(recorder)), None)


@dataclass
class CpuWatch:
    """Samples the recorder's own CPU from the driver's appearance to its exit.

    The watch must not take the client core from the driver it measures: an earlier version polled
    /proc every 20 ms from this script's (unpinned) process, and `perf sched` caught those samples
    on the client core just before some of the driver's longest waits for it at 400/s (0.35 and
    0.79 ms; 1.6 of its 22 ms of waits in 6 s). So it runs on the server core (this thread only),
    polls only until the driver appears (before the run's clock), then sleeps on the driver's pidfd,
    waking once a second for the driver's run-queue wait.
    """

    pid: int
    server_core: int
    driver: int | None = None
    at_start: float | None = None
    at_end: float | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    # main threads' (run s, run-queue wait s): recorder at driver start and exit, driver's last sample
    recorder_sched: list[tuple[float, float]] = field(default_factory=list)
    driver_sched: tuple[float, float] = (float("nan"), float("nan"))
    _pidfd: int | None = None

    def run(self) -> None:
        os.sched_setaffinity(0, {self.server_core})  # 0: this thread only
        if not self._find_driver():
            return
        assert self.driver is not None
        exited = self._exit_waiter()
        try:
            while not exited(1.0) and not self.stop.is_set():
                sched = _schedstat(self.driver)
                if sched[0] == sched[0]:  # not NaN: the driver is still there
                    self.driver_sched = sched
        finally:
            if self._pidfd is not None:
                os.close(self._pidfd)
        # The driver has exited: the recorder's evaluation has not started, so its CPU ends here.
        self.at_end = _proc_cpu(self.pid)
        self.recorder_sched.append(_schedstat(self.pid))
        sched = _schedstat(self.driver)  # a zombie until the recorder joins it
        if sched[0] == sched[0]:
            self.driver_sched = sched

    def _exit_waiter(self) -> Callable[[float], bool]:
        """A wait of at most its argument (seconds) that says whether the driver has exited: on the
        driver's pidfd, else (no pidfd: a kernel before 5.3, a seccomp profile) by looking at /proc
        every SAMPLE_S, from this thread's core."""
        driver = self.driver
        try:
            self._pidfd = os.pidfd_open(driver)  # type: ignore[arg-type]  # found by _find_driver
        except ProcessLookupError:  # gone already (joined at once by the recorder)
            return lambda timeout_s: True
        except OSError:

            def polled(timeout_s: float) -> bool:
                end = time.monotonic() + timeout_s
                while time.monotonic() < end:
                    if not Path(f"/proc/{driver}").exists():
                        return True
                    time.sleep(SAMPLE_S)
                return False

            return polled
        poller = select.poll()
        poller.register(self._pidfd, select.POLLIN)
        return lambda timeout_s: bool(poller.poll(timeout_s * 1000))

    def _find_driver(self) -> bool:
        while not self.stop.is_set():
            cpu = _proc_cpu(self.pid)
            if cpu is None:
                return False
            self.driver = _driver_pid(self.pid)
            if self.driver is not None:
                self.at_start = cpu
                self.recorder_sched.append(_schedstat(self.pid))
                return True
            time.sleep(SAMPLE_S)
        return False

    @property
    def recorder_wait(self) -> float:
        if len(self.recorder_sched) < 2:
            return float("nan")
        return self.recorder_sched[-1][1] - self.recorder_sched[0][1]

    @property
    def recorder_cpu(self) -> float:
        if self.at_start is None or self.at_end is None:
            return float("nan")
        return self.at_end - self.at_start


# -- one run -------------------------------------------------------------------------------------------


def run_once(args: argparse.Namespace, rate: float, out: Path) -> dict[str, float | str]:
    probes = [core_speed_ms(args.client_core), core_speed_ms(args.server_core)]
    server, base = start_server(args)
    try:
        cmd = [
            VEEKSHA_RUN,
            "--output_dir", str(out),
            "--client.api_base", f"{base}/v1",
            "--client.model", "veeksha-sim",
            "--traffic_scheduler.type", "rate",
            "--traffic_scheduler.interval_generator.type", "poisson",
            "--traffic_scheduler.interval_generator.arrival_rate", str(rate),
            "--runtime.benchmark_timeout", str(args.duration),
            "--runtime.warmup_sessions", str(round(rate * args.warmup_s)),
            "--session_generator.output_spec.text.output_length_generator.type", "fixed",
            "--session_generator.output_spec.text.output_length_generator.value", str(args.tokens),
            "--session_generator.channels",
            f"[{{type: text, body_length_generator: {{type: fixed, value: {args.prompt_tokens}}}}}]",
        ]  # fmt: skip
        env = {**os.environ, "VEEKSHA_NO_PLOTS": "1"}
        errors = out / "veeksha-run.stderr"
        with errors.open("wb") as err:
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
                start_new_session=True,  # its own autogroup (see pin); Ctrl-C here is passed on below
                preexec_fn=pin(args.client_core, args.nice),
            )
        watch = CpuWatch(proc.pid, args.server_core)
        server_steal = stolen_seconds(frozenset({args.server_core}))  # {core: s} or None
        thread = threading.Thread(target=watch.run, daemon=True)
        thread.start()
        try:
            _, status, _ = os.wait4(proc.pid, 0)
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        server_steal_end = stolen_seconds(frozenset({args.server_core}))
        watch.stop.set()
        thread.join()
        if proc.returncode != 0:
            tail = errors.read_text(errors="replace").strip()[-2000:]
            print(f"veeksha-run exited {proc.returncode}: {tail}", file=sys.stderr)
        if server.poll() is not None:  # its stats are gone with it: no figure would be honest
            raise SystemExit(f"the simulated server died during the run (exit status {server.returncode})")
        stats = server_stats(base)
        server_run, server_wait = _schedstat(server.pid)  # its whole life: it is started per rate
    finally:
        server.terminate()
        server.wait(10)
    result = evaluate(out, args, stats, watch.recorder_cpu)
    result["driver_wait_s"] = watch.driver_sched[1]
    result["recorder_wait_s"] = watch.recorder_wait
    result["server_cpu_s"] = server_run
    # The server's work is the same in every run at a rate, its CPU is not: this machine's speed
    # drifts (10 to 16.5 s for the same 20 s at 800/s). Client over server CPU compares such phases.
    result["client_per_server_cpu"] = result.pop("client_cpu_s") / max(server_run, 1e-9)
    result["server_wait_s"] = server_wait
    # Time the hypervisor took from each core (driver/steal.py): the client's as its driver saw it
    # over the run, the server's over veeksha-run's whole life.
    if server_steal is not None and server_steal_end is not None:
        result["server_steal_s"] = server_steal_end[args.server_core] - server_steal[args.server_core]
    probes += [core_speed_ms(args.client_core), core_speed_ms(args.server_core)]
    result["client_core_probe"] = f"{probes[0]:.0f} / {probes[2]:.0f}"
    result["server_core_probe"] = f"{probes[1]:.0f} / {probes[3]:.0f}"
    return result


def evaluate(
    out: Path, args: argparse.Namespace, stats: dict[str, float], recorder_cpu: float
) -> dict[str, float]:
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    info = orjson.loads((run_dir / "run.json").read_bytes())
    lines = (run_dir / "metrics" / "request_level_metrics.jsonl").read_bytes().splitlines()
    records = [orjson.loads(x) for x in lines]
    ok = [r for r in records if r["status"] == "success"]
    dispatched = [r["scheduler_dispatched_at"] for r in records if r["scheduler_dispatched_at"] is not None]
    warm = [r for r in records if not r["is_warmup"]]
    delays = [r["dispatch_delay"] for r in warm if r["dispatch_delay"] is not None]
    truth = args.ttft_ms / 1e3
    ttfc_err = [r["ttfc"] - truth for r in ok if r["ttfc"] is not None and not r["is_warmup"]]
    ttfc_err_all = [r["ttfc"] - truth for r in ok if r["ttfc"] is not None]
    driver_cpu = info["driver"]["cpu_seconds"] or float("nan")
    steal = info["driver"]["drivers"][0].get("cpu_steal_seconds")
    return {
        "achieved": len(dispatched) / max(dispatched) if dispatched else 0.0,
        "completed": len(ok),
        "errors": len(records) - len(ok),
        "ttfc_err_p50": 1e3 * quantile(ttfc_err, 0.5),
        "ttfc_err_p99": 1e3 * quantile(ttfc_err, 0.99),
        "ttfc_err_all_p99": 1e3 * quantile(ttfc_err_all, 0.99),
        "delay_p50": 1e3 * quantile(delays, 0.5),
        "delay_p99": 1e3 * quantile(delays, 0.99),
        "delay_max": 1e3 * max(delays, default=float("nan")),
        "driver_cpu_ms": 1e3 * driver_cpu / max(1, len(ok)),
        "recorder_cpu_ms": 1e3 * recorder_cpu / max(1, len(ok)),
        "cpu_ms": 1e3 * (driver_cpu + recorder_cpu) / max(1, len(ok)),
        "client_cpu_s": driver_cpu + recorder_cpu,
        "client_steal_s": float("nan") if steal is None else steal,
        "server_steal_s": float("nan"),
        "server_late_p50": stats.get("precise_lateness_p50_ms", float("nan")),
        "server_late_p99": stats.get("precise_lateness_p99_ms", float("nan")),
        "server_late_max": stats.get("precise_lateness_max_ms", float("nan")),
        "server_first_late_p99": stats.get("first_lateness_p99_ms", float("nan")),
        "server_first_late_max": stats.get("first_lateness_max_ms", float("nan")),
    }


# -- the table -----------------------------------------------------------------------------------------

# (key, label, format, goal: (bound, which rates; None = all) or None)
ROWS: list[tuple[str, str, str, tuple[float, float | None] | None]] = [
    ("achieved", "achieved sessions/s", "{:.1f}", None),
    ("completed", "completed requests", "{:.0f}", None),
    ("errors", "errors", "{:.0f}", (0, None)),
    ("ttfc_err_p50", "TTFC error p50 vs truth, ms", "{:+.2f}", None),
    ("ttfc_err_p99", "TTFC error p99 vs truth, ms", "{:+.2f}", (5.0, None)),
    ("ttfc_err_all_p99", "  with warm-up requests, ms", "{:+.2f}", None),
    ("delay_p50", "dispatch delay p50, ms", "{:.3f}", None),
    ("delay_p99", "dispatch delay p99, ms", "{:.3f}", (1.0, None)),
    ("delay_max", "dispatch delay max, ms", "{:.2f}", None),
    ("driver_cpu_ms", "driver CPU/request, ms", "{:.3f}", None),
    ("recorder_cpu_ms", "recorder CPU/request, ms", "{:.3f}", None),
    ("cpu_ms", "client CPU/request, ms", "{:.3f}", (1.0, 800.0)),
    ("server_late_p50", "server lateness p50, ms", "{:.3f}", None),
    ("server_late_p99", "server lateness p99, ms", "{:.3f}", None),
    ("server_late_max", "server lateness max, ms", "{:.2f}", None),
    ("server_first_late_p99", "server 1st-chunk lateness p99, ms", "{:.3f}", None),
    ("server_first_late_max", "server 1st-chunk lateness max, ms", "{:.2f}", None),
    ("driver_wait_s", "driver run-queue wait, s", "{:.3f}", None),
    ("recorder_wait_s", "recorder run-queue wait, s", "{:.3f}", None),
    ("server_cpu_s", "server CPU, s", "{:.2f}", None),
    ("client_per_server_cpu", "client CPU / server CPU", "{:.4f}", None),
    ("server_wait_s", "server run-queue wait, s", "{:.3f}", None),
    ("client_steal_s", "client core steal (hypervisor), s", "{:.2f}", None),
    ("server_steal_s", "server core steal (hypervisor), s", "{:.2f}", None),
    ("client_core_probe", "client core probe before/after, ms", "{}", None),
    ("server_core_probe", "server core probe before/after, ms", "{}", None),
]


def print_table(rates: list[float], results: dict[float, dict[str, float | str]]) -> bool:
    width = 34
    head = f"{'at rate (req/s)':{width}}" + "".join(f"{r:>12.0f}" for r in rates) + "   goal"
    print(head)
    print("-" * len(head))
    all_ok = True
    for key, label, fmt, goal in ROWS:
        cells = ""
        verdicts = []
        for rate in rates:
            value = results[rate][key]
            cells += f"{fmt.format(value):>12}"
            if goal is not None and (goal[1] is None or goal[1] == rate):
                ok = value <= goal[0]
                all_ok &= ok
                verdicts.append(f"{rate:.0f}: {'PASS' if ok else 'FAIL'}")
        goal_text = ""
        if goal is not None:
            where = "" if goal[1] is None else f" at {goal[1]:.0f}"
            goal_text = f"   ≤ {goal[0]:g}{where}  " + ", ".join(verdicts)
        print(f"{label:{width}}{cells}{goal_text}")
    return all_ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rates", type=float, nargs="+", default=[400.0, 800.0])
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=100)
    ap.add_argument("--ttft-ms", type=float, default=50.0)
    ap.add_argument("--itl-ms", type=float, default=10.0)
    ap.add_argument("--client-core", type=int, default=0)
    ap.add_argument("--server-core", type=int, default=1)
    ap.add_argument(
        "--nice",
        type=int,
        default=-10 if os.geteuid() == 0 else 0,
        help="nice of the server and the runner (default -10 as root: on a shared machine, other jobs on\n"
        "the two cores would otherwise decide the result; 0 = unchanged)",
    )
    ap.add_argument("--warmup-s", type=float, default=1.0, help="seconds of sessions run as warm-up")
    ap.add_argument("--keep", type=Path, help="keep the run directories under this directory")
    args = ap.parse_args()
    print(
        f"precise server on core {args.server_core}: ttft {args.ttft_ms:g} ms, itl {args.itl_ms:g} ms, "
        f"{args.tokens} tokens; veeksha-run on core {args.client_core}, Poisson, {args.duration:g} s "
        f"per rate; nice {args.nice}; load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}",
        flush=True,
    )
    print(f"kernel: {kernel_mitigations()}", flush=True)
    results = {}
    for rate in args.rates:
        if args.keep:
            out = args.keep / f"rate{rate:g}"
            out.mkdir(parents=True, exist_ok=False)
            results[rate] = run_once(args, rate, out)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                results[rate] = run_once(args, rate, Path(tmp))
    return 0 if print_table(args.rates, results) else 1


if __name__ == "__main__":
    sys.exit(main())
