"""Inside its own network namespace (see test_ray_e2e.py): a local two-node Ray cluster, and the
runs the test compares. Usage: cluster_runs.py WORKDIR PORT -- VEEKSHA-RUN FLAGS...

Writes, with each run's WORKDIR/NAME.log and NAME.rc:
- WORKDIR/local: two local drivers;
- WORKDIR/ray: two drivers as Ray actors, one per node, with an API key on the command line;
- WORKDIR/ray-killed: the same, with one actor's process killed mid-run;
- WORKDIR/driver-killed: two drivers as Ray actors sending to a server that counts what it got
  (WORKDIR/driver-killed.received), one actor frozen while its driver sends, then that driver
  process killed (its actor lives on);
- WORKDIR/too-many: a run asking for more drivers than the cluster has CPUs (refused);
- WORKDIR/leaks.json: the cluster's job entrypoints, the files of its session directory that
  hold the API key, and whether joining it kept this process's SIGTERM handler;
- WORKDIR/node-tmp: the nodes' temporary directory (TMPDIR), where the actors keep their drivers'
  ring files.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The tests' helpers (a counting server): this file runs as a script, outside the tests package.
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from tests.runner.helpers import CountingStreamHandler, received_when_settled, serving

BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
VEEKSHA_RUN = str(BIN / "veeksha-run")
API_KEY = "sk-ray-secret-2468"  # the simulated server takes any key


# A driver that sends long prompts, traced with their content: a frozen actor's pipe is full within
# a tick, and its driver's write buffer holds the rest.
LONG_PROMPTS = [
    "--session_generator.channels",
    "[{type: text, body_length_generator: {type: fixed, value: 4000}}]",
    "--trace_recorder.include_content",
    "true",
]


def ray_start(work: Path, *flags: str) -> None:
    # One CPU per node: two drivers spread over the cluster land on two nodes.
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    # The nodes' workers (the actors) make their temporary directories here, where the test looks.
    env = {**os.environ, "TMPDIR": str(work / "node-tmp")}
    with (work / "ray-start.log").open("a") as log:
        subprocess.run(
            [RAY, "start", *common, *flags], check=True, stdout=log, stderr=log, timeout=120, env=env
        )


def veeksha(work: Path, name: str, flags: list[str], kill_actor_after: int | None = None) -> None:
    with (work / f"{name}.log").open("w") as log:
        proc = subprocess.Popen(
            [VEEKSHA_RUN, *flags, "--output_dir", str(work / name)], stdout=log, stderr=log
        )
        if kill_actor_after is not None:
            kill_one_actor(work / name, kill_actor_after)
        proc.wait(timeout=300)
    (work / f"{name}.rc").write_text(str(proc.returncode))


def kill_one_actor(output_dir: Path, after_dispatches: int) -> None:
    """SIGKILL one driver actor's process once the run has dispatched `after_dispatches` requests."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        traces = list(output_dir.glob("*/traces/dispatch_trace.jsonl"))
        if traces and traces[0].read_bytes().count(b"\n") >= after_dispatches:
            break
        time.sleep(0.1)
    pids = subprocess.run(["pgrep", "-f", "ray::DriverActor"], capture_output=True, text=True).stdout.split()
    os.kill(int(pids[0]), signal.SIGKILL)


def veeksha_with_a_driver_killed(work: Path, address: list[str]) -> None:
    """WORKDIR/driver-killed: a run at 100 requests/s to a counting server; once it has 30
    requests, one actor is frozen for two seconds while its driver goes on sending (its pipe fills,
    then its write buffer), and that driver process is killed with SIGKILL. Its last dispatches
    were never shipped: only its ring file, on the node, has them."""
    CountingStreamHandler.received = 0
    name = "driver-killed"
    temp_dirs = {"before": node_temp_dirs(work)}  # (the ray-killed run's killed actor left its own)
    with serving(CountingStreamHandler) as base, (work / f"{name}.log").open("w") as log:
        run = [VEEKSHA_RUN, "--client.api_base", base, "--client.model", "m", *LONG_PROMPTS, *address]
        run += ["--traffic_scheduler.interval_generator.arrival_rate", "100", "--runtime.num_drivers", "2"]
        run += ["--runtime.benchmark_timeout", "30", "--server_metrics.enabled", "false"]
        proc = subprocess.Popen([*run, "--output_dir", str(work / name)], stdout=log, stderr=log)
        deadline = time.monotonic() + 120
        while CountingStreamHandler.received < 30:
            assert time.monotonic() < deadline and proc.poll() is None, "the run sent too little"
            time.sleep(0.1)
        temp_dirs["during"] = node_temp_dirs(work)
        kill_a_driver_behind_its_frozen_actor()
        proc.wait(timeout=300)
        (work / f"{name}.received").write_text(str(received_when_settled()))
    (work / f"{name}.rc").write_text(str(proc.returncode))
    temp_dirs["after"] = node_temp_dirs(work)
    (work / f"{name}.temp.json").write_text(json.dumps(temp_dirs))


def node_temp_dirs(work: Path) -> list[str]:
    return sorted(p.name for p in (work / "node-tmp").iterdir())


def kill_a_driver_behind_its_frozen_actor() -> None:
    """Freeze one actor (SIGSTOP: it reads its driver's pipe no more), give its driver two seconds
    to fill the pipe and its write buffer, kill that driver with SIGKILL, and let the actor go on."""
    actor = int(
        subprocess.run(["pgrep", "-f", "ray::DriverActor"], capture_output=True, text=True).stdout.split()[0]
    )
    children = subprocess.run(["pgrep", "-P", str(actor)], capture_output=True, text=True).stdout.split()
    (driver,) = [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
    os.kill(actor, signal.SIGSTOP)
    try:
        time.sleep(2.0)
        os.kill(driver, signal.SIGKILL)
    finally:
        os.kill(actor, signal.SIGCONT)


def leaks(address: str, ray_temp: Path) -> dict[str, Any]:
    """What the cluster kept: every job's entrypoint (Ray's job table, read through its private
    state API: the dashboard that serves `ray list jobs` is off), and which of its files hold API_KEY;
    and whether joining it as veeksha-run does left this process's SIGTERM handler in place."""
    import ray
    from veeksha.runner.ray_drivers import connect

    def ours(signum: int, frame: object) -> None:  # stands for veeksha-run's own SIGTERM handler
        pass

    signal.signal(signal.SIGTERM, ours)
    connect(address)  # joined as veeksha-run joins: ray.init would install a SIGTERM handler of its own
    try:
        entrypoints = [str(job["Entrypoint"]) for job in ray._private.state.jobs()]
        kept_sigterm = signal.getsignal(signal.SIGTERM) is ours
    finally:
        ray.shutdown()
    holding = []
    for path in ray_temp.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                if API_KEY.encode() in path.read_bytes():
                    holding.append(str(path.relative_to(ray_temp)))
            except OSError:
                pass
    return {"entrypoints": entrypoints, "files_holding_the_key": holding, "kept_sigterm": kept_sigterm}


def main() -> None:
    work, port = Path(sys.argv[1]), sys.argv[2]
    flags = sys.argv[sys.argv.index("--") + 1 :]
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # A ~/.ray/auth_token left by any earlier local Ray makes the head require tokens and the second
    # node fail to join; this cluster is private to the namespace.
    os.environ["RAY_AUTH_MODE"] = "disabled"
    # Ray's socket paths must stay under 108 characters: a short directory of its own (the pid is no
    # name for one: in its PID namespace this process is pid 1, in every test run's namespace alike).
    temp = tempfile.mkdtemp(prefix="vr", dir="/tmp")
    (work / "node-tmp").mkdir()
    ray_start(work, "--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}")
    ray_start(work, f"--address=127.0.0.1:{port}", f"--temp-dir={temp}")
    address = ["--runtime.ray_address", f"127.0.0.1:{port}"]
    try:
        veeksha(work, "local", flags)
        veeksha(work, "ray", [*flags, *address, "--client.api_key", API_KEY])
        # Requests of ~2.5 s (250 tokens, 10 ms a step): the kill always finds the actor's requests in
        # flight. With 16 tokens (~0.2 s) it once found none, and nothing was left to record as lost.
        slow = ["--server.decode_step_base", "0.01", "--runtime.post_timeout_grace_seconds", "0"]
        slow += ["--session_generator.output_spec.text.output_length_generator", "{type: fixed, value: 250}"]
        veeksha(work, "ray-killed", [*flags, *slow, *address], kill_actor_after=10)
        veeksha_with_a_driver_killed(work, address)
        veeksha(work, "too-many", [*flags, *address, "--runtime.num_drivers", "3"])  # 2 CPUs
        (work / "leaks.json").write_text(json.dumps(leaks(f"127.0.0.1:{port}", Path(temp))))
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()
