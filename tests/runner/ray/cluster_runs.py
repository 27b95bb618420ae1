"""Inside its own network namespace (see test_ray_e2e.py): a local two-node Ray cluster, and the
runs the test compares. Usage: cluster_runs.py WORKDIR PORT -- VEEKSHA-RUN FLAGS...

Writes, with each run's WORKDIR/NAME.log and NAME.rc:
- WORKDIR/local: two local drivers;
- WORKDIR/ray: two drivers as Ray actors, one per node, with an API key on the command line;
- WORKDIR/ray-killed: the same, with one actor's process killed mid-run;
- WORKDIR/too-many: a run asking for more drivers than the cluster has CPUs (refused);
- WORKDIR/leaks.json: the cluster's job entrypoints, the files of its session directory that
  hold the API key, and whether joining it kept this process's SIGTERM handler.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
VEEKSHA_RUN = str(BIN / "veeksha-run")
API_KEY = "sk-ray-secret-2468"  # the simulated server takes any key


def ray_start(work: Path, *flags: str) -> None:
    # One CPU per node: two drivers spread over the cluster land on two nodes.
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    with (work / "ray-start.log").open("a") as log:
        subprocess.run([RAY, "start", *common, *flags], check=True, stdout=log, stderr=log, timeout=120)


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
    temp = f"/tmp/vr{os.getpid()}"  # Ray's socket paths must stay under 108 characters
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
        veeksha(work, "too-many", [*flags, *address, "--runtime.num_drivers", "3"])  # 2 CPUs
        (work / "leaks.json").write_text(json.dumps(leaks(f"127.0.0.1:{port}", Path(temp))))
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)


if __name__ == "__main__":
    main()
