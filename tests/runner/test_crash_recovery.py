"""Whatever dies, a started run leaves one record per dispatched request.

Real processes: `veeksha-run` against the simulated server, slowed down so that many requests are in
flight when a process is killed with SIGKILL.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from veeksha.runner.lost_records import recover
from veeksha.shared.errors import UsageError
from veeksha.shared.paths import RunPaths
from veeksha.shared.records import REQUEST_RECORD_FIELDS

from tests.runner.helpers import (
    VEEKSHA_RUN,
    CountingStreamHandler,
    no_plots_env,
    only_run_dir,
    read_jsonl,
    received_when_settled,
    run_cli,
    serving,
)
from tests.uploader.conftest import make_home, upload

# ~2.5 s per request (250 tokens x 10 ms): a kill always finds requests in flight.
SLOW = [
    "--server.type",
    "simulated",
    "--server.decode_step_base",
    "0.01",
    "--session_generator.output_spec.text.output_length_generator",
    "{type: fixed, value: 250}",
    "--traffic_scheduler.interval_generator.arrival_rate",
    "20",
    "--runtime.benchmark_timeout",
    "60",
    "--output_dir",
    "out",
]


# A short run at the simulated server's full speed.
QUICK = [
    "--server.type",
    "simulated",
    "--traffic_scheduler.interval_generator.arrival_rate",
    "20",
    "--runtime.benchmark_timeout",
    "2",
    "--output_dir",
    "out",
]


def start_slow_run(tmp_path: Path, *flags: str) -> subprocess.Popen:
    """A SLOW run; `flags` come after its own (the last of a flag given twice is taken)."""
    return subprocess.Popen(
        [VEEKSHA_RUN, *SLOW, *flags],
        cwd=tmp_path,
        env=no_plots_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_dispatches(tmp_path: Path, at_least: int, within_s: float = 30) -> RunPaths:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        found = list((tmp_path / "out").glob("*/traces/dispatch_trace.jsonl"))
        if found and len(found[0].read_bytes().splitlines()) >= at_least:
            return RunPaths(found[0].parent.parent)
        time.sleep(0.1)
    raise AssertionError(f"fewer than {at_least} dispatches within {within_s} s")


def driver_pids(parent: int) -> list[int]:
    children = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout.split()
    return [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def started_at(pid: int) -> str | None:
    """When the process started (clock ticks since boot: another process given the pid later has
    another), None once it has ended (gone, or a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]


def running(pids: list[int]) -> dict[int, str]:
    """These processes, by pid, with their start times: what wait_until_ended waits on."""
    return {pid: start for pid in pids if (start := started_at(pid)) is not None}


def wait_until_ended(processes: dict[int, str], within_s: float = 30) -> None:
    """Until each of these processes has ended: an orphaned driver ends on its next tick, and until
    then it may still write (its rescue file: `evaluate` says the run "is still ending")."""
    deadline = time.monotonic() + within_s
    while alive := [pid for pid, start in processes.items() if started_at(pid) == start]:
        assert time.monotonic() < deadline, f"processes {alive} still running after {within_s} s"
        time.sleep(0.05)


def driver_pid(parent: int) -> int:
    pids = driver_pids(parent)
    assert pids, "no driver process found"
    return pids[0]


def dispatched_ids(paths: RunPaths) -> list[int]:
    return sorted(t["request_id"] for t in read_jsonl(paths.dispatch_trace) if t["dispatched_at"] is not None)


def test_a_killed_driver_leaves_a_record_for_every_request_it_had_sent(tmp_path: Path) -> None:
    proc = start_slow_run(tmp_path)
    paths = wait_for_dispatches(tmp_path, at_least=20)
    os.kill(driver_pid(proc.pid), signal.SIGKILL)
    _, stderr = proc.communicate(timeout=60)

    assert proc.returncode == 1, stderr
    records = read_jsonl(paths.request_records)
    assert sorted(r["request_id"] for r in records) == dispatched_ids(paths)
    lost = [r for r in records if r["error_type"] == "driver_lost"]
    assert len(lost) >= 20  # nothing had completed yet: every one was in flight
    assert all(r["status"] == "error" and r["scheduler_dispatched_at"] is not None for r in lost)
    assert all(list(r) == list(REQUEST_RECORD_FIELDS) for r in lost)
    info = orjson.loads(paths.run_json.read_bytes())
    assert info["status"] == "failed"
    assert f"{len(lost)} dispatched request(s) had no result" in info["error"]
    assert info["driver"]["num_driver_lost"] == len(lost)


@pytest.fixture(scope="module")
def crashed_run(tmp_path_factory: pytest.TempPathFactory) -> RunPaths:
    """A run whose processes were all killed with SIGKILL mid-run (the machine's OOM killer, a
    `kill -9` of the job): its driver could keep nothing for the recorder (driver/rescue.py)."""
    tmp = tmp_path_factory.mktemp("crashed")
    proc = start_slow_run(tmp)
    paths = wait_for_dispatches(tmp, at_least=20)
    driver = driver_pid(proc.pid)
    drivers = running([driver])
    os.kill(driver, signal.SIGKILL)
    proc.kill()
    proc.wait()
    proc.stdout.close()  # not read: the run was killed; an open pipe is a ResourceWarning
    proc.stderr.close()
    wait_until_ended(drivers)  # (process_alive is False for a driver: it does not name veeksha)
    return paths


def test_a_killed_run_is_left_running_until_evaluate_marks_it_crashed(crashed_run: RunPaths) -> None:
    assert orjson.loads(crashed_run.run_json.read_bytes())["status"] == "running"
    dispatched = dispatched_ids(crashed_run)
    before = len(read_jsonl(crashed_run.request_records))

    proc = run_cli(["evaluate", str(crashed_run.root)], cwd=crashed_run.root)

    assert proc.returncode in (0, 1), proc.stderr
    records = read_jsonl(crashed_run.request_records)
    # The trace now also has what the killed driver never shipped (its ring file): a record each.
    assert set(dispatched) <= set(dispatched_ids(crashed_run))
    assert sorted(r["request_id"] for r in records) == dispatched_ids(crashed_run)
    missing = len(records) - before
    assert f"marked crashed; {missing} dispatched request(s) without a record" in proc.stdout
    info = orjson.loads(crashed_run.run_json.read_bytes())
    assert info["status"] == "crashed" and info["finished_at"]
    assert crashed_run.summary_stats.exists()
    # The end is when it last wrote: after its last dispatch. No request had ended, and the request
    # log's time (the run's start) was taken for it.
    started, finished = (
        dt.datetime.fromisoformat(info[k].replace("Z", "+00:00")) for k in ("started_at", "finished_at")
    )
    last_dispatch = max(
        t["dispatched_at"] for t in read_jsonl(crashed_run.dispatch_trace) if t["dispatched_at"]
    )
    assert (finished - started).total_seconds() >= last_dispatch - 0.2
    # The lost requests were in flight until at least the run's last sign of life (with no end they
    # counted as in flight for 0 s, and the concurrency check's mean was NaN).
    lost = [r for r in records if r["error_type"] == "driver_lost"]
    # (A record's times are rounded to whole nanoseconds; the trace's are not.)
    assert lost and all(r["result_processed_at"] >= last_dispatch - 1e-9 for r in lost)


def test_evaluating_a_crashed_run_twice_adds_nothing(crashed_run: RunPaths) -> None:
    run_cli(["evaluate", str(crashed_run.root)], cwd=crashed_run.root)
    count = len(read_jsonl(crashed_run.request_records))
    proc = run_cli(["evaluate", str(crashed_run.root)], cwd=crashed_run.root)
    assert "marked crashed" not in proc.stdout
    assert len(read_jsonl(crashed_run.request_records)) == count


def test_the_uploader_accepts_a_crashed_run(crashed_run: RunPaths, tmp_path: Path) -> None:
    run_cli(["evaluate", str(crashed_run.root)], cwd=crashed_run.root)
    proc = upload([str(crashed_run.root), "--mode", "offline"], make_home(tmp_path / "home"), tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert crashed_run.wandb_run_json.exists()


def test_a_run_still_going_is_not_marked_crashed(tmp_path: Path) -> None:
    # ~10 s per request: every one sent is still in flight when the second Ctrl-C comes.
    proc = start_slow_run(
        tmp_path, "--session_generator.output_spec.text.output_length_generator", "{type: fixed, value: 1000}"
    )
    try:
        paths = wait_for_dispatches(tmp_path, at_least=1)
        with pytest.raises(UsageError, match="still being written by process"):
            recover(paths)
        # Then Ctrl-C twice, to cancel it. The second is sent once the first was taken (the drain
        # announced): two sent back to back are one stop (a drain) as often as not.
        proc.send_signal(signal.SIGINT)
        assert proc.stdout is not None
        shown = ""
        while "draining" not in shown and (line := proc.stdout.readline()):
            shown = line
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert "Ctrl-C again to cancel" in shown, shown
    assert proc.returncode == 130, stderr
    assert orjson.loads(paths.run_json.read_bytes())["status"] == "interrupted"
    # The requests the drain waited for were cut short by the second Ctrl-C.
    assert any(r["status"] == "cancelled" for r in read_jsonl(paths.request_records))


def two_dispatched(root: Path, run_json: str, records: str) -> RunPaths:
    """A run directory whose trace dispatched requests 0 and 1, with this run.json and request log."""
    paths = RunPaths(root)
    paths.make_dirs()
    paths.run_json.write_text(run_json)
    paths.dispatch_trace.write_text(
        '{"request_id": 0, "session_id": 0, "node_id": 0, "ready_at": 1.0, "dispatched_at": 1.0}\n'
        '{"request_id": 1, "session_id": 1, "node_id": 0, "ready_at": 2.0, "dispatched_at": 2.0}\n'
    )
    paths.request_records.write_text(records)
    return paths


def test_a_torn_last_line_is_ended_before_lost_records_are_appended(tmp_path: Path) -> None:
    paths = two_dispatched(
        tmp_path / "run",
        '{"status": "running", "host": "elsewhere", "pid": 1}',
        '{"request_id": 0, "status": "success"}\n{"request_id": 1, "sta',
    )

    assert recover(paths, other_host_gone=True).lost == 1

    lines = paths.request_records.read_bytes().splitlines()
    assert lines[1] == b'{"request_id": 1, "sta'  # kept as it was: evaluation reports it
    assert orjson.loads(lines[2])["error_type"] == "driver_lost"


def test_evaluate_names_corrupt_lines_in_the_middle_of_the_request_log(tmp_path: Path) -> None:
    proc = run_cli(QUICK, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    paths = only_run_dir(tmp_path / "out")
    lines = paths.request_records.read_bytes().splitlines(keepends=True)
    assert len(lines) >= 4
    lines[1] = b"{not json\n"
    lines[3] = b"garbage\n"
    paths.request_records.write_bytes(b"".join(lines))

    proc = run_cli(["evaluate", str(paths.root)], cwd=tmp_path)

    assert "2 line(s) of the request log are not records and were skipped (line 2, 4)" in proc.stdout
    summary = orjson.loads(paths.summary_stats.read_bytes())
    assert summary["num_requests"] == len(lines) - 2


def test_a_run_without_crash_keeps_its_status_through_evaluate(tmp_path: Path) -> None:
    proc = run_cli(QUICK, cwd=tmp_path)
    paths = only_run_dir(tmp_path / "out")
    info = orjson.loads(paths.run_json.read_bytes())
    assert (info["status"], info["stop_reason"]) == ("completed", "benchmark_timeout"), proc.stderr
    run_cli(["evaluate", str(paths.root)], cwd=tmp_path)
    assert orjson.loads(paths.run_json.read_bytes())["status"] == "completed"


def test_a_run_that_died_while_evaluating_is_finished_by_evaluate(tmp_path: Path) -> None:
    """Final status, no finished_at: its metrics may be half written. The uploader leaves it alone;
    evaluate writes them and then finished_at."""
    proc = run_cli(QUICK, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    paths = only_run_dir(tmp_path / "out")
    info = orjson.loads(paths.run_json.read_bytes())
    paths.run_json.write_bytes(orjson.dumps({**info, "finished_at": None}))
    paths.summary_stats.unlink()

    home = make_home(tmp_path / "home")
    skipped = upload([str(paths.root), "--mode", "offline"], home, tmp_path)
    assert skipped.returncode == 0 and "still being evaluated" in skipped.stdout
    assert not paths.wandb_run_json.exists()

    proc = run_cli(["evaluate", str(paths.root)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    after = orjson.loads(paths.run_json.read_bytes())
    assert after["status"] == "completed" and after["finished_at"] and paths.summary_stats.exists()
    uploaded = upload([str(paths.root), "--mode", "offline"], home, tmp_path)
    assert uploaded.returncode == 0 and paths.wandb_run_json.exists()


def test_evaluate_records_the_requests_a_full_disk_left_without_a_record(tmp_path: Path) -> None:
    # What a recorder stopped by a full disk leaves: a final status, dispatched requests unrecorded.
    paths = two_dispatched(
        tmp_path / "run",
        '{"status": "failed", "finished_at": "2026-12-01T00:00:00.000Z"}',
        '{"request_id": 0, "status": "success"}\n',
    )

    recovery = recover(paths)

    assert (recovery.crashed, recovery.lost, recovery.finished_at) == (False, 1, None)
    lost = orjson.loads(paths.request_records.read_bytes().splitlines()[1])
    assert lost["request_id"] == 1 and lost["error_type"] == "driver_lost"
    assert orjson.loads(paths.run_json.read_bytes())["status"] == "failed"  # its status stands
    assert recover(paths).lost == 0  # once


def test_a_run_left_running_on_another_host_is_not_taken_for_crashed(tmp_path: Path) -> None:
    """On a shared filesystem its process may still be writing: only the user can say it has ended."""
    paths = two_dispatched(
        tmp_path / "run", '{"status": "running", "host": "elsewhere", "pid": 1}', '{"request_id": 0}\n'
    )
    with pytest.raises(
        UsageError, match=r"may still be being written on host 'elsewhere'.*--other-host-gone"
    ):
        recover(paths)
    assert paths.request_records.read_bytes() == b'{"request_id": 0}\n'  # nothing appended
    assert orjson.loads(paths.run_json.read_bytes())["status"] == "running"

    assert recover(paths, other_host_gone=True).crashed  # the user says its process has ended
    assert orjson.loads(paths.run_json.read_bytes())["status"] == "crashed"


def test_a_torn_last_line_with_no_trace_to_recover_it_is_named_not_dropped(tmp_path: Path) -> None:
    proc = run_cli([*QUICK, "--trace_recorder.enabled", "false"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    paths = only_run_dir(tmp_path / "out")
    lines = paths.request_records.read_bytes().splitlines(keepends=True)
    paths.request_records.write_bytes(b"".join(lines[:-1]) + lines[-1][:20])  # a crash mid-append
    info = orjson.loads(paths.run_json.read_bytes())
    paths.run_json.write_bytes(orjson.dumps({**info, "status": "running", "finished_at": None}))

    proc = run_cli(["evaluate", str(paths.root)], cwd=tmp_path)

    assert proc.returncode == 1, proc.stderr  # a crashed run
    assert f"1 line(s) of the request log are not records and were skipped (line {len(lines)})" in proc.stdout


def test_a_stray_object_above_the_first_record_is_skipped_not_a_traceback(tmp_path: Path) -> None:
    proc = run_cli(QUICK, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    paths = only_run_dir(tmp_path / "out")
    count = len(read_jsonl(paths.request_records))
    paths.request_records.write_bytes(b"{}\n" + paths.request_records.read_bytes())

    proc = run_cli(["evaluate", str(paths.root)], cwd=tmp_path)

    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "1 line(s) of the request log are not records and were skipped (line 1)" in proc.stdout
    assert orjson.loads(paths.summary_stats.read_bytes())["num_requests"] == count


def test_a_run_stopped_before_its_request_log_was_opened_is_evaluated_as_no_requests(tmp_path: Path) -> None:
    """A Ctrl-C (or a kill) between the run directory's creation and the recording's start."""
    proc = run_cli(QUICK, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    paths = only_run_dir(tmp_path / "out")
    for f in [*paths.root.glob("metrics/*"), *paths.root.glob("traces/*")]:
        f.unlink()
    info = orjson.loads(paths.run_json.read_bytes())
    paths.run_json.write_bytes(orjson.dumps({**info, "status": "running", "finished_at": None}))

    proc = run_cli(["evaluate", str(paths.root)], cwd=tmp_path)

    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    info = orjson.loads(paths.run_json.read_bytes())
    assert info["status"] == "crashed" and info["finished_at"]
    assert orjson.loads(paths.summary_stats.read_bytes())["num_requests"] == 0


def test_a_failed_re_evaluation_leaves_the_run_unfinished_until_one_succeeds(tmp_path: Path) -> None:
    """evaluate rewrites a finished run's files: until it has written them all, no uploader may take
    the directory (a failure half-way would leave new and old files mixed)."""
    proc = run_cli(QUICK, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    paths = only_run_dir(tmp_path / "out")
    blocker = paths.root / "metrics" / "ttfc.png"
    blocker.unlink(missing_ok=True)
    blocker.mkdir()  # this file cannot be written now

    failed = run_cli(["evaluate", str(paths.root)], cwd=tmp_path, plots=True)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    info = orjson.loads(paths.run_json.read_bytes())
    assert (
        info["finished_at"] is None
        and "being evaluated by `veeksha-run evaluate`" in info["evaluation_error"]
    )
    skipped = upload([str(paths.root), "--mode", "offline"], make_home(tmp_path / "home"), tmp_path)
    assert "no metrics yet: being evaluated" in skipped.stdout, skipped.stdout

    blocker.rmdir()
    assert run_cli(["evaluate", str(paths.root)], cwd=tmp_path, plots=True).returncode == 0
    info = orjson.loads(paths.run_json.read_bytes())
    assert info["finished_at"] and "evaluation_error" not in info


def test_evaluating_a_sweep_member_late_fills_its_row_in_the_sweep_table(tmp_path: Path) -> None:
    (tmp_path / "c.veeksha.yml").write_text(
        "output_dir: out\nserver: {type: simulated, decode_step_base: 0.002}\n"
        "runtime: {max_sessions: 3}\nseed: !expand [1, 2]\n"
    )
    assert run_cli(["--config", "c.veeksha.yml"], cwd=tmp_path).returncode == 0
    (sweep,) = (tmp_path / "out").iterdir()
    member = sorted(p for p in sweep.iterdir() if (p / "run.json").is_file())[0]
    # What a member whose evaluation failed leaves, and the sweep table written then.
    RunPaths(member).summary_stats.unlink()
    info = orjson.loads((member / "run.json").read_bytes())
    (member / "run.json").write_bytes(orjson.dumps({**info, "finished_at": None, "evaluation_error": "x"}))
    from veeksha.runner.sweep import write_summary

    write_summary(sweep, orjson.loads((sweep / "sweep_manifest.json").read_bytes()))
    skipped = upload([str(sweep), "--mode", "offline"], make_home(tmp_path / "home"), tmp_path)
    assert f"sweep not finished: member {member.name} has no metrics yet: x" in skipped.stdout, skipped.stdout

    assert run_cli(["evaluate", str(member)], cwd=tmp_path).returncode == 0
    rows = orjson.loads((sweep / "sweep_summary.json").read_bytes())["runs"]
    assert all(row["num_requests"] == 3 for row in rows), rows


def test_a_run_whose_config_evaluate_cannot_read_keeps_its_finished_run_json(tmp_path: Path) -> None:
    """evaluate stops at the config, before it takes finished_at away: the run stays uploadable."""
    proc = run_cli(QUICK, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    paths = only_run_dir(tmp_path / "out")
    before = paths.run_json.read_bytes()
    paths.config_yml.write_text(paths.config_yml.read_text() + "\nnot_a_key: 1\n")
    failed = run_cli(["evaluate", str(paths.root)], cwd=tmp_path)
    assert failed.returncode == 2 and "not_a_key" in failed.stderr, failed.stderr
    assert paths.run_json.read_bytes() == before


def test_a_member_left_without_metrics_can_be_evaluated_while_its_sweep_goes_on(tmp_path: Path) -> None:
    """Its run.json names the sweep's process, still alive: evaluation_error says the runner gave up."""
    proc = run_cli(QUICK, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    paths = only_run_dir(tmp_path / "out")
    info = orjson.loads(paths.run_json.read_bytes())
    sweep = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "veeksha-run"])  # lives on
    try:
        alive = {"pid": sweep.pid, "host": socket.gethostname(), "finished_at": None, "evaluation_error": "x"}
        paths.run_json.write_bytes(orjson.dumps({**info, **alive}))
        evaluated = run_cli(["evaluate", str(paths.root)], cwd=tmp_path)
    finally:
        sweep.kill()
        sweep.wait()
    assert evaluated.returncode == 0, evaluated.stderr
    assert orjson.loads(paths.run_json.read_bytes())["finished_at"]


@pytest.fixture
def counting_server() -> Iterator[str]:
    CountingStreamHandler.received = 0
    with serving(CountingStreamHandler) as base:
        yield base


def kill_a_frozen_recorder(tmp_path: Path, api_base: str, *flags: str) -> RunPaths:
    """Run at 100 requests/s, freeze `veeksha-run` (the recorder) for a second while its driver goes on
    sending, kill it, and wait for the orphaned driver to end."""
    run = [VEEKSHA_RUN, "--client.api_base", api_base, "--client.model", "m", "--output_dir", "out"]
    load = ["--traffic_scheduler.interval_generator.arrival_rate", "100", "--runtime.benchmark_timeout", "30"]
    proc = subprocess.Popen(
        [*run, *load, *flags], cwd=tmp_path, env=no_plots_env(), stdout=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while CountingStreamHandler.received < 50:
            assert time.monotonic() < deadline and proc.poll() is None, "the run sent too little"
            time.sleep(0.1)
        driver = running([driver_pid(proc.pid)])
        proc.send_signal(signal.SIGSTOP)
        time.sleep(1.0)
    finally:
        proc.kill()
        proc.wait()
    wait_until_ended(driver)  # (process_alive is False for a driver: it does not name veeksha)
    return only_run_dir(tmp_path / "out")


def test_a_recorder_killed_while_batches_wait_for_it_loses_no_request(
    tmp_path: Path, counting_server: str
) -> None:
    """What the driver had sent a recorder that never wrote it (a second of batches in the pipe)
    reaches the run directory through the driver's rescue file: every request the server got has a
    record."""
    paths = kill_a_frozen_recorder(tmp_path, counting_server)
    received = received_when_settled()
    assert paths.driver_rescues(), "the driver kept nothing for its dead recorder"

    proc = run_cli(["evaluate", str(paths.root)], cwd=paths.root)

    assert proc.returncode in (0, 1), proc.stderr
    records = read_jsonl(paths.request_records)
    # Every request the server read has a record (and more: under load a server may not have read a
    # request the driver wrote before it cancelled it); without the rescue, 50 records for 154.
    assert len(records) >= received
    assert sorted(r["request_id"] for r in records) == dispatched_ids(paths)  # one each
    assert not paths.driver_rescues()  # merged, then removed
    statuses = {r["status"] for r in records}
    assert "success" in statuses  # what completed before the freeze kept its real outcome
    info = orjson.loads(paths.run_json.read_bytes())
    assert info["status"] == "crashed" and "record(s) its drivers kept were written" in info["error"]


def test_a_run_with_the_trace_off_still_has_every_request_recorded_after_a_crash(
    tmp_path: Path, counting_server: str
) -> None:
    """With trace_recorder.enabled false the trace is still written, unlisted, until the run has
    ended whole: after a crash it is the only list of what was sent."""
    paths = kill_a_frozen_recorder(tmp_path, counting_server, "--trace_recorder.enabled", "false")
    received = received_when_settled()

    proc = run_cli(["evaluate", str(paths.root)], cwd=paths.root)

    assert proc.returncode in (0, 1), proc.stderr
    records = read_jsonl(paths.request_records)
    assert len({r["request_id"] for r in records}) == len(records) >= received
    assert not paths.dispatch_trace.exists() and not paths.unlisted_trace.exists()


def test_a_whole_run_leaves_no_rescue_file_and_no_unlisted_trace(tmp_path: Path) -> None:
    proc = run_cli([*QUICK, "--trace_recorder.enabled", "false"], cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    paths = only_run_dir(tmp_path / "out")
    assert read_jsonl(paths.request_records)
    assert not paths.unlisted_trace.exists() and not paths.driver_rescues()
    assert not paths.dispatch_trace.exists()


def test_evaluate_waits_for_a_driver_still_writing_its_rescue_file(tmp_path: Path) -> None:
    run_json = orjson.dumps({"status": "running", "pid": 0, "host": socket.gethostname()}).decode()
    paths = two_dispatched(tmp_path / "run", run_json, "")
    with paths.driver_rescue(0).open("ab") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # as a driver does while it writes there
        with pytest.raises(UsageError, match="is still ending"):
            recover(paths)
    assert recover(paths).lost == 2


def test_a_second_evaluate_of_the_same_directory_at_once_is_refused(tmp_path: Path) -> None:
    """Two at once each gave every lost request a driver_lost record (1,240 records for 620 requests)."""
    proc = run_cli(QUICK, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    paths = only_run_dir(tmp_path / "out")
    count = len(read_jsonl(paths.request_records))
    with paths.evaluate_lock.open("a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # as the first `evaluate` does while it works
        second = run_cli(["evaluate", str(paths.root)], cwd=tmp_path)
    assert second.returncode == 2
    assert "is being evaluated by another `veeksha-run evaluate`" in second.stderr
    assert len(read_jsonl(paths.request_records)) == count
    assert run_cli(["evaluate", str(paths.root)], cwd=tmp_path).returncode == 0


def test_a_driver_killed_with_unshipped_dispatches_leaves_a_record_for_each(
    tmp_path: Path, counting_server: str
) -> None:
    """A driver ships its trace once per tick, and holds frames while the pipe is full. Killed with
    SIGKILL (the OOM killer), it took those dispatches along: the server had them, no record did.
    Here the recorder is frozen for two seconds while the driver sends long prompts (traced with their
    content: the pipe is full within half a second), then the driver is killed: what it never shipped
    is read back from its ring file (driver/dispatch_ring.py)."""
    run = [VEEKSHA_RUN, "--client.api_base", counting_server, "--client.model", "m", "--output_dir", "out"]
    load = ["--traffic_scheduler.interval_generator.arrival_rate", "100", "--runtime.benchmark_timeout", "30"]
    long_prompts = [
        "--session_generator.channels",
        "[{type: text, body_length_generator: {type: fixed, value: 4000}}]",
        "--trace_recorder.include_content",
        "true",
    ]
    proc = subprocess.Popen(
        [*run, *load, *long_prompts],
        cwd=tmp_path,
        env=no_plots_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while CountingStreamHandler.received < 30:
            assert time.monotonic() < deadline and proc.poll() is None, "the run sent too little"
            time.sleep(0.1)
        driver = driver_pid(proc.pid)
        proc.send_signal(signal.SIGSTOP)
        time.sleep(2.0)
        os.kill(driver, signal.SIGKILL)
    finally:
        proc.send_signal(signal.SIGCONT)
    _, stderr = proc.communicate(timeout=60)
    received = received_when_settled()

    assert proc.returncode == 1, stderr
    paths = only_run_dir(tmp_path / "out")
    records = read_jsonl(paths.request_records)
    # Without the ring file, about 150 requests the server had (those of the driver's full write
    # buffer) were in neither file.
    assert len(records) >= received
    assert sorted(r["request_id"] for r in records) == dispatched_ids(paths)  # one each
    assert not paths.all_driver_dispatches()  # read, then removed with the run's other crash files
    traced = read_jsonl(paths.dispatch_trace)
    assert all(t["content"] is not None for t in traced[:10])  # shipped lines keep their content


# ---------------------------------------------------------------- a pid given to another process


# Sets "pid" in each JSON file named after it to the pid given first.
_SET_PID = """
import json, sys
for path in sys.argv[2:]:
    with open(path) as f:
        data = json.load(f)
    data["pid"] = int(sys.argv[1])
    with open(path, "w") as f:
        json.dump(data, f)
"""


def evaluate_as_the_recorded_process(target: Path, *owned: Path) -> subprocess.CompletedProcess[str]:
    """`veeksha-run evaluate TARGET` in a process whose pid the `owned` files name as theirs: what a
    restarted container gives (the same pid, often 1, to the first process started in it), and
    `evaluate` names veeksha on its command line as a runner does."""
    script = f'"$0" -c "$1" $$ {" ".join(f"{str(p)!r}" for p in owned)} && exec "$2" evaluate "$3"'
    return subprocess.run(
        ["bash", "-c", script, sys.executable, _SET_PID, VEEKSHA_RUN, str(target)],
        cwd=target.parent,
        env=no_plots_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_a_crashed_run_whose_pid_is_now_evaluates_own_is_marked_crashed(tmp_path: Path) -> None:
    """It was "still being written by process N" for ever: N was `evaluate` itself."""
    proc = run_cli(QUICK, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    paths = only_run_dir(tmp_path / "out")
    info = orjson.loads(paths.run_json.read_bytes())
    paths.run_json.write_bytes(orjson.dumps({**info, "status": "running", "finished_at": None}))

    proc = evaluate_as_the_recorded_process(paths.root, paths.run_json)

    assert proc.returncode == 1, proc.stdout + proc.stderr  # crashed, as evaluate says of any
    assert "was left running by a process that died: marked crashed" in proc.stdout, proc.stdout
    assert orjson.loads(paths.run_json.read_bytes())["status"] == "crashed"
