"""The end of a run is bounded and explained: what it waits for, for how long, and how to cut it short."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import orjson
import pytest

from tests.runner.helpers import VEEKSHA_RUN, no_plots_env, only_run_dir, read_jsonl, run_cli

# ~2.5 s per request, 20 sessions/s: every stop finds requests in flight.
SLOW = [
    "--server.type",
    "simulated",
    "--session_generator.output_spec.text.output_length_generator",
    "{type: fixed, value: 250}",
    "--server.decode_step_base",
    "0.01",
    "--traffic_scheduler.interval_generator.arrival_rate",
    "20",
    "--output_dir",
    "out",
]


def drain_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if "draining" in line]


def test_a_timed_run_says_what_it_drains_and_ends_completed_by_its_timeout(tmp_path: Path) -> None:
    proc = run_cli([*SLOW, "--runtime.benchmark_timeout", "2"], cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    (line,) = drain_lines(proc.stdout)
    assert line.startswith("veeksha: draining ")
    assert line.endswith(" requests (up to 300s; Ctrl-C to cancel)")  # client.request_timeout; no Ctrl-C yet
    info = orjson.loads(only_run_dir(tmp_path / "out").run_json.read_bytes())
    assert (info["status"], info["stop_reason"]) == ("completed", "benchmark_timeout")
    assert "[completed]" in proc.stdout


def test_the_grace_period_bounds_the_drain(tmp_path: Path) -> None:
    flags = ["--runtime.benchmark_timeout", "3", "--runtime.post_timeout_grace_seconds", "1"]
    shorter = ["--session_generator.output_spec.text.output_length_generator", "{type: fixed, value: 100}"]
    started = time.monotonic()
    proc = run_cli([*SLOW, *flags, *shorter], cwd=tmp_path)  # the earliest requests complete

    assert proc.returncode == 0, proc.stderr
    (line,) = drain_lines(proc.stdout)
    assert line.endswith(" requests (up to 1s; Ctrl-C to cancel)")
    records = read_jsonl(only_run_dir(tmp_path / "out").request_records)
    cancelled = [r for r in records if r["status"] == "cancelled"]
    assert cancelled  # cut at the end of the grace period
    # They had been sent: they keep their send times (metrics.md: a failed request keeps its timestamps)
    # and what they had received (its tokens, not 0).
    assert all(r["client_picked_up_at"] is not None for r in cancelled)
    assert all(r["client_picked_up_at"] >= r["scheduler_dispatched_at"] for r in cancelled)
    assert any((r["num_output_tokens"] or 0) > 0 for r in cancelled)
    assert time.monotonic() - started < 30


def test_the_first_ctrl_c_drains_once_and_the_run_ends_interrupted(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [VEEKSHA_RUN, *SLOW, "--runtime.benchmark_timeout", "60"],
        cwd=tmp_path,
        env=no_plots_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Requests in flight when Ctrl-C comes: sent ones (the trace file exists before the first is
    # sent; on a loaded CI machine none had been a second later, and there was nothing to drain).
    deadline = time.monotonic() + 30
    while sum(len(f.read_bytes().splitlines()) for f in (tmp_path / "out").glob("*/traces/*.jsonl")) < 5:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)

    assert proc.returncode == 130, stderr
    (line,) = drain_lines(stdout)
    assert line.endswith(" requests (up to 300s; Ctrl-C again to cancel)")
    info = orjson.loads(only_run_dir(tmp_path / "out").run_json.read_bytes())
    assert info["status"] == "interrupted" and info["finished_at"]


def wait_until_sent(out: Path, n: int = 5) -> None:
    """Until `n` requests were sent (their trace lines are written before they go out)."""
    deadline = time.monotonic() + 30
    while sum(len(f.read_bytes().splitlines()) for f in out.glob("*/traces/*.jsonl")) < n:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def ends_interrupted_with_every_record(out: Path) -> None:
    """run.json final (interrupted), a record for every dispatched request, the metrics written."""
    paths = only_run_dir(out)
    info = orjson.loads(paths.run_json.read_bytes())
    assert info["status"] == "interrupted" and info["finished_at"], info
    trace = read_jsonl(paths.dispatch_trace)
    records = read_jsonl(paths.request_records)
    assert trace and sorted(r["request_id"] for r in records) == sorted(t["request_id"] for t in trace)
    assert paths.summary_stats.is_file()


def test_a_hangup_stops_the_run_as_sigterm_does(tmp_path: Path) -> None:
    # `kill -HUP` (an ssh drop, a closed terminal): the run died with exit 129, run.json left running.
    proc = subprocess.Popen(
        [VEEKSHA_RUN, *SLOW, "--runtime.benchmark_timeout", "60"],
        cwd=tmp_path,
        env=no_plots_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until_sent(tmp_path / "out")
    proc.send_signal(signal.SIGHUP)
    stdout, stderr = proc.communicate(timeout=60)

    assert proc.returncode == 130, stderr
    (line,) = drain_lines(stdout)  # drained, not cancelled
    assert line.endswith(" requests (up to 300s; Ctrl-C again to cancel)")
    ends_interrupted_with_every_record(tmp_path / "out")


def test_a_run_started_under_nohup_ignores_a_hangup(tmp_path: Path) -> None:
    """`nohup veeksha-run ... &`, then the terminal closes: the run goes on to its end."""

    def like_nohup() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    proc = subprocess.Popen(
        [VEEKSHA_RUN, *SLOW, "--runtime.benchmark_timeout", "4"],
        cwd=tmp_path,
        env=no_plots_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=like_nohup,
    )
    wait_until_sent(tmp_path / "out")
    proc.send_signal(signal.SIGHUP)
    _, stderr = proc.communicate(timeout=60)

    assert proc.returncode == 0, stderr
    info = orjson.loads(only_run_dir(tmp_path / "out").run_json.read_bytes())
    assert info["status"] == "completed" and info["stop_reason"] == "benchmark_timeout"


def test_a_run_whose_terminal_closes_still_finishes_its_files(tmp_path: Path) -> None:
    """The run owns a real terminal (a pty) that is then closed: the kernel hangs it up, sends the
    run SIGHUP, and every later write to the terminal fails (EIO). The run drains and ends."""
    master, slave = pty.openpty()

    def own_the_terminal() -> None:  # a session of its own, the pty its controlling terminal
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [VEEKSHA_RUN, *SLOW, "--runtime.benchmark_timeout", "60"],
        cwd=tmp_path,
        env=no_plots_env(),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        preexec_fn=own_the_terminal,
    )
    os.close(slave)
    shown = b""
    try:
        deadline = time.monotonic() + 30
        while sum(len(f.read_bytes().splitlines()) for f in (tmp_path / "out").glob("*/traces/*.jsonl")) < 5:
            assert time.monotonic() < deadline and proc.poll() is None, shown.decode(errors="replace")
            if select.select([master], [], [], 0.1)[0]:  # the terminal is read, as a real one is
                shown += os.read(master, 65536)
    finally:
        os.close(master)  # the terminal is gone: a hangup
    assert proc.wait(timeout=60) == 130
    assert b"run directory" in shown
    ends_interrupted_with_every_record(tmp_path / "out")


def test_ctrl_c_while_the_server_starts_exits_130_without_aborted(tmp_path: Path) -> None:
    started = tmp_path / "started"
    never_ready = f"import time; open({str(started)!r}, 'w').close(); time.sleep(60)"
    proc = subprocess.Popen(
        [
            VEEKSHA_RUN,
            "--server",
            f'{{type: command, command: [{sys.executable}, -c, "{never_ready}"], '
            "ready_url: 'http://127.0.0.1:9/health'}",
            "--output_dir",
            "out",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Set-up: waiting for the server to answer. A fixed 2 s was too short on a loaded CI machine:
    # the Ctrl-C came before veeksha-run had imported its modules (a traceback, exit -2).
    deadline = time.monotonic() + 60
    while not started.exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.poll()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)

    assert proc.returncode == 130
    assert stderr.strip().splitlines() == ["veeksha-run: interrupted"]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_ctrl_c_during_evaluation_exits_130_and_leaves_the_run_to_evaluate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real run in this process; only the moment of the Ctrl-C is arranged (evaluation raises
    KeyboardInterrupt), since a signal cannot be timed to land inside evaluation reliably."""
    import veeksha.runner.evaluation.evaluate as evaluate
    from veeksha.runner.cli import main

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "evaluate_run", interrupted)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(["--server.type", "simulated", "--runtime.benchmark_timeout", "1", "--output_dir", "out"])

    assert exited.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "veeksha-run: interrupted"
    paths = only_run_dir(tmp_path / "out")
    info = orjson.loads(paths.run_json.read_bytes())
    # The run itself completed: the Ctrl-C cut its evaluation, and no uploader takes it without metrics.
    assert (info["status"], info["stop_reason"], info["finished_at"]) == (
        "completed",
        "benchmark_timeout",
        None,
    )
    assert "interrupted during evaluation; rerun `veeksha-run evaluate" in info["evaluation_error"]

    monkeypatch.undo()  # the real evaluation, as the message says
    # The run was made in this process, which is still alive: as after a real run, its pid is gone.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    paths.run_json.write_bytes(orjson.dumps({**info, "pid": gone.pid}))
    with pytest.raises(SystemExit) as exited:
        main(["evaluate", str(paths.root)])
    assert exited.value.code == 0
    info = orjson.loads(paths.run_json.read_bytes())
    assert info["status"] == "completed" and info["finished_at"] and "evaluation_error" not in info


def test_sessions_due_after_a_timeout_are_not_sent_though_their_tasks_had_started(tmp_path: Path) -> None:
    # Rate traffic starts each session's task 50 ms before it is due (dispatcher.LOOKAHEAD_S): the
    # stop must leave those unsent, and every request that was sent has its record.
    flags = [
        "--server.type",
        "simulated",
        "--traffic_scheduler.interval_generator.arrival_rate",
        "200",
        "--runtime.benchmark_timeout",
        "1",
        "--output_dir",
        "out",
    ]
    proc = run_cli(flags, cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    paths = only_run_dir(tmp_path / "out")
    trace = read_jsonl(paths.dispatch_trace)
    records = read_jsonl(paths.request_records)
    assert len(trace) > 100
    assert sorted(r["request_id"] for r in records) == sorted(t["request_id"] for t in trace)
    assert all(t["dispatched_at"] is not None for t in trace)
    # Nothing due at or after the timeout is sent. Checked only on the driver's 20 ms tick, the
    # timeout let through what was due before the next tick (after a pause of a loaded driver, all
    # that was due during the pause: the precise timer's callbacks run before the tick).
    assert max(t["scheduled_at"] for t in trace) < 1.0
    assert max(t["dispatched_at"] for t in trace) < 1.0  # dispatch ends at the timeout, not after it


def test_the_benchmark_timeout_bounds_a_run_stopped_by_its_request_cap(tmp_path: Path) -> None:
    """A cap waits for its requests, but not past the timeout and its grace: 60 s requests here."""
    long = ["--session_generator.output_spec.text.output_length_generator", "{type: fixed, value: 6000}"]
    flags = ["--runtime.max_requests", "3", "--runtime.benchmark_timeout", "2"]
    started = time.monotonic()
    proc = run_cli([*SLOW, *long, *flags, "--runtime.post_timeout_grace_seconds", "0.5"], cwd=tmp_path)
    assert time.monotonic() - started < 30  # the requests alone would take 60 s
    assert proc.returncode == 1 and "every request failed (0 errors, 3 cancelled)" in proc.stdout, proc.stderr
    (line,) = drain_lines(proc.stdout)
    assert line.endswith(" requests (up to 2s; Ctrl-C to cancel)")  # the timeout's, not 300 s
    records = read_jsonl(only_run_dir(tmp_path / "out").request_records)
    assert len(records) == 3 and {r["status"] for r in records} == {"cancelled"}


def test_a_run_of_zero_requests_stopped_by_its_request_cap(tmp_path: Path) -> None:
    proc = run_cli([*SLOW, "--runtime.max_requests", "0", "--runtime.benchmark_timeout", "5"], cwd=tmp_path)
    info = orjson.loads(only_run_dir(tmp_path / "out").run_json.read_bytes())
    assert info["stop_reason"] == "max_requests", (info, proc.stderr)  # it said max_sessions
    # With no request every health check is skipped: the summary said "health PASSED".
    (health,) = [line for line in proc.stdout.splitlines() if line.strip().startswith("health")]
    assert "no check ran: 0 passed, 0 failed" in health and "PASSED" not in health


@pytest.mark.parametrize(
    "ends_dispatch",
    [["--runtime.benchmark_timeout", "2"], ["--runtime.max_sessions", "5"]],
    ids=["timeout", "last-session"],
)
def test_one_ctrl_c_cancels_a_drain_already_under_way(tmp_path: Path, ends_dispatch: list[str]) -> None:
    # The line says "Ctrl-C to cancel" (nobody had pressed one); one Ctrl-C did nothing (two were
    # needed) and the run waited for every request.
    # Requests of ~60 s: the drain line comes from the recorder, at background priority, and on a
    # loaded machine came seconds late, after every request of 2.5 s had ended (nothing to cancel).
    long = ["--session_generator.output_spec.text.output_length_generator", "{type: fixed, value: 6000}"]
    proc = subprocess.Popen(
        [VEEKSHA_RUN, *SLOW, *long, "--server.max_kv_tokens", "1000000", *ends_dispatch],
        cwd=tmp_path,
        env=no_plots_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "draining" in line:
            assert line.rstrip().endswith("Ctrl-C to cancel)")
            break
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    # Cut, not waited for (each request needed about a minute more; the time to the exit is no
    # measure on a loaded machine, where evaluating the run can take long).
    records = read_jsonl(only_run_dir(tmp_path / "out").request_records)
    assert any(r["status"] == "cancelled" for r in records)


@pytest.mark.parametrize(
    "stop", [["--runtime.max_requests", "4"], ["--runtime.benchmark_timeout", "1.5"]], ids=["cap", "timeout"]
)
def test_a_stop_does_not_wait_out_the_think_time_of_turns_it_will_never_send(
    tmp_path: Path, stop: list[str]
) -> None:
    # Sessions of 3 turns with 120 s of think time between them: after the stop no turn is sent, so
    # nothing is left to wait for once the first turns are answered (the drain waited out the 120 s).
    graph = (
        "{type: linear, num_request_generator: {type: fixed, value: 3}, "
        "request_wait_generator: {type: fixed, value: 120}}"
    )
    flags = ["--server.type", "simulated", "--session_generator.session_graph", graph, "--output_dir", "out"]
    rate = ["--traffic_scheduler.interval_generator.arrival_rate", "4", "--runtime.benchmark_timeout", "30"]
    started = time.monotonic()
    proc = run_cli([*flags, *rate, *stop], cwd=tmp_path)
    took = time.monotonic() - started

    assert proc.returncode == 0, proc.stderr
    assert took < 60, f"the run took {took:.1f} s"  # about 5 s; a loaded CI machine is slower
    paths = only_run_dir(tmp_path / "out")
    records = read_jsonl(paths.request_records)
    assert records and {r["status"] for r in records} == {"success"}
    assert sorted(r["request_id"] for r in records) == sorted(
        t["request_id"] for t in read_jsonl(paths.dispatch_trace)
    )
