"""`veeksha-run` command variants: seed invocation, schema export, dry run, sweeps, capacity search,
evaluate, and the traffic / client / graph variants over real loopback HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from veeksha.runner.cli import main
from veeksha.shared.paths import (
    CAPSEARCH_ATTEMPTS_CSV,
    CAPSEARCH_RESULTS,
    SWEEP_MANIFEST,
    SWEEP_SUMMARY_CSV,
    SWEEP_SUMMARY_JSON,
    RunPaths,
)
from veeksha.shared.records import CONTRACT_VERSION

from tests.runner.helpers import VEEKSHA_RUN, only_run_dir, read_jsonl, run_cli

QUICK = [
    "--server.type",
    "simulated",
    "--server.decode_step_base",
    "0.002",
    "--output_dir",
    "out",
]


def write(tmp: Path, text: str, name: str = "c.veeksha.yml") -> Path:
    (tmp / name).write_text(textwrap.dedent(text))
    return tmp / name


def test_seed_invocation_python_m_veeksha_benchmark(tmp_path: Path) -> None:
    write(tmp_path, "runtime: {max_sessions: 3}\nserver: {type: simulated}\noutput_dir: out\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-Xgil=0",
            "-m",
            "veeksha.benchmark",
            "--benchmark-config-from-file",
            "c.veeksha.yml",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(read_jsonl(only_run_dir(tmp_path / "out").request_records)) == 3


def test_export_json_schema(tmp_path: Path) -> None:
    proc = run_cli(["--export-json-schema", "schema.json"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    schema = orjson.loads((tmp_path / "schema.json").read_bytes())
    assert "wandb" in schema["properties"]
    assert schema["properties"]["wandb"]["properties"]["log_artifacts"]["default"] is True


def test_dry_run_reports_how_many_runs_a_file_expands_to(tmp_path: Path) -> None:
    write(
        tmp_path,
        "client: {api_base: 'http://127.0.0.1:1/v1', stream: !expand [true, false]}\n"
        "seed: !expand [1, 2, 3]\n",
    )
    proc = run_cli(["--config", "c.veeksha.yml", "--dry-run"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "expands to 6 run(s)" in proc.stdout


def test_a_dry_run_refuses_what_a_run_would_refuse_before_starting(tmp_path: Path) -> None:
    write(tmp_path, "seed: !expand [1, 2]\n")  # no endpoint anywhere
    proc = run_cli(["--config", "c.veeksha.yml", "--dry-run"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "client.api_base: not set" in proc.stderr


def test_unknown_flag_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_cli(["--verbose", "yes"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "config error at verbose: unknown key" in proc.stderr


def test_a_sweep_runs_every_combination_into_one_sweep_directory(tmp_path: Path) -> None:
    write(
        tmp_path,
        """
        output_dir: out
        server: {type: simulated, decode_step_base: 0.002}
        traffic_scheduler:
          type: rate
          interval_generator: {type: poisson, arrival_rate: !expand [5, 10]}
        runtime: {max_sessions: 4}
        """,
    )
    proc = run_cli(["--config", "c.veeksha.yml"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (sweep,) = (tmp_path / "out").iterdir()
    assert sweep.name.startswith("sweep-")
    manifest = orjson.loads((sweep / SWEEP_MANIFEST).read_bytes())
    assert [r["params"] for r in manifest["runs"]] == [
        {"traffic_scheduler.interval_generator.arrival_rate": 5},
        {"traffic_scheduler.interval_generator.arrival_rate": 10},
    ]
    summary = orjson.loads((sweep / SWEEP_SUMMARY_JSON).read_bytes())["runs"]
    assert [row["num_requests"] for row in summary] == [4, 4]
    assert (sweep / SWEEP_SUMMARY_CSV).read_text().count("\n") == 3
    for i, entry in enumerate(manifest["runs"]):
        info = orjson.loads(RunPaths(sweep / entry["run_dir"]).run_json.read_bytes())
        assert info["sweep"]["index"] == i and info["sweep"]["count"] == 2


def test_a_sweep_with_one_run_where_every_request_failed_exits_1(tmp_path: Path) -> None:
    write(
        tmp_path,
        """
        output_dir: out
        server: {type: simulated, decode_step_base: 0.002, error_rate: !expand [0.0, 1.0]}
        runtime: {max_sessions: 2}
        """,
    )
    proc = run_cli(["--config", "c.veeksha.yml"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.count("veeksha: every request failed") == 1  # the second run only
    (sweep,) = (tmp_path / "out").iterdir()
    manifest = orjson.loads((sweep / SWEEP_MANIFEST).read_bytes())
    assert [r["status"] for r in manifest["runs"]] == ["completed", "completed"]  # both ran to the end


def test_a_sweep_run_whose_server_never_started_keeps_its_row_and_compare_leaves_it_out(
    tmp_path: Path,
) -> None:
    write(
        tmp_path,
        """
        output_dir: out
        server: !expand
          - {type: simulated, decode_step_base: 0.002}
          - {type: command, command: ["false"], ready_url: "http://127.0.0.1:9/health", ready_timeout: 5}
          - {type: simulated, decode_step_base: 0.003}
        runtime: {max_sessions: 3}
        """,
    )
    proc = run_cli(["--config", "c.veeksha.yml"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    (sweep,) = (tmp_path / "out").iterdir()
    manifest = orjson.loads((sweep / SWEEP_MANIFEST).read_bytes())
    assert [(r["index"], r["status"]) for r in manifest["runs"]] == [
        (0, "completed"),
        (1, "failed"),
        (2, "completed"),
    ]
    assert manifest["runs"][1]["run_dir"] is None
    rows = orjson.loads((sweep / SWEEP_SUMMARY_JSON).read_bytes())["runs"]
    assert [r["status"] for r in rows] == ["completed", "failed", "completed"]  # one row per run

    compared = run_cli(["compare", str(sweep), "--output_dir", "cmp"], cwd=tmp_path)
    assert compared.returncode == 0, compared.stderr
    assert f"left out: {sweep.name} run 1 (no run directory, failed): no results" in compared.stdout


def test_capacity_search_finds_a_knee_without_repeating_values(tmp_path: Path) -> None:
    write(
        tmp_path,
        """
        output_dir: cs
        start_value: 2
        max_value: 64
        expansion_factor: 4
        max_iterations: 4
        precision: 0
        benchmark_config:
          server: {type: simulated, max_batch_size: 4, decode_step_base: 0.004}
          traffic_scheduler: {type: concurrent, target_concurrent_sessions: 1}
          session_generator:
            type: synthetic
            output_spec: {text: {output_length_generator: {type: fixed, value: 16}}}
          evaluators:
            - type: performance
              slos: [{name: p90 ttfc, metric: ttfc, percentile: 0.9, value: 0.05}]
          runtime: {benchmark_timeout: 2}
        """,
    )
    proc = run_cli(["capacity-search", "--config", "c.veeksha.yml"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (root,) = (tmp_path / "cs").iterdir()
    result = orjson.loads((root / CAPSEARCH_RESULTS).read_bytes())
    values = [h["value"] for h in result["history"]]
    assert result["searched_knob"] == "traffic_scheduler.target_concurrent_sessions"
    assert result["status"] == "completed"
    assert values[:2] == [2, 8]  # phase 1 multiplies by the expansion factor
    assert len(values) == len(set(values)) <= 4
    assert result["history"][0]["passed"] is True  # 2 sessions fit a batch of 4
    assert result["best_value"] is not None and result["best_value"] < 8
    assert (root / CAPSEARCH_ATTEMPTS_CSV).exists()


def test_a_capacity_search_where_no_request_ever_succeeds_exits_1(tmp_path: Path) -> None:
    """A dead endpoint, a wrong model or key fails at every load: that is no capacity to report."""
    write(
        tmp_path,
        """
        output_dir: cs
        start_value: 2
        max_value: 8
        max_iterations: 2
        benchmark_config:
          server: {type: simulated, decode_step_base: 0.002, error_rate: 1.0}
          evaluators: [{type: performance, slos: [{name: p99 ttfc, metric: ttfc, value: 1}]}]
          runtime: {benchmark_timeout: 1}
        """,
    )
    proc = run_cli(["capacity-search", "--config", "c.veeksha.yml"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "veeksha: no attempt had a successful request; see runs/" in proc.stdout
    (root,) = (tmp_path / "cs").iterdir()
    result = orjson.loads((root / CAPSEARCH_RESULTS).read_bytes())
    assert result["status"] == "completed" and result["best_value"] is None
    assert result["stop_reason"] == "max_iterations"


def test_evaluate_rebuilds_the_metrics_of_a_run(tmp_path: Path) -> None:
    proc = run_cli([*QUICK, "--runtime.max_sessions", "5"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    paths = only_run_dir(tmp_path / "out")
    before = orjson.loads(paths.summary_stats.read_bytes())
    paths.summary_stats.unlink()
    proc = run_cli(["evaluate", str(paths.root)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert orjson.loads(paths.summary_stats.read_bytes())["num_requests"] == before["num_requests"] == 5


def test_evaluate_of_a_non_run_directory_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_cli(["evaluate", str(tmp_path)], cwd=tmp_path)
    assert proc.returncode == 2
    assert "is not a run directory" in proc.stderr


@pytest.mark.parametrize(
    "flags",
    [
        # closed loop, branching sessions
        [
            "--traffic_scheduler.type",
            "concurrent",
            "--traffic_scheduler.target_concurrent_sessions",
            "3",
            "--session_generator.session_graph.type",
            "branching",
            "--runtime.max_sessions",
            "4",
        ],
        # legacy completions, not streamed
        ["--client.type", "openai_completions", "--client.stream", "false", "--runtime.max_sessions", "4"],
        # httpx backend
        ["--client.http_backend", "httpx", "--runtime.max_sessions", "4"],
    ],
    ids=["concurrent-branching", "completions-nonstream", "httpx-backend"],
)
def test_traffic_client_and_graph_variants_complete(tmp_path: Path, flags: list[str]) -> None:
    proc = run_cli([*QUICK, *flags], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    records = read_jsonl(only_run_dir(tmp_path / "out").request_records)
    assert len({r["session_id"] for r in records}) == 4
    ok = [r for r in records if r["status"] == "success"]
    assert ok and all(r["ttfc"] > 0 for r in ok)
    if "--client.stream" in flags:
        assert all(r["ttfc"] == r["end_to_end_latency"] and r["tbc"] == [] for r in ok)


def test_a_failing_server_cancels_the_rest_of_each_session(tmp_path: Path) -> None:
    proc = run_cli(
        [
            *QUICK,
            "--server.error_rate",
            "1.0",
            "--runtime.max_sessions",
            "3",
            "--session_generator.session_graph.type",
            "linear",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr  # every request failed: the run measured nothing
    assert "veeksha: every request failed (3 errors, 6 cancelled); see out/" in proc.stdout
    records = read_jsonl(only_run_dir(tmp_path / "out").request_records)
    errors = [r for r in records if r["status"] == "error"]
    cancelled = [r for r in records if r["status"] == "cancelled"]
    assert len(errors) == 3 and all(r["http_status"] == 500 for r in errors)
    assert len(cancelled) == 2 * 3  # default linear sessions have 3 turns
    assert all(r["scheduler_dispatched_at"] is None for r in cancelled)


def test_a_conversation_trace_says_how_many_records_it_left_out(tmp_path: Path) -> None:
    conversations = [
        {"conversations": [{"from": "human", "value": "hello there"}, {"from": "gpt", "value": "hi"}]},
        {"conversations": []},  # ShareGPT has empty ones
        {"conversations": [{"from": "human", "value": "no reply to this"}]},
    ]
    (tmp_path / "chats.jsonl").write_bytes(b"\n".join(orjson.dumps(c) for c in conversations))
    flags = ["--session_generator", "{type: trace, path: chats.jsonl, wrap: false}"]
    proc = run_cli([*QUICK, *flags], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("veeksha: 2 trace record(s) without a user turn and a reply: left out") == 1
    assert len(read_jsonl(only_run_dir(tmp_path / "out").request_records)) == 1


def test_a_request_log_trace_is_replayed_on_its_timestamps(tmp_path: Path) -> None:
    rows = [{"timestamp": 100.0 + 0.25 * i, "input_length": 50 + i, "output_length": 8} for i in range(6)]
    (tmp_path / "trace.jsonl").write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    proc = run_cli(
        [
            *QUICK,
            "--session_generator.type",
            "trace",
            "--session_generator.path",
            "trace.jsonl",
            "--session_generator.timed_replay",
            "true",
            "--session_generator.wrap",
            "false",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    records = sorted(
        read_jsonl(only_run_dir(tmp_path / "out").request_records), key=lambda r: r["request_id"]
    )
    assert [r["num_delta_prompt_tokens"] for r in records] == [50, 51, 52, 53, 54, 55]
    assert [r["num_output_tokens"] for r in records] == [8] * 6
    # Each request's time is its timestamp's (from the first): what the driver was to keep, whatever
    # the machine's load. It sent none early, and most on time (a busy machine makes one or two late).
    assert [r["scheduler_ready_at"] for r in records] == pytest.approx([0.25 * i for i in range(6)], abs=1e-6)
    late = sorted(r["scheduler_dispatched_at"] - r["scheduler_ready_at"] for r in records)
    assert late[0] >= 0 and late[len(late) // 2] < 0.02, late


def test_a_timed_replay_longer_than_the_timeout_says_how_much_of_it_is_sent(tmp_path: Path) -> None:
    """A trace in milliseconds replayed as seconds is not a quiet server: the console says so first."""
    rows = [{"timestamp": t, "input_length": 20, "output_length": 4} for t in (0, 100, 250, 900)]
    (tmp_path / "trace.jsonl").write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    flags = ["--session_generator", "{type: trace, path: trace.jsonl, timed_replay: true, wrap: false}"]
    proc = run_cli([*QUICK, *flags, "--runtime.benchmark_timeout", "1"], cwd=tmp_path)
    warning = (
        "veeksha: timed replay sends 1 of the trace's 4 records before runtime.benchmark_timeout (1 s); "
        "if its timestamps are milliseconds, set session_generator.time_scale: 1000"
    )
    assert proc.stdout.count(warning) == 1, proc.stdout
    scaled = run_cli([*QUICK, *flags, "--session_generator.time_scale", "1000"], cwd=tmp_path)
    assert scaled.returncode == 0, scaled.stderr
    assert "timed replay sends" not in scaled.stdout


def test_without_cancel_on_failure_every_turn_is_still_sent(tmp_path: Path) -> None:
    proc = run_cli(
        [
            *QUICK,
            "--server.error_rate",
            "1.0",
            "--runtime.max_sessions",
            "2",
            "--session_generator.session_graph.type",
            "linear",
            "--traffic_scheduler.cancel_session_on_failure",
            "false",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr
    records = read_jsonl(only_run_dir(tmp_path / "out").request_records)
    assert len(records) == 2 * 3
    assert all(r["status"] == "error" and r["http_status"] == 500 for r in records)


def test_a_command_server_is_started_waited_for_and_stopped(tmp_path: Path) -> None:
    """`server.type: command` with any binary; here the simulated server started as a command."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    write(
        tmp_path,
        f"""
        output_dir: out
        server:
          type: command
          command: [{sys.executable}, -m, veeksha.runner.simserver.server, --config-json, '{{}}',
                    --port, '{port}']
          ready_url: http://127.0.0.1:{port}/health
        runtime: {{max_sessions: 3}}
        """,
    )
    proc = run_cli(["--config", "c.veeksha.yml"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    paths = only_run_dir(tmp_path / "out")
    assert len(read_jsonl(paths.request_records)) == 3
    with socket.socket() as s:  # the server was stopped: the port is free again
        s.bind(("127.0.0.1", port))


def test_the_environment_fallbacks_are_read_by_the_command_line_only() -> None:
    from veeksha.runner.cli import env_fallbacks
    from veeksha.shared.secret import Secret

    env = {"OPENAI_API_BASE": "http://127.0.0.1:9/v1", "OPENAI_API_KEY": "sk-cli-env-2024"}
    read = env_fallbacks(env)
    assert (read.api_base, read.api_key) == ("http://127.0.0.1:9/v1", Secret("sk-cli-env-2024"))
    assert "sk-cli-env-2024" not in repr(read)
    assert env_fallbacks({"OPENAI_API_BASE": "", "OPENAI_API_KEY": ""}) == env_fallbacks({})


def first_member_running(out: Path) -> bool:
    """The sweep's manifest says its first run has started (saved just before its server starts)."""
    for manifest in out.glob(f"*/{SWEEP_MANIFEST}"):
        if orjson.loads(manifest.read_bytes())["runs"][0]["status"] == "running":
            return True
    return False


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_sweep_interrupted_while_a_server_starts_exits_130(tmp_path: Path, signum: int) -> None:
    """A Ctrl-C (or a SIGTERM, or a hangup) outside a run's recording (its server loading, its
    evaluation) ends the sweep as interrupted, not as a success, nor killed with its manifest still
    saying running."""
    write(
        tmp_path,
        f"""
        output_dir: out
        server:
          type: command
          command: [{sys.executable}, -c, "import time; time.sleep(60)"]
          ready_url: http://127.0.0.1:9/health
          ready_timeout: 60
        runtime: {{max_sessions: !expand [1, 2]}}
        """,
    )
    proc = subprocess.Popen(
        [VEEKSHA_RUN, "--config", "c.veeksha.yml"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert "sweep of 2 runs" in proc.stdout.readline()
    deadline = time.monotonic() + 30
    while not first_member_running(tmp_path / "out"):  # its server is starting
        assert time.monotonic() < deadline and proc.poll() is None, "the sweep's first run did not start"
        time.sleep(0.05)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)

    assert proc.returncode == 130, stderr
    (sweep,) = (tmp_path / "out").iterdir()
    manifest = orjson.loads((sweep / SWEEP_MANIFEST).read_bytes())
    assert manifest["status"] == "interrupted"
    assert [r["status"] for r in manifest["runs"]] == ["interrupted", "not_run"]  # the second never started


def test_a_capacity_search_whose_server_cannot_start_ends_failed(tmp_path: Path) -> None:
    write(
        tmp_path,
        f"""
        output_dir: cs
        start_value: 2
        max_value: 8
        benchmark_config:
          server:
            type: command
            command: [{sys.executable}, -c, "raise SystemExit(3)"]
            ready_url: http://127.0.0.1:9/health
          traffic_scheduler: {{type: concurrent, target_concurrent_sessions: 1}}
          evaluators: [{{type: performance, slos: [{{name: p99 ttfc, metric: ttfc, value: 1}}]}}]
          runtime: {{benchmark_timeout: 2}}
        """,
    )
    proc = run_cli(["capacity-search", "--config", "c.veeksha.yml"], cwd=tmp_path, timeout=120)

    assert proc.returncode == 1
    assert proc.stderr.startswith("veeksha-run: server command") and "exited" in proc.stderr
    (root,) = (tmp_path / "cs").iterdir()
    result = orjson.loads((root / CAPSEARCH_RESULTS).read_bytes())
    assert result["status"] == "failed"  # not "running": the uploader would wait for it forever


def test_a_sweep_whose_last_run_has_a_bad_trace_path_is_refused_before_it_starts(tmp_path: Path) -> None:
    (tmp_path / "ok.jsonl").write_text('{"session_id": 1, "input_length": 10, "output_length": 4}\n')
    write(
        tmp_path,
        """
        output_dir: out
        server: {type: simulated}
        session_generator: {type: trace, path: !expand [ok.jsonl, typo.jsonl]}
        """,
    )
    proc = run_cli(["--config", "c.veeksha.yml"], cwd=tmp_path)

    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "typo.jsonl" in line
    assert not (tmp_path / "out").exists()  # no sweep directory, no first run


# ---------------------------------------------------------------- bad input, refused in one line
# These fail before any work, so they run in this process: no interpreter start-up per case.


@dataclass
class Outcome:
    code: object
    out: str
    err: str

    def refused(self, *parts: str) -> bool:
        """Exit 2 with one `veeksha-run: ...` line on stderr that holds every one of `parts`."""
        lines = self.err.strip().splitlines()
        return (
            self.code == 2
            and len(lines) == 1
            and lines[0].startswith("veeksha-run: ")
            and all(p in lines[0] for p in parts)
        )


@pytest.fixture
def veeksha(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., Outcome]:
    """`veeksha-run ARGS` in this process, in tmp_path."""
    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> Outcome:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main(list(args))
        captured = capsys.readouterr()
        return Outcome(exited.value.code, captured.out, captured.err)

    return run


GOOD_DRY_RUN = "client: {api_base: 'http://127.0.0.1:9/v1', model: m}\nruntime: {max_sessions: 2}\n"
SEARCH = """
output_dir: cs
start_value: 2
max_value: 64
expansion_factor: 4
max_iterations: 10
precision: 0
benchmark_config:
  server: {type: simulated}
  traffic_scheduler: {type: concurrent, target_concurrent_sessions: 1}
  evaluators: [{type: performance, slos: [{name: p99 ttfc, metric: ttfc, value: 1}]}]
  runtime: {benchmark_timeout: 2}
"""


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (
            ["--config", "c.veeksha.yml", "--dry-run", "--traffic_scheduler.max_concurrent_sessions", ""],
            "--traffic_scheduler.max_concurrent_sessions",
        ),
        (["--config", "c.veeksha.yml", "--dry-run", "--client.model="], "--client.model"),
        (["--config", "", "--dry-run"], "--config"),
        (["compare", "r1", "r2", "--output_dir", ""], "--output_dir"),
        (["simulate-server", "--max_batch_size", ""], "--max_batch_size"),
    ],
    ids=["cap-from-unset-variable", "model-equals-nothing", "config-path", "compare-output", "simserver-key"],
)
def test_an_empty_flag_value_is_refused_not_taken_as_unset(
    tmp_path: Path, veeksha: Callable[..., Outcome], args: list[str], flag: str
) -> None:
    write(tmp_path, GOOD_DRY_RUN + "traffic_scheduler: {type: rate, max_concurrent_sessions: 4}\n")
    before = listing(tmp_path)
    result = veeksha(*args)
    # A key may be unset on purpose with `null`; a path has no such value.
    is_key = flag not in ("--config", "--output_dir")
    hint = (
        "give a value, `null` to unset the key, or leave the flag out" if is_key else "give a value or leave"
    )
    assert result.refused(f"{flag} is empty; {hint}"), result.err
    assert listing(tmp_path) == before


@pytest.mark.parametrize("command", ["benchmark", "capacity-search"])
def test_an_empty_output_dir_is_refused_not_the_current_directory(
    tmp_path: Path, veeksha: Callable[..., Outcome], command: str
) -> None:
    if command == "benchmark":
        write(tmp_path, GOOD_DRY_RUN + "output_dir: ''\n")
        result = veeksha("--config", "c.veeksha.yml", "--dry-run")
    else:
        write(tmp_path, SEARCH.replace("output_dir: cs", "output_dir: ''"))
        result = veeksha("capacity-search", "--config", "c.veeksha.yml", "--dry-run")
    assert result.refused("config error at output_dir: empty"), result.err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--export-json-schema", "--config", "c.veeksha.yml"], "--export-json-schema needs a value"),
        (["--export-json-schema", "."], "--export-json-schema: . is a directory"),
        (["--export-json-schema", "s.json", "--dry-run"], "--export-json-schema takes no other option"),
        (
            ["--export-json-schema", "s.json", "--client.model", "m"],
            "--export-json-schema takes no other option",
        ),
        (["--export-json-schema", "no/such/s.json"], "no/such does not exist"),
    ],
    ids=["flag-as-file-name", "directory", "with-dry-run", "with-override", "missing-folder"],
)
def test_export_json_schema_refuses_what_it_cannot_write_or_would_ignore(
    tmp_path: Path, veeksha: Callable[..., Outcome], args: list[str], expected: str
) -> None:
    write(tmp_path, GOOD_DRY_RUN)
    before = listing(tmp_path)
    result = veeksha(*args)
    assert result.refused(expected), result.err
    assert listing(tmp_path) == before  # no file named --config, no temporary file


def test_capacity_search_dry_run_checks_the_config_and_prints_the_plan(
    tmp_path: Path, veeksha: Callable[..., Outcome]
) -> None:
    write(tmp_path, SEARCH)
    result = veeksha("capacity-search", "--config", "c.veeksha.yml", "--dry-run")
    assert result.code == 0, result.err
    assert "capacity search config is valid" in result.out
    assert "traffic_scheduler.target_concurrent_sessions" in result.out
    assert "2, 8, 32, 64" in result.out  # the probes while attempts pass
    assert not (tmp_path / "cs").exists()


def test_capacity_search_dry_run_refuses_a_bad_config(
    tmp_path: Path, veeksha: Callable[..., Outcome]
) -> None:
    write(tmp_path, SEARCH.replace("max_value: 64", "max_value: 1"))
    result = veeksha("capacity-search", "--config", "c.veeksha.yml", "--dry-run")
    assert result.refused("start_value"), result.err
    assert not (tmp_path / "cs").exists()


@pytest.mark.parametrize("kind", ["devnull", "devzero", "fifo", "big-file"])
def test_the_config_file_must_be_a_regular_file_of_at_most_1_mib(
    tmp_path: Path, veeksha: Callable[..., Outcome], kind: str
) -> None:
    if kind == "fifo":
        os.mkfifo(tmp_path / "pipe")  # nobody writes to it: reading it would wait forever
    if kind == "big-file":
        (tmp_path / "big.yml").write_text(GOOD_DRY_RUN + "#" * (1 << 20) + "\n")
    path = {"devnull": "/dev/null", "devzero": "/dev/zero", "fifo": "pipe", "big-file": "big.yml"}[kind]
    result = veeksha("--config", path, "--dry-run")
    expected = "bytes; at most 1048576" if kind == "big-file" else "is not a regular file"
    assert result.refused(f"config file {path}", expected), result.err


def fake_run(root: Path) -> Path:
    """The least `compare` takes as a finished run directory."""
    (root / "metrics").mkdir(parents=True)
    (root / "metrics" / "summary_stats.json").write_text("{}")
    (root / "run.json").write_text(orjson.dumps({"contract_version": CONTRACT_VERSION}).decode())
    (root / "config.yml").write_text("seed: 1\n")
    return root


@pytest.mark.parametrize("target", ["afile", "r1", "r1/metrics"])
def test_compare_refuses_an_output_dir_that_is_a_file_or_a_run_directory(
    tmp_path: Path, veeksha: Callable[..., Outcome], target: str
) -> None:
    fake_run(tmp_path / "r1")
    fake_run(tmp_path / "r2")
    (tmp_path / "afile").write_text("keep me\n")
    before = listing(tmp_path)
    result = veeksha("compare", "r1", "r2", "--output_dir", target)
    assert result.refused("--output_dir", target), result.err
    assert listing(tmp_path) == before
    assert (tmp_path / "afile").read_text() == "keep me\n"


def test_simulate_server_refuses_a_port_in_use_naming_port(veeksha: Callable[..., Outcome]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = veeksha("simulate-server", "--port", str(port))
    assert result.refused("--port", f"127.0.0.1:{port}", "already in use"), result.err


def test_simulate_server_refuses_a_host_that_does_not_resolve_naming_host(
    veeksha: Callable[..., Outcome],
) -> None:
    result = veeksha("simulate-server", "--host", "no.such.invalid")
    assert result.refused("--host", "no.such.invalid"), result.err


def test_evaluate_of_a_directory_without_config_yml_says_so_and_changes_nothing(
    tmp_path: Path, veeksha: Callable[..., Outcome]
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "run.json").write_text("{}")
    result = veeksha("evaluate", "a")
    assert result.refused("a has no config.yml: not a veeksha run directory"), result.err
    assert listing(tmp_path / "a") == ["run.json"]


def test_a_simulated_server_host_that_cannot_be_bound_is_a_config_error(
    tmp_path: Path, veeksha: Callable[..., Outcome]
) -> None:
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): an address no interface of this machine has.
    write(
        tmp_path, "server: {type: simulated, host: 192.0.2.1}\nruntime: {max_sessions: 2}\noutput_dir: out\n"
    )
    for extra in (["--dry-run"], []):
        result = veeksha("--config", "c.veeksha.yml", *extra)
        assert result.refused("config error at server.host", "192.0.2.1"), result.err
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("flags", "key"),
    [
        (
            ["--session_generator", "{type: trace, path: '~veeksha-no-such-user/x.jsonl'}"],
            "session_generator.path",
        ),
        (["--client.tokenizer", "~veeksha-no-such-user/t.json"], "client.tokenizer"),
    ],
    ids=["trace", "tokenizer"],
)
def test_a_path_under_an_unknown_users_home_is_a_config_error(
    tmp_path: Path, veeksha: Callable[..., Outcome], flags: list[str], key: str
) -> None:
    write(tmp_path, GOOD_DRY_RUN)
    result = veeksha("--config", "c.veeksha.yml", "--dry-run", *flags)
    assert result.refused(key, "~veeksha-no-such-user"), result.err


# Python hands bytes that are not UTF-8 over as lone surrogates (\udcXX): run.json, which records the
# command line in UTF-8, could not hold them, and the run failed after its server had started.
@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (["--config", "caf\udce9.yml", "--dry-run"], "argument 'caf\\xe9.yml'"),
        (["--config", "c.veeksha.yml", "--output_dir", "out\udce9", "--dry-run"], "argument 'out\\xe9'"),
        (["--config", "c.veeksha.yml", "--dry-run", "--output_dir=out\udce9"], "'--output_dir=out\\xe9'"),
        (["compare", "r\udce9", "r2", "--output_dir", "cmp"], "argument 'r\\xe9'"),
        (["evaluate", "r\udce9"], "argument 'r\\xe9'"),
    ],
    ids=["config", "output-dir", "output-dir-equals", "compare-dir", "evaluate-dir"],
)
def test_an_argument_that_is_not_utf8_is_refused_before_anything_is_made(
    tmp_path: Path, veeksha: Callable[..., Outcome], args: list[str], shown: str
) -> None:
    write(tmp_path, GOOD_DRY_RUN)
    write(tmp_path, GOOD_DRY_RUN, "caf\udce9.yml")
    before = listing(tmp_path)
    result = veeksha(*args)
    assert result.refused(shown, "is not valid UTF-8", "rename"), result.err
    assert listing(tmp_path) == before


def test_an_argument_that_is_not_utf8_is_not_shown_when_it_may_be_a_secret(
    tmp_path: Path, veeksha: Callable[..., Outcome]
) -> None:
    write(tmp_path, GOOD_DRY_RUN)
    result = veeksha("--config", "c.veeksha.yml", "--dry-run", "--client.api_key", "sk-SEKRET\udce9")
    assert result.refused("argument 5", "not shown", "is not valid UTF-8"), result.err
    assert "SEKRET" not in result.err


def test_the_real_command_refuses_a_file_name_that_is_not_utf8(tmp_path: Path) -> None:
    """The bytes as the shell passes them (`--config $'caf\\xe9.yml'`), through sys.argv; refused
    at parsing, so a dry run (which checks everything else a run would) is refused too."""
    write(tmp_path, GOOD_DRY_RUN, "caf\udce9.yml")
    before = listing(tmp_path)
    proc = run_cli(["--config", "caf\udce9.yml", "--dry-run"], cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "argument 'caf\\xe9.yml' is not valid UTF-8" in line, line
    assert listing(tmp_path) == before


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--config", "c.veeksha.yml", "--dryrun"],
            "--dryrun is not a known option or config key (did you mean --dry-run?); see veeksha-run --help",
        ),
        (
            ["--config", "c.veeksha.yml", "--dryrun", "--client.model", "m"],
            "--dryrun is not a known option or config key",
        ),
        (
            ["capacity-search", "--config", "c.veeksha.yml", "--strict"],
            "--strict is an option of veeksha-run and veeksha-run evaluate, not of veeksha-run "
            "capacity-search, nor a config key",
        ),
    ],
    ids=["mistyped", "mistyped-before-a-key", "other-commands-option"],
)
def test_an_option_that_does_not_exist_is_named_as_such(
    tmp_path: Path, veeksha: Callable[..., Outcome], args: list[str], expected: str
) -> None:
    write(tmp_path, GOOD_DRY_RUN)
    result = veeksha(*args)
    assert result.refused(expected), result.err
    assert "needs a value" not in result.err


def test_a_config_key_without_its_value_still_asks_for_the_value(
    tmp_path: Path, veeksha: Callable[..., Outcome]
) -> None:
    write(tmp_path, GOOD_DRY_RUN)
    for key in ("--client.model", "--client.headers.X-Trace", "--evaluators.0.slos"):
        result = veeksha("--config", "c.veeksha.yml", "--dry-run", key)
        assert result.refused(f"{key} needs a value, e.g. {key} VALUE"), result.err


def test_evaluate_of_a_search_directory_without_config_yml_says_what_is_missing(
    tmp_path: Path, veeksha: Callable[..., Outcome]
) -> None:
    """It said "config file cs/config.yml does not exist; check the --config path": evaluate has no
    --config option."""
    (tmp_path / "cs" / "runs").mkdir(parents=True)
    (tmp_path / "cs" / "capacity_search_results.json").write_text('{"id": "s1", "status": "completed"}')
    before = listing(tmp_path / "cs")
    result = veeksha("evaluate", "cs")
    assert result.refused(f"{Path('cs')} has no config.yml"), result.err
    assert "--config" not in result.err
    assert listing(tmp_path / "cs") == before
