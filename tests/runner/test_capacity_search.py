"""Capacity search: its phases without traffic (a fake attempt that passes up to a known capacity),
then real searches against the built-in simulated server, some with a fault in an attempt's evaluation."""

from __future__ import annotations

import csv
import errno
import io
import itertools
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import veeksha.runner.evaluation.evaluate as evaluate_module
import yaml
from veeksha.runner.capacity_results import Attempt, judge
from veeksha.runner.capacity_search import (
    RATE_KNOB,
    SearchRun,
    rounder,
    run_capacity_search,
    search_loop,
    with_value,
)
from veeksha.runner.evaluation.evaluate import NO_PLOTS_ENV
from veeksha.shared.config import (
    MIN_PER_SECOND,
    BenchmarkConfig,
    CapacitySearchConfig,
    ConcurrentTraffic,
    RuntimeConfig,
)
from veeksha.shared.config_loader import dump_config_yaml, load_capacity_search, load_written_config
from veeksha.shared.errors import ConfigError
from veeksha.shared.jsonio import read_json, write_json
from veeksha.shared.paths import CAPSEARCH_ATTEMPTS_CSV, CAPSEARCH_RESULTS, RunPaths
from veeksha.shared.processes import process_start_ticks
from veeksha.shared.records import PID_START_TICKS
from veeksha.shared.schema import admitting, build
from veeksha.uploader.groups import read_capsearch

from tests.runner.helpers import run_cli, serving
from tests.runner.test_crash_recovery import evaluate_as_the_recorded_process
from tests.runner.test_sweep_checks import TwoModels


def run_search(capacity: float, integer: bool, **kw) -> list[float]:
    return search(capacity, integer, **kw)[0]


def search(
    capacity: float, integer: bool, base: BenchmarkConfig | None = None, **kw
) -> tuple[list[float], str]:
    """(the values tried, why the search stopped)."""
    cfg = CapacitySearchConfig(benchmark_config=base or BenchmarkConfig(), **kw)
    rnd = rounder(cfg, integer)
    tried: list[float] = []

    def attempt(value: float) -> Attempt | None:
        value = rnd(value)
        if value in tried or len(tried) >= cfg.max_iterations:
            return None
        tried.append(value)
        return Attempt(len(tried) - 1, value, value <= capacity, "", "completed", 0.0, [])

    reason = search_loop(cfg, attempt, rnd, integer)
    return tried, reason


def test_expands_then_bisects_to_the_precision() -> None:
    tried = run_search(13.37, False, start_value=5, max_value=100, expansion_factor=2, precision=1)
    assert tried[:3] == [5, 10, 20]
    passed = [v for v in tried if v <= 13.37]
    assert max(passed) == 13.3  # the largest passing value at 0.1 precision
    assert len(tried) == len(set(tried))


def test_rounding_never_stalls_phase_one() -> None:
    tried = run_search(4, True, start_value=1, max_value=10, expansion_factor=1.2, precision=0)
    assert tried[:4] == [1, 2, 3, 4]  # 1 × 1.2 rounds to 1: the probe still moves on
    assert 5 in tried and max(v for v in tried if v <= 4) == 4


def test_stops_at_the_maximum_when_everything_passes() -> None:
    tried = run_search(1e9, False, start_value=5, max_value=30, expansion_factor=2, precision=2)
    assert tried == [5, 10, 20, 30]


def test_the_search_says_why_it_stopped() -> None:
    assert search(13.37, False, start_value=5, max_value=100, precision=1)[1] == "converged"
    assert search(1e9, False, start_value=5, max_value=30)[1] == "max_value"
    tried, reason = search(1e9, False, start_value=5, max_value=100, expansion_factor=2, max_iterations=3)
    assert (tried, reason) == ([5, 10, 20], "max_iterations")  # not converged: it says so


def test_rounding_never_probes_above_max_value() -> None:
    """10.006 at precision 2 would round to 10.01; 10.6 sessions to 11."""
    tried = run_search(1e9, False, start_value=5, max_value=10.006, expansion_factor=2, precision=2)
    assert tried == [5, 10] and max(tried) <= 10.006
    tried = run_search(1e9, True, start_value=4, max_value=10.6, expansion_factor=2, precision=0)
    assert tried == [4, 8, 10]


@pytest.mark.parametrize("top", [2.3, 1.15, 0.29, 4.35])
def test_a_max_value_on_the_grid_is_reached_despite_binary_fractions(top: float) -> None:
    """2.3 * 100 is 229.99999999999997: the grid's last value must still be 2.3, not 2.29."""
    cfg = CapacitySearchConfig(
        benchmark_config=BenchmarkConfig(), start_value=0.01, max_value=top, precision=2
    )
    assert rounder(cfg, False)(top) == top


# ---------------------------------------------------------------- which loads a search may try


def concurrency_base(num_drivers: int) -> BenchmarkConfig:
    return BenchmarkConfig(
        traffic_scheduler=ConcurrentTraffic(), runtime=RuntimeConfig(num_drivers=num_drivers)
    )


def test_a_concurrency_search_never_bisects_below_num_drivers() -> None:
    """Each driver needs a session of its own: 1 session on 2 drivers left one with none, and hung."""
    tried, _ = search(1, True, base=concurrency_base(2), start_value=4, max_value=8, precision=0)
    assert tried == [4, 2]  # 4 and 2 fail; 1 would be the next midpoint, and is never tried


@pytest.mark.parametrize("precision", [6, 5, 2])
def test_a_rate_search_that_always_fails_stops_at_the_smallest_valid_rate(
    precision: int, tmp_path: Path
) -> None:
    """Halving from 0.01 at precision 6 reached 1e-06, below the smallest arrival_rate a config takes
    (MIN_PER_SECOND): that attempt's config.yml was refused by `veeksha-run evaluate`. Every attempt's
    config, written as a run writes it, loads back."""
    tried, _ = search(0, False, start_value=0.01, max_value=1, precision=precision, max_iterations=30)
    assert min(tried) == max(MIN_PER_SECOND, 10**-precision)
    for i, value in enumerate(tried):
        written = tmp_path / f"config-{i}.yml"
        written.write_text(dump_config_yaml(with_value(BenchmarkConfig(), value)))
        assert load_written_config(written).traffic_scheduler.interval_generator.arrival_rate == value


def test_a_concurrency_search_above_the_largest_concurrency_is_refused() -> None:
    """Its attempts set target_concurrent_sessions without the config's bound: 10**9 sessions."""
    with pytest.raises(ConfigError, match=r"max_value: 1000000000\.0 is not allowed; a concurrency search"):
        with admitting():  # a new search (load_capacity_search); a config.yml read back is not refused
            build(
                CapacitySearchConfig,
                {"max_value": 10**9, "benchmark_config": {"traffic_scheduler": {"type": "concurrent"}}},
            )


# ---------------------------------------------------------------- real searches, simulated server


def write_search(
    tmp: Path,
    *,
    ttfc_slo: float | None = 5.0,
    traffic: dict[str, Any] | None = None,
    runtime: dict[str, Any] | None = None,
    **search_keys: Any,
) -> Path:
    """A search config on the simulated server: `value` sessions a second (fixed intervals) for a
    second from 4 up, SLO `P99 TTFC <= ttfc_slo` (None: no SLO at all)."""
    evaluator: dict[str, Any] = {"type": "performance"}
    if ttfc_slo is not None:
        evaluator["slos"] = [{"name": "P99 TTFC", "metric": "ttfc", "percentile": 0.99, "value": ttfc_slo}]
    config = {
        "output_dir": str(tmp / "out"),
        "start_value": 4,
        "max_value": 16,
        "expansion_factor": 2,
        "max_iterations": 3,
        "precision": 0,
        **search_keys,
        "benchmark_config": {
            "server": {"type": "simulated"},
            "traffic_scheduler": traffic
            or {"type": "rate", "interval_generator": {"type": "fixed", "arrival_rate": 4}},
            "session_generator": {
                "type": "synthetic",
                "channels": [{"type": "text", "body_length_generator": {"type": "fixed", "value": 50}}],
                "output_spec": {"text": {"output_length_generator": {"type": "fixed", "value": 8}}},
            },
            "evaluators": [evaluator],
            "runtime": {"benchmark_timeout": 1, **(runtime or {})},
        },
    }
    path = tmp / "search.veeksha.yml"
    path.write_text(yaml.safe_dump(config))
    return path


# What goes wrong in an attempt's evaluation: given the real evaluate_run and the run directory.
Fault = Callable[[Callable[..., Any], Path], None]


def evaluation_error(evaluate: Callable[..., Any], run_dir: Path) -> None:
    raise RuntimeError("injected evaluation failure")


def slo_results_lost(evaluate: Callable[..., Any], run_dir: Path) -> None:
    """The metrics are written, then the disk fills up: slo_results.json is not there."""
    evaluate(run_dir)
    RunPaths(run_dir).slo_results.unlink()
    raise OSError(errno.ENOSPC, "No space left on device")


def interrupted(evaluate: Callable[..., Any], run_dir: Path) -> None:
    raise KeyboardInterrupt


@contextmanager
def faulty_evaluation(at: int, fault: Fault) -> Iterator[None]:
    """The runner's evaluation of its `at`-th run (0-based) goes wrong as `fault` says."""
    real = evaluate_module.evaluate_run
    calls = itertools.count()

    def evaluate_run(run_dir: Path, **kwargs: Any) -> Any:
        if next(calls) == at:
            fault(real, Path(run_dir))
        return real(run_dir, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluate_module, "evaluate_run", evaluate_run)
        mp.setenv(NO_PLOTS_ENV, "1")
        yield


@dataclass
class Search:
    exit_code: int
    stdout: str
    root: Path

    @property
    def results(self) -> dict[str, Any]:
        return read_json(self.root / CAPSEARCH_RESULTS)

    @property
    def attempts_csv(self) -> list[dict[str, str]]:
        with (self.root / CAPSEARCH_ATTEMPTS_CSV).open(newline="") as f:
            return list(csv.DictReader(f))

    def attempt_dir(self, iteration: int) -> Path:
        return self.root / self.results["history"][iteration]["run_dir"]


def run_search_with_fault(config: Path, at: int, fault: Fault) -> Search:
    """The search, in this process (so that its evaluation can be made to fail)."""
    out = io.StringIO()
    with faulty_evaluation(at, fault), redirect_stdout(out):
        code = run_capacity_search(config, [])
    (root,) = (config.parent / "out").iterdir()
    return Search(code, out.getvalue(), root)


def evaluate_cli(run_dir: Path) -> subprocess.CompletedProcess[str]:
    """`veeksha-run evaluate` of a killed search or attempt: it exits 1, as for any crashed run."""
    proc = run_cli(["evaluate", str(run_dir)], cwd=run_dir.parent)
    assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stderr
    return proc


def copy_search(found: Search, tmp: Path) -> Search:
    root = Path(shutil.copytree(found.root, tmp / found.root.name))
    return Search(found.exit_code, found.stdout, root)


# An attempt whose evaluation failed has no verdict: judged FAIL it steered the search down (and the
# search then said no attempt had a successful request); with its SLO verdicts lost it PASSED.
NO_VERDICT_CASES = [
    pytest.param(evaluation_error, 5.0, "pass", id="evaluation-error"),
    pytest.param(slo_results_lost, 0.000001, "fail", id="slo-results-lost"),
]


@pytest.mark.parametrize(("fault", "ttfc_slo", "true_verdict"), NO_VERDICT_CASES)
def test_an_attempt_without_an_evaluation_stops_the_search_without_a_verdict(
    tmp_path: Path, fault: Fault, ttfc_slo: float, true_verdict: str
) -> None:
    found = run_search_with_fault(write_search(tmp_path, ttfc_slo=ttfc_slo), 0, fault)
    assert found.exit_code == 1
    (attempt,) = found.results["history"]  # nothing tried after it: the search cannot steer
    assert (attempt["verdict"], attempt["passed"], attempt["status"]) == ("unknown", None, "completed")
    assert found.results["status"] == "failed" and found.results["stop_reason"] == "evaluation_failed"
    assert found.results["best_value"] is None
    attempt_dir = found.attempt_dir(0)
    assert f"veeksha-run evaluate {attempt_dir}" in found.stdout
    assert "no attempt had a successful request" not in found.stdout
    # `veeksha-run evaluate` on the attempt gives it its verdict, in the search's files too.
    evaluate_cli(attempt_dir)
    assert found.results["history"][0]["verdict"] == true_verdict
    assert found.attempts_csv[0]["verdict"] == true_verdict
    assert found.results["status"] == "failed"  # what the search itself did is unchanged


@pytest.fixture(scope="module")
def interrupted_search(tmp_path_factory: pytest.TempPathFactory) -> Search:
    """A search Ctrl-C'd while evaluating its second attempt (the first passed)."""
    tmp = tmp_path_factory.mktemp("interrupted")
    return run_search_with_fault(write_search(tmp), 1, interrupted)


def test_an_attempt_interrupted_in_its_evaluation_is_in_the_results(interrupted_search: Search) -> None:
    results = interrupted_search.results
    assert interrupted_search.exit_code == 130 and results["status"] == "interrupted"
    assert results["iterations_run"] == 2
    assert [(h["value"], h["verdict"]) for h in results["history"]] == [(4, "pass"), (8, "unknown")]
    assert results["history"][1]["status"] == "completed"  # its run.json: recorded, not evaluated
    assert [row["verdict"] for row in interrupted_search.attempts_csv] == ["pass", "unknown"]


def test_evaluate_on_an_attempt_rejudges_it_in_the_search_results(
    interrupted_search: Search, tmp_path: Path
) -> None:
    found = copy_search(interrupted_search, tmp_path)
    evaluate_cli(found.attempt_dir(1))
    results = found.results
    assert [h["verdict"] for h in results["history"]] == ["pass", "pass"]
    assert (results["best_value"], results["best_run_dir"]) == (8, results["history"][1]["run_dir"])
    assert [row["passed"] for row in found.attempts_csv] == ["True", "True"]
    assert results["status"] == "interrupted"  # the search did not go on


def test_an_attempt_whose_slo_results_are_missing_has_no_verdict(
    interrupted_search: Search, tmp_path: Path
) -> None:
    """Evaluated (run.json has finished_at), SLOs configured, but no slo_results.json: not a pass."""
    run_dir = Path(shutil.copytree(interrupted_search.attempt_dir(0), tmp_path / "attempt"))
    assert judge(run_dir, max_error_rate=0.05).verdict == "pass"
    RunPaths(run_dir).slo_results.unlink()
    assert judge(run_dir, max_error_rate=0.05).verdict == "unknown"


def test_each_attempt_draws_its_own_sessions_from_the_search_seed(interrupted_search: Search) -> None:
    # With one seed every attempt sent the same prompts: a server with a prefix cache answered the
    # later (higher-load) attempts from its cache, and the search found more capacity than there is.
    base = yaml.safe_load((interrupted_search.root / "config.yml").read_text())["benchmark_config"]["seed"]
    seeds = [
        yaml.safe_load((interrupted_search.attempt_dir(i) / "config.yml").read_text())["seed"] for i in (0, 1)
    ]
    assert seeds == [base, base + 1]


def test_the_results_name_the_search_process(interrupted_search: Search) -> None:
    """So that `evaluate` can tell a search that was killed from one still going."""
    results = interrupted_search.results
    assert (results["host"], results["pid"]) == (socket.gethostname(), os.getpid())


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    return int(proc.stdout)


def killed_during_attempt_1(found: Search, runner_pid: int) -> None:
    """Make `found` what a SIGKILL during its second attempt leaves: results and the attempt running."""
    write_json(found.root / CAPSEARCH_RESULTS, {**found.results, "status": "running", "pid": runner_pid})
    run_json = found.attempt_dir(1) / "run.json"
    info = read_json(run_json)
    info.pop("evaluation_error", None)
    write_json(run_json, {**info, "status": "running", "finished_at": None, "pid": runner_pid})


def test_evaluate_marks_a_killed_search_crashed_and_uploadable(
    interrupted_search: Search, tmp_path: Path
) -> None:
    found = copy_search(interrupted_search, tmp_path)
    killed_during_attempt_1(found, dead_pid())
    assert read_capsearch(found.root).unfinished is not None
    proc = evaluate_cli(found.attempt_dir(1))
    results = found.results
    assert proc.returncode == 1  # its attempt crashed
    assert results["status"] == "crashed" and "marked crashed" in proc.stdout
    assert [(h["status"], h["verdict"]) for h in results["history"]] == [
        ("completed", "pass"),
        ("crashed", "unknown"),
    ]
    assert read_capsearch(found.root).unfinished is None  # the uploader takes it now


def test_evaluate_on_the_search_directory_finishes_it(interrupted_search: Search, tmp_path: Path) -> None:
    # Killed during attempt 1: the directory itself is evaluated (its unfinished attempt, then the
    # results). A search killed before its first attempt had a directory had no other way out.
    found = copy_search(interrupted_search, tmp_path)
    killed_during_attempt_1(found, dead_pid())
    proc = evaluate_cli(found.root)
    assert "marked crashed" in proc.stdout, proc.stdout
    assert [(h["status"], h["verdict"]) for h in found.results["history"]] == [
        ("completed", "pass"),
        ("crashed", "unknown"),
    ]
    assert read_capsearch(found.root).unfinished is None


def test_evaluate_on_the_directory_of_a_search_killed_before_any_attempt(tmp_path: Path) -> None:
    root = tmp_path / "capsearch-x"
    (root / "runs").mkdir(parents=True)
    write_json(
        root / CAPSEARCH_RESULTS,
        {"id": "s1", "status": "running", "pid": dead_pid(), "host": socket.gethostname()},
    )
    (root / "config.yml").write_text(write_search(tmp_path).read_text())
    proc = evaluate_cli(root)
    assert "marked crashed" in proc.stdout and read_json(root / CAPSEARCH_RESULTS)["status"] == "crashed"
    assert read_json(root / CAPSEARCH_RESULTS)["iterations_run"] == 0


def test_evaluate_leaves_the_results_of_a_search_still_running_to_it(
    interrupted_search: Search, tmp_path: Path
) -> None:
    found = copy_search(interrupted_search, tmp_path)
    # A live process named like the runner stands for the search still going on this host.
    runner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "veeksha-run"])
    try:
        killed_during_attempt_1(found, dead_pid())
        owner = {"pid": runner.pid, PID_START_TICKS: process_start_ticks(runner.pid)}
        write_json(found.root / CAPSEARCH_RESULTS, {**found.results, **owner})
        before = found.results
        evaluate_cli(found.attempt_dir(1))
        assert found.results == before  # the search writes its results itself, from the attempts on disk
    finally:
        runner.kill()
        runner.wait()


# ---------------------------------------------------------------- refused before anything is made


def refused(config: Path, *flags: str, env: dict[str, str] | None = None) -> str:
    """The one line `veeksha-run capacity-search` exits 2 with; nothing was made."""
    proc = run_cli(
        ["capacity-search", "--config", str(config), *flags], cwd=config.parent, env=env, timeout=60
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert not (config.parent / "out").exists()
    (line,) = proc.stderr.strip().splitlines()
    return line


@pytest.mark.parametrize("flags", [["--dry-run"], []], ids=["dry-run", "search"])
def test_a_search_without_slos_is_refused(tmp_path: Path, flags: list[str]) -> None:
    """Without an SLO every load passed: the search reported max_value as the capacity."""
    line = refused(write_search(tmp_path, ttfc_slo=None), *flags)
    assert "benchmark_config.evaluators" in line and "slos" in line


@pytest.mark.parametrize("flags", [["--dry-run"], []], ids=["dry-run", "search"])
def test_a_concurrency_search_starting_below_num_drivers_is_refused(tmp_path: Path, flags: list[str]) -> None:
    """One session on two drivers left a driver with none, and the attempt hung spinning a core."""
    traffic = {"type": "concurrent", "target_concurrent_sessions": 2}  # the search sets it per attempt
    config = write_search(tmp_path, start_value=1, traffic=traffic, runtime={"num_drivers": 2})
    line = refused(config, *flags)
    assert "start_value" in line and "runtime.num_drivers" in line


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (
            {"start_value": 0.001, "precision": 2},
            "0.001 is not allowed; a rate search at precision 2 needs >= 0.01",
        ),
        (
            {"start_value": 1e-6, "precision": 6},
            "1e-06 is not allowed; a rate search at precision 6 needs >= 2e-06",
        ),
    ],
    ids=["precision-2", "precision-6"],
)
def test_a_start_value_below_the_grid_is_refused_by_the_config_check(
    tmp_path: Path, keys: dict[str, Any], message: str
) -> None:
    """It would round to 0 (a rate of nothing): the config's own check names the smallest value
    allowed (CapacitySearchConfig), before the search's checks run."""
    line = refused(write_search(tmp_path, **keys), "--dry-run")
    assert line == f"veeksha-run: config error at start_value: {message}", line


def dry_run(config: Path, *flags: str, env: dict[str, str] | None = None) -> str:
    """What `veeksha-run capacity-search --dry-run` prints for a config it accepts."""
    proc = run_cli(
        ["capacity-search", "--config", str(config), "--dry-run", *flags], cwd=config.parent, env=env
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_a_concurrency_search_starting_at_num_drivers_is_accepted(tmp_path: Path) -> None:
    """docs/capacity-search.md: start_value >= num_drivers is enough. The benchmark config's own
    target_concurrent_sessions (1 by default), which every attempt replaces, was checked instead."""
    config = write_search(tmp_path, traffic={"type": "concurrent"}, runtime={"num_drivers": 2})
    assert "probes while attempts pass: 4, 8, 16" in dry_run(config)


def test_a_rate_search_still_gives_each_driver_a_share_of_max_concurrent_sessions(tmp_path: Path) -> None:
    """The search does not set a rate search's max_concurrent_sessions: it is checked as written."""
    traffic = {
        "type": "rate",
        "max_concurrent_sessions": 1,
        "interval_generator": {"type": "fixed", "arrival_rate": 4},
    }
    line = refused(write_search(tmp_path, traffic=traffic, runtime={"num_drivers": 2}), "--dry-run")
    assert "benchmark_config.runtime.num_drivers: 2 is not allowed" in line, line


# No environment fallback: without a server section the endpoint is the config's own.
NO_ENV_ENDPOINT = {"OPENAI_API_BASE": ""}


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            ["--benchmark_config.server", "null"],
            "config error at benchmark_config.client.api_base: not set; pass "
            "--benchmark_config.client.api_base URL, set OPENAI_API_BASE, or add a server section "
            "(e.g. --benchmark_config.server.type simulated)",
        ),
        (
            ["--benchmark_config.client.tokenizer", "missing.json"],
            "benchmark_config.client.tokenizer: 'missing.json' does not exist",
        ),
        (
            ["--benchmark_config.session_generator", "{type: trace, path: missing.jsonl}"],
            "benchmark_config.session_generator.path: trace file 'missing.jsonl' does not exist",
        ),
        (
            ["--benchmark_config.runtime.num_drivers", "100000"],
            "config error at benchmark_config.runtime.num_drivers: 100000 is not allowed on",
        ),
    ],
    ids=["api_base", "tokenizer", "trace", "num_drivers"],
)
def test_errors_about_the_benchmark_config_name_its_keys_under_benchmark_config(
    tmp_path: Path, flags: list[str], expected: str
) -> None:
    """The checks a run makes name a run's keys (`client.api_base`, `--client.api_base URL`); in a
    search they are under benchmark_config, and `--client.api_base` was refused as an unknown key."""
    line = refused(write_search(tmp_path), "--dry-run", *flags, env=NO_ENV_ENDPOINT)
    assert expected in line, line
    assert " client." not in line and "--client." not in line and " runtime." not in line, line


def test_the_flag_a_search_error_suggests_is_one_the_search_takes(tmp_path: Path) -> None:
    config = write_search(tmp_path)
    no_server = ["--benchmark_config.server", "null"]
    line = refused(config, "--dry-run", *no_server, env=NO_ENV_ENDPOINT)
    flag = next(word for word in line.split() if word.startswith("--") and "api_base" in word)
    dry_run(config, *no_server, flag, "http://127.0.0.1:8000/v1", env=NO_ENV_ENDPOINT)


def test_a_search_on_an_endpoint_with_several_models_is_refused_before_its_directory(tmp_path: Path) -> None:
    """Which model to load is known before anything is made, as for a single run: the search made
    capsearch-*/ with its config and results, then exited 2 suggesting --client.model."""
    with serving(TwoModels) as url:
        line = refused(
            write_search(tmp_path),
            "--benchmark_config.server",
            "null",
            "--benchmark_config.client.api_base",
            url,
        )
    assert "config error at benchmark_config.client.model: not set, and the server lists 2 models" in line
    assert line.endswith("pass --benchmark_config.client.model NAME"), line


def test_a_search_whose_own_server_lists_no_model_names_the_flag_under_benchmark_config(
    tmp_path: Path,
) -> None:
    """A server the search starts itself is asked once it runs (the attempt's directory is not made
    yet): the search then stops, with the flag a capacity search takes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = {
        "type": "command",
        "command": [sys.executable, "-m", "veeksha.runner.simserver.server", "--port", str(port)],
        "ready_url": f"http://127.0.0.1:{port}/health",
        "api_base": f"http://127.0.0.1:{port}/no-models",
    }
    config = write_search(tmp_path)
    proc = run_cli(
        [
            "capacity-search",
            "--config",
            str(config),
            "--benchmark_config.server",
            orjson.dumps(server).decode(),
        ],
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "config error at benchmark_config.client.model: not set, and" in line, line
    assert line.endswith("pass --benchmark_config.client.model NAME"), line


def test_a_seed_whose_last_attempt_would_not_fit_in_64_bits_is_refused(tmp_path: Path) -> None:
    """Attempt i runs with seed + i: the last attempt's config.yml held a seed that `evaluate`
    then refused to read back ("integers must fit in 64 bits")."""
    config = write_search(tmp_path, max_iterations=3)
    line = refused(config, "--dry-run", f"--benchmark_config.seed={2**63 - 1}")
    assert f"config error at benchmark_config.seed: {2**63 - 1} is not allowed with max_iterations 3" in line
    assert f"use a seed <= {2**63 - 3}" in line, line
    dry_run(config, f"--benchmark_config.seed={2**63 - 3}")  # the last attempt's seed is 2**63 - 1


def test_a_benchmark_config_output_dir_is_said_to_be_unused(tmp_path: Path) -> None:
    """The attempts are written under the search's own directory: a benchmark_config.output_dir was
    never used, even one whose parent does not exist, and nothing said so. Said, not refused: a
    benchmark_config `!include`d from a run's own config file sets one."""
    out = dry_run(write_search(tmp_path), "--benchmark_config.output_dir", "no/such/dir")
    assert "note: benchmark_config.output_dir 'no/such/dir' is not used" in out, out
    assert "note:" not in dry_run(write_search(tmp_path))


# ---------------------------------------------------------------- the target load, applied or not


def write_limited_search(tmp: Path) -> Path:
    """A rate search whose client runs one session at a time (max_concurrent_sessions: 1) on a server
    taking ~0.17 s a session: about 6 sessions a second can be sent. 2/s is; 16/s is not (the rest
    wait in the client, where TTFC, measured from pick-up, cannot see them)."""
    path = write_search(
        tmp,
        ttfc_slo=0.3,
        traffic={
            "type": "rate",
            "max_concurrent_sessions": 1,
            "interval_generator": {"type": "fixed", "arrival_rate": 1},
        },
        runtime={"benchmark_timeout": 2},
        start_value=2,
        max_value=16,
        expansion_factor=8,
        max_iterations=2,
    )
    config = yaml.safe_load(path.read_text())
    config["benchmark_config"]["server"] = {"type": "simulated", "precise": {"ttft": 0.01, "itl": 0.01}}
    config["benchmark_config"]["session_generator"]["output_spec"]["text"]["output_length_generator"] = {
        "type": "fixed",
        "value": 16,
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def limited_search(tmp_path_factory: pytest.TempPathFactory) -> Search:
    tmp = tmp_path_factory.mktemp("limited")
    config = write_limited_search(tmp)
    proc = run_cli(["capacity-search", "--config", str(config)], cwd=tmp, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (root,) = (tmp / "out").iterdir()
    return Search(proc.returncode, proc.stdout, root)


def test_an_attempt_whose_target_load_was_not_applied_fails(limited_search: Search) -> None:
    """Its SLOs were met by the few sessions sent (TTFC counts from the client's pick-up), and it
    passed: the search reported a capacity of max_value for a client that sent a third of it."""
    results = limited_search.results
    assert [(h["value"], h["verdict"]) for h in results["history"]] == [(2, "pass"), (16, "fail")]
    reached, short = results["history"]
    assert reached["reason"] is None  # the load it was asked for was applied: judged on its SLOs
    assert short["reason"].startswith("target load not reached: session rate "), short["reason"]
    assert "of the 16/s target" in short["reason"], short["reason"]
    assert short["slo_results"] and all(s["met"] for s in short["slo_results"])  # its SLOs alone passed
    assert (results["best_value"], results["stop_reason"]) == (2, "max_iterations")
    assert [row["verdict"] for row in limited_search.attempts_csv] == ["pass", "fail"]
    assert limited_search.attempts_csv[1]["reason"] == short["reason"]
    assert f"=16.0 → FAIL ({short['reason']})" in limited_search.stdout, limited_search.stdout


def test_evaluate_judges_an_attempt_short_of_its_load_alike(limited_search: Search, tmp_path: Path) -> None:
    found = copy_search(limited_search, tmp_path)
    before = found.results["history"]
    proc = evaluate_cli(found.attempt_dir(1))
    assert "attempt 1 (arrival_rate=16.0) is now fail" in proc.stdout, proc.stdout
    assert found.results["history"] == before


def health_of(run_dir: Path) -> dict[str, Any]:
    return read_json(RunPaths(run_dir).health_checks_json)


def with_check(run_dir: Path, name: str, **changes: Any) -> None:
    """The attempt's health_checks.json with check `name` changed so."""
    health = health_of(run_dir)
    for check in health["checks"]:
        if check["name"] == name:
            check.update(changes)
    write_json(RunPaths(run_dir).health_checks_json, health)


def test_a_failed_load_check_fails_an_attempt_and_a_missing_one_leaves_no_verdict(
    limited_search: Search, tmp_path: Path
) -> None:
    run_dir = Path(shutil.copytree(limited_search.attempt_dir(0), tmp_path / "attempt"))
    assert judge(run_dir, max_error_rate=None).verdict == "pass"
    with_check(run_dir, "session_dispatch_rate", result="FAILED", detail="", metrics={"num_sessions": 1})
    failed = judge(run_dir, max_error_rate=None)
    assert (failed.verdict, failed.reason) == (
        "fail",
        "target load not reached: session_dispatch_rate failed",
    )
    RunPaths(run_dir).health_checks_json.unlink()  # a full disk: no verdict on the load, not a pass
    unknown = judge(run_dir, max_error_rate=None)
    assert unknown.verdict == "unknown" and "health_checks.json is missing" in str(unknown.why_unknown)


def test_a_concurrency_attempt_short_of_its_sessions_fails(limited_search: Search, tmp_path: Path) -> None:
    """For a concurrency search the concurrency check says whether its sessions were in flight."""
    run_dir = Path(shutil.copytree(limited_search.attempt_dir(0), tmp_path / "attempt"))
    with_check(
        run_dir,
        "concurrency",
        result="FAILED",
        metrics={
            "mean_concurrent_sessions": 2.5,
            "max_concurrent_sessions": 4,
            "target_concurrent_sessions": 8,
        },
    )
    failed = judge(run_dir, max_error_rate=None)
    assert failed.verdict == "fail"
    assert failed.reason == "target load not reached: 2.5 concurrent sessions on average of the 8 targeted"


def test_a_search_directory_moved_between_attempts_is_not_made_again(tmp_path: Path) -> None:
    """The next attempt's run made `runs/` again (with its parents): a search directory of one attempt,
    no config.yml, beside the moved one."""
    search = load_capacity_search(write_search(tmp_path))
    with redirect_stdout(io.StringIO()):
        run = SearchRun(search, RATE_KNOB)
    run.root.rename(tmp_path / "moved")

    with pytest.raises(FileNotFoundError, match=r"was moved or deleted while in use"):
        run.attempt(4, rounder(search, False))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_an_attempt_above_its_target_rate_passes_and_says_so(tmp_path: Path) -> None:
    """More load than the target does not fail an attempt by itself: if the SLOs held under more, they
    hold at the target. Poisson arrivals at 2/s for 3 s (this seed: 3.94 sessions/s observed) failed
    as "target load not reached: session rate 3.94/s of the 2/s target", and the search reported a
    capacity below its start_value."""
    traffic = {"type": "rate", "interval_generator": {"type": "poisson", "arrival_rate": 1}}
    config = write_search(
        tmp_path,
        ttfc_slo=0.5,
        traffic=traffic,
        runtime={"benchmark_timeout": 3},
        start_value=2,
        max_iterations=1,
    )
    proc = run_cli(["capacity-search", "--config", str(config)], cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (root,) = (tmp_path / "out").iterdir()
    found = Search(proc.returncode, proc.stdout, root)

    (attempt,) = found.results["history"]
    check = next(c for c in health_of(found.attempt_dir(0))["checks"] if c["name"] == "session_dispatch_rate")
    assert (
        check["result"] == "FAILED" and check["metrics"]["observed_rate_per_s"] > 2
    )  # (what the seed gives)
    assert attempt["verdict"] == "pass", attempt
    assert (
        attempt["reason"]
        == f"load above target: {check['metrics']['observed_rate_per_s']:.2f}/s for the 2/s target"
    )
    assert found.results["best_value"] == 2
    assert found.attempts_csv[0]["reason"] == attempt["reason"]
    assert f"=2.0 → PASS ({attempt['reason']})" in proc.stdout, proc.stdout


def test_an_attempt_above_its_target_rate_that_misses_an_slo_fails_on_the_slo(
    limited_search: Search, tmp_path: Path
) -> None:
    run_dir = Path(shutil.copytree(limited_search.attempt_dir(0), tmp_path / "attempt"))
    above = {"observed_rate_per_s": 3.94, "target_rate_per_s": 2, "num_sessions": 12}
    with_check(run_dir, "session_dispatch_rate", result="FAILED", detail="", metrics=above)
    assert (judge(run_dir, None).verdict, judge(run_dir, None).reason) == (
        "pass",
        "load above target: 3.94/s for the 2/s target",
    )
    slo = read_json(RunPaths(run_dir).slo_results)
    slo["all_slos_met"], slo["results"][0]["met"] = False, False
    write_json(RunPaths(run_dir).slo_results, slo)
    missed = judge(run_dir, max_error_rate=None)
    assert (missed.verdict, missed.reason) == (
        "fail",
        "SLO not met: P99 TTFC; load above target: 3.94/s for the 2/s target",
    )


@pytest.mark.parametrize(
    ("mean", "peak", "verdict", "reason"),
    [
        # More sessions than asked, on average and at the peak: the SLOs held under more.
        (
            8.4,
            11,
            "pass",
            "load above target: 8.4 concurrent sessions on average, up to 11, for the 8 targeted",
        ),
        # As many on average, more at times: more load than asked at times, never less on average.
        (8.0, 9, "pass", "load above target: 8 concurrent sessions on average, up to 9, for the 8 targeted"),
        # Fewer on average, more at times: not the load asked for.
        (
            7.9,
            10,
            "fail",
            "target load not held: 7.9 concurrent sessions on average, up to 10, for the 8 targeted",
        ),
        (2.5, 4, "fail", "target load not reached: 2.5 concurrent sessions on average of the 8 targeted"),
    ],
)
def test_a_concurrency_attempt_fails_only_below_its_target(
    limited_search: Search, tmp_path: Path, mean: float, peak: int, verdict: str, reason: str
) -> None:
    run_dir = Path(shutil.copytree(limited_search.attempt_dir(0), tmp_path / "attempt"))
    metrics = {
        "mean_concurrent_sessions": mean,
        "max_concurrent_sessions": peak,
        "target_concurrent_sessions": 8,
    }
    with_check(run_dir, "concurrency", result="FAILED", metrics=metrics)
    judged = judge(run_dir, max_error_rate=None)
    assert (judged.verdict, judged.reason) == (verdict, reason)


def test_evaluate_on_an_attempt_named_from_inside_runs_marks_the_killed_search_crashed(
    interrupted_search: Search, tmp_path: Path
) -> None:
    """`cd capsearch-*/runs && veeksha-run evaluate <attempt>`: the attempt's parents were those of a
    relative path (`.`), so its search was not found; the attempt was marked crashed, the search left
    `running` for ever."""
    found = copy_search(interrupted_search, tmp_path)
    killed_during_attempt_1(found, dead_pid())
    attempt = found.attempt_dir(1)
    proc = run_cli(["evaluate", attempt.name], cwd=attempt.parent)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # its attempt crashed
    assert f"capacity search {found.root} was left running by a process that died" in proc.stdout
    assert found.results["status"] == "crashed"
    assert [h["status"] for h in found.results["history"]] == ["completed", "crashed"]


def test_a_killed_search_whose_pid_is_now_evaluates_own_is_marked_crashed(
    interrupted_search: Search, tmp_path: Path
) -> None:
    """It was "capacity search S is still running (process N)", exit 2, for ever: N was `evaluate`
    itself."""
    found = copy_search(interrupted_search, tmp_path)
    killed_during_attempt_1(found, dead_pid())
    proc = evaluate_as_the_recorded_process(found.root, found.root / CAPSEARCH_RESULTS)

    assert "still running" not in proc.stderr and "marked crashed" in proc.stdout, proc.stdout + proc.stderr
    assert found.results["status"] == "crashed"


def test_a_live_process_given_the_searchs_pid_later_is_not_the_search(
    interrupted_search: Search, tmp_path: Path
) -> None:
    """Results that record when their process started (pid_start_ticks): a live veeksha process with
    that pid, started at another time, is another process, and the search is gone."""
    found = copy_search(interrupted_search, tmp_path)
    later = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "veeksha-run"])
    try:
        killed_during_attempt_1(found, dead_pid())
        started = process_start_ticks(later.pid)
        assert started is not None
        write_json(
            found.root / CAPSEARCH_RESULTS,
            {**found.results, "pid": later.pid, "pid_start_ticks": started - 1},
        )
        proc = evaluate_cli(found.root)
    finally:
        later.kill()
        later.wait()
    assert "marked crashed" in proc.stdout, proc.stdout + proc.stderr
    assert found.results["status"] == "crashed"


def test_an_attempt_that_sent_no_request_has_no_verdict_and_says_to_lengthen_the_run(tmp_path: Path) -> None:
    """Fixed intervals at 0.5/s in a 1 s run: the first arrival (at 2 s) is after the run's end, so no
    request is sent. It was judged FAIL "no request succeeded", used up an attempt, and the search
    bisected below it to a wrong answer ("converged")."""
    config = write_search(tmp_path, start_value=0.5, max_value=2, precision=1)
    proc = run_cli(["capacity-search", "--config", str(config)], cwd=tmp_path, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (root,) = (tmp_path / "out").iterdir()
    found = Search(proc.returncode, proc.stdout, root)

    (attempt,) = found.results["history"]  # the search cannot steer on it: it stops there
    reason = (
        "no request was sent: benchmark_config.runtime.benchmark_timeout (1 s) is too short for "
        "traffic_scheduler.interval_generator.arrival_rate=0.5; lengthen it"
    )
    assert (attempt["verdict"], attempt["passed"], attempt["reason"]) == ("unknown", None, reason)
    assert found.results["status"] == "failed" and found.results["stop_reason"] == "evaluation_failed"
    assert found.attempts_csv[0]["reason"] == reason
    assert "=0.5 → NO VERDICT" in proc.stdout and reason in proc.stdout, proc.stdout
    # What to do is to lengthen the run: `evaluate` would judge the attempt alike.
    assert "veeksha-run evaluate" not in proc.stdout
    assert "no attempt had a successful request" not in proc.stdout
    assert judge(found.attempt_dir(0), None).reason == reason


def test_a_search_run_again_against_a_server_still_up_stops_without_a_verdict(tmp_path: Path) -> None:
    """The second search's attempt repeats the first's seed + i: the server held every prompt, its
    TTFC came from the cache, and it passed (a capacity the search never saw). Its prefix_cache health
    check failed: no verdict, and the search stops there saying what to change (`evaluate` would judge
    it alike)."""
    from tests.runner.simserver.test_standalone import simulate_server

    config = write_search(tmp_path, max_iterations=1)
    with simulate_server("--prefix_cache", "true") as url:
        external = yaml.safe_load(config.read_text())
        del external["benchmark_config"]["server"]
        external["benchmark_config"]["client"] = {"api_base": url, "model": "sim"}
        config.write_text(yaml.safe_dump(external))
        runs = [
            run_cli(["capacity-search", "--config", str(config), "--output_dir", name], cwd=tmp_path)
            for name in ("first", "again")
        ]
    assert runs[0].returncode == 0, runs[0].stdout + runs[0].stderr
    assert runs[1].returncode == 1, runs[1].stdout + runs[1].stderr
    (root,) = (tmp_path / "again").iterdir()
    results = Search(1, runs[1].stdout, root).results
    (attempt,) = results["history"]
    assert (attempt["verdict"], attempt["passed"]) == ("unknown", None)
    assert attempt["reason"].startswith("its prefix_cache health check failed: the server found ")
    assert results["status"] == "failed" and results["stop_reason"] == "evaluation_failed"
    said = runs[1].stdout
    assert "restart the server (or reset its prefix cache), or set another benchmark_config.seed" in said
    assert "veeksha-run evaluate" not in said
