"""`veeksha-run` end to end against the built-in simulated server over real loopback HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import orjson
import pytest
from veeksha.shared.config_loader import load_written_config
from veeksha.shared.records import REQUEST_RECORD_FIELDS
from veeksha.shared.secret import Secret

from tests.runner.helpers import VEEKSHA_RUN, all_text_under, no_plots_env, only_run_dir, read_jsonl, run_cli
from tests.runner.test_crash_recovery import driver_pids
from tests.shared.test_config import seed_yaml_blocks

FAST = [
    "--server.type",
    "simulated",
    "--traffic_scheduler.interval_generator.arrival_rate",
    "20",
    "--output_dir",
    "out",
]


def start_run(tmp_path: Path, *flags: str) -> subprocess.Popen:
    """A 60 s run in the background, for tests that interrupt it."""
    return subprocess.Popen(
        [VEEKSHA_RUN, *FAST, "--runtime.benchmark_timeout", "60", *flags],
        cwd=tmp_path,
        env=no_plots_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_first_record(tmp_path: Path, within_s: float = 30) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        found = list((tmp_path / "out").glob("*/metrics/request_level_metrics.jsonl"))
        if found and found[0].stat().st_size > 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"no request record within {within_s} s")


@pytest.fixture(scope="module")
def seed_run(tmp_path_factory: pytest.TempPathFactory):
    """The seed's complete example, changed only by flags, with secrets planted by flag and env."""
    tmp = tmp_path_factory.mktemp("seed")
    (tmp / "seed.veeksha.yml").write_text(seed_yaml_blocks()[-1].replace("enabled: true", "enabled: false"))
    proc = run_cli(
        [
            "--config",
            "seed.veeksha.yml",
            "--server.type",
            "simulated",
            "--runtime.benchmark_timeout",
            "6",
            "--traffic_scheduler.interval_generator.arrival_rate",
            "25",
            "--client.api_key",
            "sk-flag-secret-4242",
            "--client.headers.Authorization",
            "Bearer hdr-secret-777",
        ],
        cwd=tmp,
        env={"OPENAI_API_KEY": "sk-env-secret-1717"},
    )
    return tmp, proc


def test_the_seed_example_completes_and_leaves_a_run_directory(seed_run) -> None:
    tmp, proc = seed_run
    assert proc.returncode == 0, proc.stderr
    paths = only_run_dir(tmp / "benchmark_output")
    info = orjson.loads(paths.run_json.read_bytes())
    assert info["status"] in ("completed", "timeout")
    assert len(info["run_id"]) == 32
    assert info["finished_at"] and info["error"] is None
    cfg = load_written_config(paths.config_yml)
    assert cfg.server is not None and cfg.client.api_base.startswith("http://127.0.0.1:")
    assert cfg.client.model == "meta-llama/Llama-3-8B-Instruct"  # as configured
    assert cfg.client.api_key == Secret("<redacted>")  # the file holds the placeholder, not the key


def test_secrets_given_by_flag_and_env_appear_in_no_file(seed_run) -> None:
    tmp, proc = seed_run
    text = all_text_under(tmp / "benchmark_output")
    for secret in ("sk-flag-secret-4242", "sk-env-secret-1717", "hdr-secret-777"):
        assert secret not in text
        assert secret not in proc.stdout + proc.stderr


def test_one_record_per_dispatched_request_and_ttfc_is_positive(seed_run) -> None:
    tmp, _ = seed_run
    paths = only_run_dir(tmp / "benchmark_output")
    records = read_jsonl(paths.request_records)
    trace = read_jsonl(paths.dispatch_trace)
    assert len(records) >= 100  # 25 sessions/s for 6 s, up to 3 turns each
    assert sorted(r["request_id"] for r in records) == sorted(t["request_id"] for t in trace)
    assert list(records[0]) == list(REQUEST_RECORD_FIELDS)
    ok = [r for r in records if r["status"] == "success"]
    assert len(ok) >= 0.95 * len(records)
    assert all(r["ttfc"] > 0 and r["end_to_end_latency"] >= r["ttfc"] for r in ok)
    assert all(r["token_count_source"] == "server" for r in ok)
    # Poisson arrivals on an absolute schedule: the driver dispatches on time. Judged second by second
    # of the schedule, by the best: a busy machine (the other tests) makes the driver late for a
    # while, not for the whole run; a driver that is late by design is late in every second.
    by_second: dict[int, list[float]] = {}
    for r in records:
        if r["dispatch_delay"] is not None:
            by_second.setdefault(int(r["scheduler_ready_at"]), []).append(r["dispatch_delay"])
    medians = [sorted(d)[len(d) // 2] for d in by_second.values() if len(d) >= 10]
    assert len(medians) >= 3, by_second
    assert min(medians) < 0.005, medians


def test_later_turns_carry_the_history_they_inherit(seed_run) -> None:
    tmp, _ = seed_run
    records = read_jsonl(only_run_dir(tmp / "benchmark_output").request_records)
    by_key = {(r["session_id"], r["node_id"]): r for r in records}
    later = [r for r in records if r["node_id"] > 0 and r["status"] == "success"]
    assert later
    for r in later:
        parent = by_key[(r["session_id"], r["node_id"] - 1)]
        # history = parent's prompt + its reply + this turn's new content
        assert r["num_total_prompt_tokens"] == (
            parent["num_total_prompt_tokens"] + parent["num_output_tokens"] + r["num_delta_prompt_tokens"]
        )


def test_bad_config_exits_2_with_one_line_before_any_traffic(tmp_path: Path) -> None:
    proc = run_cli([*FAST, "--traffic_scheduler.interval_generator.arrival_rate", "-3"], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "interval_generator.arrival_rate: -3 is not allowed; must be >= 2e-06" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_missing_api_base_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_cli(["--runtime.benchmark_timeout", "1"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "client.api_base: not set" in proc.stderr
    assert list(tmp_path.iterdir()) == []  # not even the default output directory


def test_max_sessions_ends_the_run_as_completed(tmp_path: Path) -> None:
    proc = run_cli([*FAST, "--runtime.max_sessions", "12", "--runtime.warmup_sessions", "2"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    paths = only_run_dir(tmp_path / "out")
    assert orjson.loads(paths.run_json.read_bytes())["status"] == "completed"
    records = read_jsonl(paths.request_records)
    assert len({r["session_id"] for r in records}) == 14
    assert sum(r["is_warmup"] for r in records) == 2
    # no model configured: the one model the server lists in /v1/models is used
    assert load_written_config(paths.config_yml).client.model == "veeksha-sim"


def test_sigterm_drains_and_marks_the_run_interrupted(tmp_path: Path) -> None:
    proc = start_run(tmp_path)
    wait_for_first_record(tmp_path)
    os.kill(proc.pid, signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    paths = only_run_dir(tmp_path / "out")
    assert orjson.loads(paths.run_json.read_bytes())["status"] == "interrupted"
    records = read_jsonl(paths.request_records)
    assert records and len(records) == len(read_jsonl(paths.dispatch_trace))
    assert paths.summary_stats.exists()


def test_a_killed_driver_fails_the_run_cleanly(tmp_path: Path) -> None:
    proc = start_run(tmp_path)
    drivers: list[int] = []
    deadline = time.monotonic() + 30
    while not drivers and time.monotonic() < deadline:  # the driver, not the resource tracker
        time.sleep(0.3)
        drivers = driver_pids(proc.pid)
    assert drivers, "no driver process found"
    driver = drivers[0]
    time.sleep(1.0)
    os.kill(driver, signal.SIGKILL)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    info = orjson.loads(only_run_dir(tmp_path / "out").run_json.read_bytes())
    assert info["status"] == "failed"
    assert "driver process exited unexpectedly" in info["error"]


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # the process may vanish between the two looks
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_a_killed_benchmark_process_leaves_no_orphans(tmp_path: Path) -> None:
    proc = start_run(tmp_path)
    wait_for_first_record(tmp_path)
    family = _children(proc.pid)
    family += [g for c in family for g in _children(c)]
    assert len(family) >= 2  # at least the driver and the simulated server
    proc.kill()
    proc.wait()
    proc.stdout.close()  # not read: the run was killed; an open pipe is a ResourceWarning
    proc.stderr.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in family):
        time.sleep(0.2)
    assert not [p for p in family if _alive(p)]


def wait_for_dispatched(output_dir: Path, n: int, timeout_s: float = 60.0) -> None:
    """Until the run under `output_dir` has dispatched `n` requests (its trace has n lines)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        traces = list(output_dir.glob("*/traces/dispatch_trace.jsonl"))
        if traces and traces[0].read_bytes().count(b"\n") >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"no {n} requests dispatched within {timeout_s} s")


def interrupt_until_drain_announced(proc: subprocess.Popen[str]) -> str:
    """Ctrl-C the run, then read its output up to the drain line it prints once it took that Ctrl-C
    ("... Ctrl-C again to cancel"), returned ("" if it ended first). Send the next Ctrl-C after it:
    on a loaded machine the run's handler may run late, and a Ctrl-C sent before it ran is merged
    with the pending one, so two become one stop (a drain), never a cancel."""
    proc.send_signal(signal.SIGINT)
    assert proc.stdout is not None
    shown = ""
    while "draining" not in shown and (line := proc.stdout.readline()):
        shown = line
    return shown


def test_a_second_interrupt_cancels_in_flight_requests_at_once(tmp_path: Path) -> None:
    proc = start_run(
        tmp_path,
        "--session_generator.output_spec.text.output_length_generator",
        "{type: fixed, value: 6000}",
        "--server.max_kv_tokens",
        "1000000",
    )
    # Requests of 6,000 tokens take ~60 s each: once a few were sent, they are in flight. (2,000
    # tokens left too little room between a drain and a cancellation on a heavily loaded machine.)
    wait_for_dispatched(tmp_path / "out", 3)
    shown = interrupt_until_drain_announced(proc)
    assert "Ctrl-C again to cancel" in shown, shown
    proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    _out, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err
    assert time.monotonic() - started < 30  # draining would take ~60 s
    paths = only_run_dir(tmp_path / "out")
    records = read_jsonl(paths.request_records)
    cancelled = [r for r in records if r["status"] == "cancelled"]
    assert cancelled and all(r["scheduler_dispatched_at"] is not None for r in cancelled)
    assert len(records) == len(read_jsonl(paths.dispatch_trace))


def test_hundreds_of_requests_finishing_together_all_reach_the_records(tmp_path: Path) -> None:
    """More than a pipe's worth of records in the last batch: the driver must flush before exiting."""
    proc = run_cli(
        [
            "--server.type",
            "simulated",
            "--output_dir",
            "out",
            "--server.max_batch_size",
            "4096",
            "--server.max_kv_tokens",
            "100000000",
            "--server.decode_step_per_seq",
            "0",
            "--runtime.max_sessions",
            "400",
            "--traffic_scheduler.type",
            "concurrent",
            "--traffic_scheduler.target_concurrent_sessions",
            "400",
            "--session_generator.channels",
            "[{type: text, body_length_generator: {type: fixed, value: 10}}]",
            "--session_generator.output_spec.text.output_length_generator",
            "{type: fixed, value: 400}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    paths = only_run_dir(tmp_path / "out")
    assert len(read_jsonl(paths.request_records)) == len(read_jsonl(paths.dispatch_trace)) == 400
    assert orjson.loads(paths.run_json.read_bytes())["status"] == "completed"


def test_a_failed_request_ends_its_whole_branching_session(tmp_path: Path) -> None:
    """cancel_session_on_failure: no request of the session is sent after a failure, in any branch."""
    graph = (
        "{type: branching, num_layers_generator: {type: fixed, value: 3}, "
        "layer_width_generator: {type: fixed, value: 2}}"
    )
    proc = run_cli(
        [
            *(
                "--server.type",
                "simulated",
                "--server.decode_step_base",
                "0.002",
                "--server.error_rate",
                "0.3",
            ),
            *("--session_generator.session_graph", graph, "--runtime.max_sessions", "20", "--seed", "5"),
            *("--traffic_scheduler.interval_generator.arrival_rate", "20", "--output_dir", "out"),
        ],
        cwd=tmp_path,
    )
    assert proc.returncode in (0, 1), proc.stderr
    records = read_jsonl(only_run_dir(tmp_path / "out").request_records)
    sessions: dict[int, list[dict]] = {}
    for r in records:
        sessions.setdefault(r["session_id"], []).append(r)
    failed_sessions = 0
    for rs in sessions.values():
        failures = [r for r in rs if r["status"] == "error"]
        if not failures:
            continue
        failed_sessions += 1
        first_failure = min(r["client_completed_at"] for r in failures)
        sent_after = [r for r in rs if (r["scheduler_dispatched_at"] or 0) > first_failure]
        assert sent_after == [], sent_after
    assert failed_sessions >= 3  # the check above had something to check


def test_sessions_cut_short_are_incomplete_also_without_the_dispatch_trace(tmp_path: Path) -> None:
    """The records carry each session's size: with the trace off, a session that sent 1 of its 3
    requests is no longer counted as completed."""
    proc = run_cli(
        [
            *("--server.type", "simulated", "--server.decode_step_base", "0.01"),
            *("--session_generator.session_graph.type", "linear", "--trace_recorder.enabled", "false"),
            *("--session_generator.output_spec.text.output_length_generator", "{type: fixed, value: 150}"),
            *(
                "--traffic_scheduler.interval_generator.arrival_rate",
                "10",
                "--runtime.benchmark_timeout",
                "2",
            ),
            *("--output_dir", "out"),
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    paths = only_run_dir(tmp_path / "out")
    assert not paths.dispatch_trace.exists()
    records = read_jsonl(paths.request_records)
    per_session: dict[int, list[dict]] = {}
    for r in records:
        per_session.setdefault(r["session_id"], []).append(r)
    whole = [s for s, rs in per_session.items() if len(rs) == 3 and all(r["status"] == "success" for r in rs)]
    summary = orjson.loads(paths.summary_stats.read_bytes())
    assert summary["num_completed_sessions"] == len(whole)
    assert summary["num_incomplete_sessions"] == len(per_session) - len(whole) > 0


def test_a_turns_prompt_count_includes_the_replies_in_its_history_without_server_usage(
    tmp_path: Path,
) -> None:
    """Without usage the driver counts each reply as the recorder does: the next turn's total is its
    parent's total, plus the parent's reply, plus its own new text."""
    proc = run_cli(
        [
            *("--server.type", "simulated", "--server.decode_step_base", "0.002"),
            *("--session_generator.session_graph.type", "linear", "--client.include_usage", "false"),
            *("--runtime.max_sessions", "6", "--output_dir", "out"),
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    records = read_jsonl(only_run_dir(tmp_path / "out").request_records)
    by_node = {(r["session_id"], r["node_id"]): r for r in records}
    later = [r for r in records if r["node_id"] > 0]
    assert later and all(r["token_count_source"] == "approximate" for r in records)
    for r in later:
        parent = by_node[(r["session_id"], r["node_id"] - 1)]
        expected = (
            parent["num_total_prompt_tokens"] + parent["num_output_tokens"] + r["num_delta_prompt_tokens"]
        )
        assert r["num_total_prompt_tokens"] == expected, (r, parent)
