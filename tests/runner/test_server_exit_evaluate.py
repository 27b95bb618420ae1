"""`veeksha-run evaluate` of a run whose launched server died keeps the failed `server` health check.

The run added that check itself, after its evaluation; `evaluate` rebuilt the checks from the records
alone, so the run flipped to "health PASSED" (all_passed true) and W&B then got the passing result.
The run now records the server's exit in run.json, and every evaluation adds the check from there:
`evaluate` rebuilds exactly what the run wrote.

A real `veeksha-run` with its simulated server, whose process is killed (SIGKILL) mid-run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import orjson
from veeksha.shared.records import SERVER_EXIT

from tests.runner.helpers import VEEKSHA_RUN, no_plots_env, only_run_dir, run_cli

CONFIG = """
output_dir: out
server: {type: simulated}
traffic_scheduler:
  type: rate
  interval_generator: {type: poisson, arrival_rate: 1}
session_generator:
  type: synthetic
  channels: [{type: text, body_length_generator: {type: fixed, value: 50}}]
  output_spec: {text: {output_length_generator: {type: fixed, value: 4}}}
runtime: {benchmark_timeout: 10}
"""
SIMSERVER = b"veeksha.runner.simserver.server"


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append(int(entry.name))
    return found


def cmdline(pid: int) -> bytes:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return b""


def kill_the_server_once_traffic_flows(run: subprocess.Popen[bytes], out: Path) -> None:
    """SIGKILL the run's simulated server once the run has sent its first request."""
    deadline = time.monotonic() + 60
    while not any(f.stat().st_size for f in out.glob("*/traces/dispatch_trace.jsonl")):
        assert time.monotonic() < deadline and run.poll() is None, "the run sent nothing"
        time.sleep(0.1)
    (server,) = [pid for pid in children(run.pid) if SIMSERVER in cmdline(pid)]
    os.kill(server, signal.SIGKILL)


def health_files(run_dir: Path) -> tuple[dict, str]:
    return (
        orjson.loads((run_dir / "metrics" / "health_checks.json").read_bytes()),
        (run_dir / "health_check_results.txt").read_text(),
    )


def test_evaluate_keeps_the_failed_server_check_of_a_run_whose_server_was_killed(tmp_path: Path) -> None:
    (tmp_path / "c.veeksha.yml").write_text(textwrap.dedent(CONFIG))
    with open(tmp_path / "run.log", "wb") as log:
        run = subprocess.Popen(
            [VEEKSHA_RUN, "--config", "c.veeksha.yml"],
            cwd=tmp_path,
            env=no_plots_env(),
            stdout=log,
            stderr=log,
        )
        try:
            kill_the_server_once_traffic_flows(run, tmp_path / "out")
        finally:
            assert run.wait(timeout=120) == 1, (tmp_path / "run.log").read_text()
    paths = only_run_dir(tmp_path / "out")
    info = orjson.loads(paths.run_json.read_bytes())
    assert info["status"] == "failed"
    assert info[SERVER_EXIT]["exit_status"] == -signal.SIGKILL
    assert info[SERVER_EXIT]["detail"].startswith("the server exited during the run (exit status -9, at ")
    before = health_files(paths.root)
    (check,) = [c for c in before[0]["checks"] if c["name"] == "server"]
    assert before[0]["all_passed"] is False and check["result"] == "FAILED"
    assert check["detail"] == info[SERVER_EXIT]["detail"]

    evaluated = run_cli(["evaluate", str(paths.root)], cwd=tmp_path)

    assert evaluated.returncode == 1, evaluated.stdout + evaluated.stderr  # a failed run, as it exited
    assert health_files(paths.root) == before
    assert "health    FAILED" in evaluated.stdout and "server" in evaluated.stdout
