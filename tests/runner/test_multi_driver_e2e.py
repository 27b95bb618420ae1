"""Several driver processes on one machine (runtime.num_drivers), end to end.

Real `veeksha-run` processes against the simulated server over loopback: one seeded schedule split
across drivers, one merged run directory, records == dispatched when a driver is killed, and
`evaluate` rebuilding the merged run exactly.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from veeksha.shared.paths import RunPaths
from veeksha.shared.records import CLIENT_COMPLETED_AT, REQUEST_RECORD_FIELDS, SCHEDULER_DISPATCHED_AT

from tests.runner.helpers import VEEKSHA_RUN, no_plots_env, only_run_dir, read_jsonl, run_cli
from tests.runner.test_benchmark_e2e import interrupt_until_drain_announced
from tests.runner.test_crash_recovery import SLOW as CRASH_SLOW
from tests.runner.test_crash_recovery import dispatched_ids, driver_pids, wait_for_dispatches

SESSIONS = 30
# 30 two-to-three-turn sessions at 40/s on the simulated server's fast settings: about 2 s.
PLACED_RUN = [
    "--server.type",
    "simulated",
    "--server.decode_step_base",
    "0.001",
    "--traffic_scheduler.interval_generator.arrival_rate",
    "40",
    "--session_generator.session_graph",
    "{type: linear, inherit_history: true, num_request_generator: {type: uniform, min: 2, max: 3}}",
    "--session_generator.output_spec.text.output_length_generator",
    "{type: fixed, value: 8}",
    "--runtime.max_sessions",
    str(SESSIONS),
    "--runtime.warmup_sessions",
    "2",
    "--trace_recorder.include_content",
    "true",
    "--seed",
    "11",
]


def run_with_drivers(tmp_path: Path, n: int, *extra: str) -> RunPaths:
    proc = run_cli(
        [*PLACED_RUN, "--runtime.num_drivers", str(n), *extra, "--output_dir", f"out{n}"], cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    return only_run_dir(tmp_path / f"out{n}")


def schedule(paths: RunPaths) -> set[tuple[Any, ...]]:
    """What was sent, independent of timing: each request's session, node, prompt and (for a
    session's first request) its scheduled offset."""
    out = set()
    for t in read_jsonl(paths.dispatch_trace):
        offset = round(t["scheduled_at"], 9) if not t["parent_nodes"] else None
        content = orjson.dumps(t["content"][-1]["content"])  # this turn's prompt
        out.add((t["session_id"], t["node_id"], t["is_warmup"], offset, content))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, RunPaths]:
    tmp = tmp_path_factory.mktemp("drivers")
    return {n: run_with_drivers(tmp, n) for n in (1, 2, 3)}


@pytest.mark.parametrize("n", [2, 3])
def test_the_same_seed_sends_the_same_sessions_at_the_same_offsets_with_n_drivers(
    runs: dict[int, RunPaths], n: int
) -> None:
    assert len({s for s, *_ in schedule(runs[1])}) == SESSIONS + 2  # warmup sessions included
    assert schedule(runs[n]) == schedule(runs[1])


@pytest.mark.parametrize("n", [1, 2, 3])
def test_every_record_and_trace_line_names_its_driver_and_session_i_runs_on_driver_i_mod_n(
    runs: dict[int, RunPaths], n: int
) -> None:
    records = read_jsonl(runs[n].request_records)
    trace = read_jsonl(runs[n].dispatch_trace)
    assert all(list(r) == list(REQUEST_RECORD_FIELDS) for r in records)
    for line in [*records, *trace]:
        assert line["driver_id"] == line["session_id"] % n
    ids = [r["request_id"] for r in records]
    assert len(ids) == len(set(ids)) == len(trace)  # unique across drivers; records == dispatched
    assert all(r["status"] == "success" for r in records)


def test_run_json_and_health_report_each_driver(runs: dict[int, RunPaths]) -> None:
    info = orjson.loads(runs[2].run_json.read_bytes())
    assert info["status"] == "completed" and info["stop_reason"] == "max_sessions"
    drivers = info["driver"]["drivers"]
    assert [d["driver_id"] for d in drivers] == [0, 1] and info["driver"]["num_drivers"] == 2
    assert all(d["status"] == "completed" and d["cpu_seconds"] > 0 for d in drivers)
    assert info["driver"]["cpu_seconds"] == pytest.approx(sum(d["cpu_seconds"] for d in drivers))
    # What the hypervisor took from each driver's cores (driver/steal.py): known on Linux, often 0.
    assert all(d["cpu_steal_seconds"] >= 0 and d["num_cpus"] >= 1 and d["run_seconds"] > 0 for d in drivers)
    health = orjson.loads(runs[2].health_checks_json.read_bytes())
    (check,) = [c for c in health["checks"] if c["name"] == "drivers"]
    per = check["metrics"]["drivers"]
    assert set(per) == {"0", "1"} and check["metrics"]["limiting_driver"] in (0, 1)
    assert all(m["lateness_p99_s"] is not None and 0 < m["cpu_utilization"] < 1 for m in per.values())
    assert all(0 <= m["cpu_steal_fraction"] <= 1 for m in per.values())
    assert "limits the run" in check["detail"]
    assert "DRIVERS" in runs[2].health_check_txt.read_text()


def test_evaluate_rebuilds_a_multi_driver_run_exactly(runs: dict[int, RunPaths], tmp_path: Path) -> None:
    copy = RunPaths(tmp_path / runs[3].root.name)
    shutil.copytree(runs[3].root, copy.root)
    for derived in (copy.summary_stats, copy.health_checks_json, copy.timeseries_csv):
        derived.unlink()
    proc = subprocess.run(
        [VEEKSHA_RUN, "evaluate", str(copy.root)],
        env=no_plots_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "drivers   3: lateness p99" in proc.stdout
    # Every file the evaluation writes comes out byte for byte the same (run.json keeps its own
    # evaluation history).
    original = files_under(runs[3].root)
    rebuilt = files_under(copy.root)
    assert set(rebuilt) == set(original)
    differing = [name for name in original if name != "run.json" and rebuilt[name] != original[name]]
    assert differing == []
    for derived in (copy.summary_stats, copy.health_checks_json, copy.timeseries_csv):
        assert str(derived.relative_to(copy.root)) in original


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_session_cap_holds_for_the_run_when_drivers_split_it(tmp_path: Path) -> None:
    """max_concurrent_sessions 3 over two drivers (shares 2 and 1): never more than 3 sessions open."""
    proc = run_cli(
        [
            "--server.type",
            "simulated",
            "--server.decode_step_base",
            "0.01",  # 32 tokens: about 0.3 s per request
            "--traffic_scheduler.interval_generator.arrival_rate",
            "40",  # ~13 open without the cap
            "--traffic_scheduler.max_concurrent_sessions",
            "3",
            "--session_generator.output_spec.text.output_length_generator",
            "{type: fixed, value: 32}",
            "--runtime.max_sessions",
            "12",
            "--runtime.num_drivers",
            "2",
            "--output_dir",
            "out",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    records = read_jsonl(only_run_dir(tmp_path / "out").request_records)
    assert len(records) == 12 and {r["driver_id"] for r in records} == {0, 1}
    # Single-request sessions: a session is open from its dispatch to its completion.
    events = sorted(
        [(r[SCHEDULER_DISPATCHED_AT], 1) for r in records] + [(r[CLIENT_COMPLETED_AT], -1) for r in records]
    )
    open_now = peak = 0
    for _, change in events:  # at a tie, the end (-1) sorts first
        open_now += change
        peak = max(peak, open_now)
    assert peak == 3


# The crash tests' slow run (a kill always finds requests in flight); a stop cancels at once.
SLOW = [*CRASH_SLOW, "--runtime.post_timeout_grace_seconds", "0"]


def test_a_killed_driver_of_two_leaves_a_record_for_every_dispatched_request(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [VEEKSHA_RUN, *SLOW, "--runtime.num_drivers", "2"],
        cwd=tmp_path,
        env=no_plots_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    paths = wait_for_dispatches(tmp_path, at_least=20)
    pids = driver_pids(proc.pid)
    assert len(pids) == 2
    os.kill(pids[0], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=60)

    assert proc.returncode == 1, stderr
    records = read_jsonl(paths.request_records)
    assert sorted(r["request_id"] for r in records) == dispatched_ids(paths)
    lost = [r for r in records if r["error_type"] == "driver_lost"]
    (dead,) = {r["driver_id"] for r in lost}  # only the killed driver's requests were lost
    assert len(lost) >= 5
    survivor = [r for r in records if r["driver_id"] != dead]
    assert survivor and all(r["error_type"] != "driver_lost" for r in survivor)
    info = orjson.loads(paths.run_json.read_bytes())
    assert info["status"] == "failed"
    assert f"driver {dead} exited unexpectedly (exit code -9)" in info["error"]
    assert info["driver"]["num_driver_lost"] == len(lost)
    states = {d["driver_id"]: d["status"] for d in info["driver"]["drivers"]}
    assert states[dead] == "failed" and states[1 - dead] == "interrupted"  # told to stop, it did


def start_slow_run(tmp_path: Path, n: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [VEEKSHA_RUN, *CRASH_SLOW, "--runtime.num_drivers", str(n)],
        cwd=tmp_path,
        env=no_plots_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_driver_that_dies_while_starting_is_named_with_its_exit_code(tmp_path: Path) -> None:
    # Killed while it imports (before it is ready): the run said "exit code None", and listed every
    # driver as failed, the healthy one included.
    proc = start_slow_run(tmp_path, 2)
    deadline = time.monotonic() + 30
    while len(pids := driver_pids(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(pids[1], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    info = orjson.loads(only_run_dir(tmp_path / "out").run_json.read_bytes())
    assert info["status"] == "failed" and "exited unexpectedly (exit code -9)" in info["error"], info["error"]
    states = sorted(d["status"] for d in info["driver"]["drivers"])
    assert states == ["failed", "interrupted"]


def test_ctrl_c_while_the_drivers_start_is_an_interruption(tmp_path: Path) -> None:
    # A Ctrl-C forwarded to drivers still importing killed them with KeyboardInterrupt tracebacks,
    # and the run counted as failed (exit 1).
    proc = start_slow_run(tmp_path, 3)
    assert "run directory" in (proc.stdout.readline() if proc.stdout else "")
    time.sleep(0.15)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    info = orjson.loads(only_run_dir(tmp_path / "out").run_json.read_bytes())
    assert info["status"] == "interrupted"


def test_the_run_stops_at_the_timeout_when_any_driver_was_cut_off(tmp_path: Path) -> None:
    # Sessions due at 0.5, 1.0, 1.5 and 2.0 s, timeout 1.8 s. With two drivers, driver 0 had sent
    # its share and said max_sessions, which the run reported (one driver: benchmark_timeout).
    reasons = []
    for n in (1, 2):
        args = [
            "--server.type",
            "simulated",
            "--server.decode_step_base",
            "0.001",
            "--traffic_scheduler.interval_generator",
            "{type: fixed, interval: 0.5}",
            "--runtime.max_sessions",
            "4",
            "--runtime.benchmark_timeout",
            "1.8",
            "--runtime.num_drivers",
            str(n),
            "--output_dir",
            f"out{n}",
        ]
        assert run_cli(args, cwd=tmp_path).returncode == 0
        reasons.append(orjson.loads(only_run_dir(tmp_path / f"out{n}").run_json.read_bytes())["stop_reason"])
    assert reasons == ["benchmark_timeout", "benchmark_timeout"]


def test_the_drain_line_counts_the_requests_of_every_driver(tmp_path: Path) -> None:
    # Every request takes 2.5 s and the run stops at 2 s: all dispatched requests are in flight.
    # The line counted driver 0's alone (8 of 14).
    proc = run_cli(
        [*CRASH_SLOW, "--runtime.num_drivers", "2", "--runtime.benchmark_timeout", "2"], cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    (drain,) = [line for line in proc.stdout.splitlines() if "draining" in line]
    records = read_jsonl(only_run_dir(tmp_path / "out").request_records)
    assert len({r["driver_id"] for r in records}) == 2
    assert drain.startswith(f"veeksha: draining {len(records)} requests"), (drain, len(records))


def test_the_drain_after_a_driver_died_says_so(tmp_path: Path) -> None:
    # It said "Ctrl-C again to cancel" when nobody had pressed Ctrl-C.
    proc = start_slow_run(tmp_path, 2)
    wait_for_dispatches(tmp_path, at_least=20)
    os.kill(driver_pids(proc.pid)[0], signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    (drain,) = [line for line in stdout.splitlines() if "draining" in line]
    assert drain.startswith("veeksha: a driver failed; draining ") and drain.endswith("; Ctrl-C to cancel)")


def test_sessions_follow_the_slots_when_the_drivers_split_the_concurrency(tmp_path: Path) -> None:
    # Three concurrent sessions on two drivers: driver 0 has two slots, driver 1 one. Sessions went
    # half and half: driver 1 ran six sessions on one slot, alone long after driver 0 was done, and
    # the run's concurrency fell to 2.05 of 3 (its health check failed; with one driver: 2.99).
    args = [
        "--server.type",
        "simulated",
        "--server.decode_step_base",
        "0.01",
        "--traffic_scheduler",
        "{type: concurrent, target_concurrent_sessions: 3, rampup_seconds: 0}",
        "--session_generator.output_spec.text.output_length_generator",
        "{type: fixed, value: 32}",
        "--runtime.max_sessions",
        "12",
        "--runtime.num_drivers",
        "2",
        "--output_dir",
        "out",
    ]
    assert run_cli(args, cwd=tmp_path).returncode == 0
    paths = only_run_dir(tmp_path / "out")
    records = read_jsonl(paths.request_records)
    per_driver = [sum(1 for r in records if r["driver_id"] == d) for d in (0, 1)]
    assert per_driver == [8, 4]
    health = orjson.loads(paths.health_checks_json.read_bytes())
    (concurrency,) = [c for c in health["checks"] if c["name"] == "concurrency"]
    assert concurrency["result"] == "PASSED", concurrency


def test_a_driver_stuck_after_ctrl_c_is_killed_and_its_requests_recorded(tmp_path: Path) -> None:
    # A driver that never ends (stopped here with SIGSTOP, as one stuck in native code would be)
    # kept veeksha-run waiting through any number of Ctrl-Cs.
    proc = start_slow_run(tmp_path, 2)
    paths = wait_for_dispatches(tmp_path, at_least=20)
    stuck = driver_pids(proc.pid)[1]
    os.kill(stuck, signal.SIGSTOP)
    # The first drains; the second, sent once the drain is announced, cancels. The third only hastens
    # the kill: merged with the second (it prints nothing to wait for), the kill comes CANCEL_WAIT_S
    # after the cancel, within the wait below.
    shown = interrupt_until_drain_announced(proc)
    assert "Ctrl-C again to cancel" in shown, shown
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    info = orjson.loads(paths.run_json.read_bytes())
    assert info["status"] == "interrupted" and "did not stop after Ctrl-C; killed" in info["error"]
    records = read_jsonl(paths.request_records)
    assert sorted(r["request_id"] for r in records) == dispatched_ids(paths)


@pytest.mark.parametrize("n", [1, 3])
def test_a_terminal_ctrl_c_while_the_drivers_start_prints_no_traceback(tmp_path: Path, n: int) -> None:
    # A terminal Ctrl-C reaches the whole process group, the drivers too until they leave it. The
    # first driver began with SIGINT unblocked (the resource tracker's start unblocked it) and died
    # with a KeyboardInterrupt traceback of about 40 lines.
    proc = subprocess.Popen(
        [VEEKSHA_RUN, *CRASH_SLOW, "--runtime.num_drivers", str(n)],
        cwd=tmp_path,
        env=no_plots_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell gives a command
    )
    deadline = time.monotonic() + 30
    while not any(map(importing, driver_pids(proc.pid))) and time.monotonic() < deadline:
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr


def importing(pid: int) -> bool:
    """The driver process is still in our process group with Python's own SIGINT handler set: it
    imports, driver_main has not run yet (a SIGINT before that handler would end it silently)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        in_group = os.getpgid(pid) != pid
    except (OSError, ProcessLookupError):
        return False
    caught = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return in_group and bool(int(caught, 16) & (1 << (signal.SIGINT - 1)))


def test_a_driver_frozen_past_the_end_fails_the_drivers_check_naming_it(tmp_path: Path) -> None:
    # Stopped (SIGSTOP) mid-run and resumed after the timeout: the sessions due meanwhile were never
    # sent, its lateness stayed low, and the check passed naming the other driver as the limit.
    args = ["--server.type", "simulated", "--traffic_scheduler.interval_generator.arrival_rate", "20"]
    args += ["--runtime.benchmark_timeout", "4", "--runtime.num_drivers", "2", "--output_dir", "out"]
    proc = subprocess.Popen(
        [VEEKSHA_RUN, *args], cwd=tmp_path, env=no_plots_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    paths = wait_for_dispatches(tmp_path, at_least=10)
    frozen = driver_pids(proc.pid)[0]
    os.kill(frozen, signal.SIGSTOP)
    time.sleep(4)  # past the run's end
    os.kill(frozen, signal.SIGCONT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr

    records = read_jsonl(paths.request_records)
    sent = {d: sum(1 for r in records if r["driver_id"] == d) for d in (0, 1)}
    stopped = min(sent, key=lambda d: sent[d])
    assert sent[stopped] < sent[1 - stopped] / 2, sent
    health = orjson.loads(paths.health_checks_json.read_bytes())
    (check,) = [c for c in health["checks"] if c["name"] == "drivers"]
    assert check["result"] == "FAILED" and check["metrics"]["limiting_driver"] == stopped, check
    assert check["detail"].startswith(f"driver {stopped} did not send "), check["detail"]
