"""`veeksha-run` against a server whose 200s carry no output: every request is an error, and the run
says so and exits 1 (no `--strict` needed).

The server is the quirk server (tests/runner/driver/http/quirk_server.py) in this process, reached by
the run's driver over real loopback HTTP; here it answers every request with a captive portal's page.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from veeksha.shared.records import CANCELLED, ERROR

from tests.runner.driver.http.quirk_server import PORTAL_TITLE, QuirkServer
from tests.runner.helpers import VEEKSHA_RUN, all_text_under, no_plots_env, only_run_dir, read_jsonl, run_cli
from tests.runner.test_crash_recovery import SLOW, driver_pids, running, wait_for_dispatches, wait_until_ended
from tests.runner.test_secrets import free_port

API_KEY = "sk-e2e-SECRET-5150"
SESSIONS = 3  # of 3 turns each (a linear graph): the first fails, the other two are cancelled


@pytest.fixture(scope="module")
def portal() -> Iterator[QuirkServer]:
    with QuirkServer() as server:
        yield server


@pytest.fixture(scope="module")
def portal_run(portal: QuirkServer, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("portal")
    flags = [
        *("--client.api_base", portal.base("html_200"), "--client.model", "m"),
        *("--client.api_key", API_KEY, "--output_dir", "out"),
        *("--runtime.max_sessions", str(SESSIONS), "--session_generator.session_graph.type", "linear"),
        *("--traffic_scheduler.interval_generator.arrival_rate", "20"),
    ]
    return tmp, run_cli(flags, cwd=tmp, timeout=120)


def test_every_request_is_an_error_naming_the_body(portal_run) -> None:
    tmp, _ = portal_run
    records = read_jsonl(only_run_dir(tmp / "out").request_records)
    errors = [r for r in records if r["status"] == ERROR]
    assert len(errors) == SESSIONS and len(records) == 3 * SESSIONS
    assert all(r["status"] == CANCELLED for r in records if r not in errors)
    for r in errors:
        assert r["error_type"] == "not_event_stream" and r["http_status"] == 200
        assert "text/html" in r["error_message"] and PORTAL_TITLE in r["error_message"]
        assert r["num_output_tokens"] in (None, 0) and r["ttfc"] is None
    # The portal echoes the Authorization header into its page: the preview is scrubbed.
    assert API_KEY not in all_text_under(tmp / "out")


def says_every_request_failed(stdout: str, cwd: Path) -> None:
    """Exactly one line says so, with the counts and the path of the records (as the user gave it)."""
    lines = [line for line in stdout.splitlines() if "every request failed" in line]
    assert len(lines) == 1, stdout
    found = re.fullmatch(
        r"veeksha: every request failed \((\d+) errors, (\d+) cancelled\); see (\S+)", lines[0]
    )
    assert found is not None, lines[0]
    assert (int(found[1]), int(found[2])) == (SESSIONS, 2 * SESSIONS)
    assert (cwd / found[3]).resolve() == only_run_dir(cwd / "out").request_records.resolve()


def test_the_run_exits_1_and_says_why_in_one_line(portal_run) -> None:
    tmp, proc = portal_run
    assert proc.returncode == 1, proc.stderr
    says_every_request_failed(proc.stdout, tmp)
    assert re.search(r"health +FAILED \(.*error_rate", proc.stdout)


def test_evaluating_the_directory_again_exits_1_too(portal_run) -> None:
    tmp, _ = portal_run
    paths = only_run_dir(tmp / "out")
    proc = run_cli(["evaluate", str(paths.root)], cwd=tmp)
    assert proc.returncode == 1, proc.stderr
    says_every_request_failed(proc.stdout, tmp)


def test_a_server_that_exits_mid_run_fails_the_run_and_says_so(tmp_path: Path) -> None:
    """A run against a server that died is no measurement of it: failed, with the exit status."""
    port = free_port()
    (tmp_path / "c.veeksha.yml").write_text(
        textwrap.dedent(
            f"""
            output_dir: out
            server:
              type: command
              command: [timeout, '3', {VEEKSHA_RUN}, simulate-server, --port, '{port}']
              ready_url: http://127.0.0.1:{port}/health
            traffic_scheduler: {{type: rate, interval_generator: {{type: poisson, arrival_rate: 5}}}}
            runtime: {{benchmark_timeout: 6}}
            """
        )
    )

    proc = run_cli(["--config", "c.veeksha.yml"], cwd=tmp_path)

    assert proc.returncode == 1, proc.stderr
    assert "veeksha: the server exited during the run (exit status 124, at " in proc.stderr
    info = orjson.loads(only_run_dir(tmp_path / "out").run_json.read_bytes())
    assert info["status"] == "failed" and "exit status 124" in info["error"]


@pytest.mark.parametrize("num_drivers", [1, 2])
def test_a_killed_driver_is_named_on_the_console_with_how_it_ended(tmp_path: Path, num_drivers: int) -> None:
    """Only `[failed]` and "every request failed (N errors ...)" were printed, which reads like a
    server failing every request; the cause was in run.json alone."""
    proc = subprocess.Popen(
        [VEEKSHA_RUN, *SLOW, "--runtime.num_drivers", str(num_drivers)],
        cwd=tmp_path,
        env=no_plots_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    paths = wait_for_dispatches(tmp_path, at_least=10)
    pids = driver_pids(proc.pid)
    assert len(pids) == num_drivers
    os.kill(pids[0], signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=60)

    assert proc.returncode == 1, stderr
    lost = [r for r in read_jsonl(paths.request_records) if r["error_type"] == "driver_lost"]
    (dead,) = {r["driver_id"] for r in lost}
    who = "the driver process" if num_drivers == 1 else f"driver {dead}"
    lines = [line for line in (stdout + stderr).splitlines() if "exited unexpectedly" in line]
    assert lines == [
        f"veeksha: the run failed: {who} exited unexpectedly (exit code -9: killed by SIGKILL); "
        f"its {len(lost)} request(s) in flight were recorded as errors (driver_lost)"
    ], stdout + stderr
    assert lines[0] in stderr


def start_until_a_success(tmp_path: Path) -> subprocess.Popen[bytes]:
    """A minute-long run against the simulated server, returned once a request has succeeded."""
    quick = ["--server.type", "simulated", "--traffic_scheduler.interval_generator.arrival_rate", "20"]
    proc = subprocess.Popen(
        [VEEKSHA_RUN, *quick, "--runtime.benchmark_timeout", "60", "--output_dir", "out"],
        cwd=tmp_path,
        env=no_plots_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not any(
        r["status"] == "success" for f in (tmp_path / "out").glob("*/metrics/*.jsonl") for r in written(f)
    ):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    return proc


def written(path: Path) -> list[dict]:
    """The lines of a JSONL file the recorder has finished writing: the last may be half appended."""
    data = path.read_bytes()
    return [orjson.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]


def test_evaluate_exits_1_on_a_run_it_marks_crashed_and_still_writes_every_file(tmp_path: Path) -> None:
    """`evaluate` exited 0 on a run it had just marked crashed whenever a request had succeeded."""
    proc = start_until_a_success(tmp_path)
    drivers = running(driver_pids(proc.pid))  # (once it is killed, they are no longer its children)
    assert drivers, "the run has no driver process"
    proc.kill()  # SIGKILL: run.json stays `running`
    proc.wait()
    wait_until_ended(drivers)  # orphaned, the driver notices on its next tick and stops writing
    paths = only_run_dir(tmp_path / "out")

    first = run_cli(["evaluate", str(paths.root)], cwd=tmp_path)

    assert first.returncode == 1, first.stdout + first.stderr
    crashed = [line for line in first.stdout.splitlines() if "crashed" in line and "veeksha-run:" in line]
    assert len(crashed) == 1 and "marked crashed" in crashed[0], first.stdout
    info = orjson.loads(paths.run_json.read_bytes())
    assert info["status"] == "crashed" and info["finished_at"]
    assert paths.summary_stats.is_file() and paths.health_checks_json.is_file()
    assert any(r["status"] == "success" for r in read_jsonl(paths.request_records))

    again = run_cli(["evaluate", str(paths.root)], cwd=tmp_path)  # still a crashed run
    assert again.returncode == 1, again.stdout + again.stderr
    (line,) = [
        line for line in again.stdout.splitlines() if line.startswith("veeksha-run:") and "crashed" in line
    ]
    assert "the run crashed" in line


def test_evaluate_of_a_failed_run_exits_1_as_the_run_did(tmp_path: Path) -> None:
    """A run whose driver died after some requests succeeded exits 1; `evaluate` of it exited 0."""
    proc = start_until_a_success(tmp_path)
    os.kill(driver_pids(proc.pid)[0], signal.SIGKILL)
    assert proc.wait(timeout=60) == 1
    paths = only_run_dir(tmp_path / "out")
    assert orjson.loads(paths.run_json.read_bytes())["status"] == "failed"

    again = run_cli(["evaluate", str(paths.root)], cwd=tmp_path)

    assert again.returncode == 1, again.stdout + again.stderr
    assert any(r["status"] == "success" for r in read_jsonl(paths.request_records))
