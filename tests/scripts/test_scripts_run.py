"""Every benchmark script in scripts/ run once, as a user would, with the smallest arguments that still
do its real work: nothing else calls them, so a change to the code they drive would otherwise go unseen.

Each test checks that the script's figure is printed and parses as a positive number, not its value
(these are a few seconds of load on a shared machine). bench_fidelity.py and bench_drivers.py only
show their --help: both pin processes to cores, and bench_drivers.py always makes four runs, so even
their smallest real run takes half a minute; --help still imports everything they call.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.runner.helpers import no_plots_env

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
NUMBER = r"[-+]?\d+(?:\.\d+)?"


def run_script(name: str, *args: str, timeout: float = 60) -> str:
    """`python scripts/NAME ARGS` from the repository root (plots off); its stdout, once it exited 0."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args],
        cwd=REPO,
        env=no_plots_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def figure(pattern: str, out: str) -> float:
    """The number captured by `pattern` (one group) on a line of `out`."""
    match = re.search(pattern, out, re.MULTILINE)
    assert match is not None, f"no line matches {pattern!r} in:\n{out}"
    return float(match.group(1))


def table_rows(out: str, first: str) -> list[list[float]]:
    """The numeric cells (a number, a percentage or nan) of the table rows that start with `first`."""
    rows = []
    for line in out.splitlines():
        cells = line.split()
        if cells and cells[0] == first and all(re.fullmatch(rf"{NUMBER}%?|nan", c) for c in cells[1:]):
            rows.append([float(c.rstrip("%")) for c in cells[1:]])
    return rows


def test_bench_read_path_prints_microseconds_per_read() -> None:
    out = run_script("bench_read_path.py", "--streams", "20", "--rounds", "1")
    assert figure(rf"^({NUMBER}) us per read \(20 interleaved streams", out) > 0


def test_bench_recorder_prints_cpu_microseconds_per_record() -> None:
    out = run_script("bench_recorder.py", "--batches", "5", "--rounds", "1")
    assert figure(rf"^({NUMBER}) us CPU per record \(best of 1 rounds of 80 records\)", out) > 0


def test_bench_client_prints_a_row_per_backend() -> None:
    out = run_script("bench_client.py", "--rates", "20", "--duration", "0.5", "--tokens", "8")
    for backend in ("floor", "native", "httpx"):
        rows = table_rows(out, backend)
        assert len(rows) == 1, out
        rate, achieved, cpu_ms, *_, errors, _server_cpu = rows[0]
        assert (rate, errors) == (20, 0), out
        assert achieved > 0 and cpu_ms > 0, out


def test_bench_simulated_server_prints_its_throughput_as_json() -> None:
    out = run_script(
        "bench_simulated_server.py", "--concurrency", "2", "--duration", "0.5", "--tokens", "8", "--fast"
    )
    result = json.loads(out.strip().splitlines()[-1])
    assert result["requests"] > 0 and result["requests_per_s"] > 0, out
    assert result["server_cpu_s_per_1000_requests"] >= 0, out


def test_bench_evaluate_times_the_evaluation_of_a_synthetic_run() -> None:
    out = run_script("bench_evaluate.py", "--requests", "500")
    assert figure(r"^generated (\d+) requests in ", out) == 500
    assert figure(rf"^evaluate: wall ({NUMBER}) s, peak RSS", out) > 0
    assert figure(rf"peak RSS ({NUMBER}) GiB", out) > 0
    assert figure(r"\), exit code (-?\d+)$", out) == 0


def test_bench_upload_prints_seconds_per_directory() -> None:
    out = run_script("bench_upload.py", "--dirs", "1", "--jobs", "1", "--seconds", "3")
    assert figure(rf"^--jobs 1: +{NUMBER} s total, ({NUMBER}) s per directory", out) > 0
    assert "(veeksha-upload: 1 uploaded, 0 skipped, 0 failed (1 directory))" in out


def test_bench_driver_prints_a_row_per_rate() -> None:
    out = run_script("bench_driver.py", "--rates", "10", "--duration", "1")
    rows = table_rows(out, "10.0")
    assert len(rows) == 1, out
    achieved, requests, errors, delay_p50, delay_p99, delay_max, cpu_per_1k = rows[0]
    assert achieved > 0 and requests > 0 and errors == 0, out
    assert min(delay_p50, delay_p99, delay_max) >= 0 and cpu_per_1k > 0, out


def test_bench_follow_prints_the_latency_of_rows_reaching_wandb() -> None:
    out = run_script("bench_follow.py", "--seconds", "2", "--rate", "5", timeout=120)
    assert figure(r"reached the server: (\d+)$", out) > 0
    assert figure(rf"^  p50 ({NUMBER}) s  p99", out) > 0


def test_soak_prints_a_slope_per_process() -> None:
    out = run_script(
        "soak.py", "--minutes", "0.05", "--rate", "5", "--warmup-minutes", "0", "--sample-every", "0.5"
    )
    for role in ("recorder", "driver", "server"):
        line = rf"^  {role:8}: RSS +{NUMBER} MiB/min \(({NUMBER}) -> {NUMBER} MiB\), .*, (\d+) samples$"
        match = re.search(line, out, re.MULTILINE)
        assert match is not None, out
        assert float(match.group(1)) > 0 and int(match.group(2)) >= 2, out


def test_bench_fidelity_and_bench_drivers_parse_their_arguments() -> None:
    for name in ("bench_fidelity.py", "bench_drivers.py"):
        out = run_script(name, "--help", timeout=30)
        assert out.startswith(f"usage: {name} ") and "--rates" in out, out
