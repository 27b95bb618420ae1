"""The files a capacity search lists its attempts in: the attempts CSV is derived from the results
JSON (which carries the status an uploader waits for), so it is written first."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path
from typing import Any

import pytest
import veeksha.runner.capacity_results as capacity_results
from veeksha.runner.capacity_results import Attempt, judge, write_results
from veeksha.shared.jsonio import read_json, write_json
from veeksha.shared.paths import CAPSEARCH_ATTEMPTS_CSV, CAPSEARCH_RESULTS, RunPaths

from tests.runner.test_capacity_search import evaluation_error, run_search_with_fault, write_search


def attempt(iteration: int, value: float, passed: bool | None) -> Attempt:
    return Attempt(iteration, value, passed, f"runs/run-{iteration}", "completed", 0.0, [])


def test_the_attempts_csv_is_written_before_the_results_it_is_derived_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever sees the results' new state (the search ended, one more attempt) finds every attempt
    it lists in the CSV already: at each write of the results, the CSV is checked on disk."""
    seen: list[list[tuple[str, str, str]]] = []

    def checking_write_json(path: Path, obj: Any) -> None:
        if path.name == CAPSEARCH_RESULTS:
            wanted = [(str(a["iteration"]), str(a["value"]), a["verdict"]) for a in obj["history"]]
            rows = csv.DictReader(io.StringIO((path.parent / CAPSEARCH_ATTEMPTS_CSV).read_text()))
            assert [(r["iteration"], r["value"], r["verdict"]) for r in rows] == wanted
            seen.append(wanted)
        write_json(path, obj)

    monkeypatch.setattr(capacity_results, "write_json", checking_write_json)
    history: list[Attempt] = []
    for a in (attempt(0, 4, True), attempt(1, 8, False), attempt(2, 6, None)):
        history.append(a)
        write_results(tmp_path, {"id": "s1", "status": "running"}, history)
    write_results(tmp_path, {"id": "s1", "status": "completed"}, history)

    assert [len(rows) for rows in seen] == [1, 2, 3, 3]
    assert seen[-1] == [("0", "4", "pass"), ("1", "8", "fail"), ("2", "6", "unknown")]


# ---------------------------------------------------------------- judging an attempt's directory


@pytest.fixture(scope="module")
def attempt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory of a real one-attempt search (simulated server), which passed."""
    tmp = tmp_path_factory.mktemp("search")
    found = run_search_with_fault(write_search(tmp, max_iterations=1), -1, evaluation_error)  # (no fault)
    return found.attempt_dir(0)


CACHED = (
    "the server found 98% of prompt tokens in its cache where the config shares 0%: it had these "
    "prompts already (an earlier run with the same seed against this server?); set another `seed`, "
    "or restart the server / reset its prefix cache, then run again"
)


def with_prefix_cache_check(attempt_dir: Path, tmp_path: Path, result: str) -> Path:
    """A copy of the attempt whose prefix_cache health check says `result` (as the check writes it)."""
    run_dir = Path(shutil.copytree(attempt_dir, tmp_path / attempt_dir.name))
    path = RunPaths(run_dir).health_checks_json
    health = read_json(path)
    checks = [c for c in health["checks"] if c["name"] != "prefix_cache"]
    detail = CACHED if result == "FAILED" else ""
    metrics = {"server_prefix_cache_hit_fraction": 0.98, "expected_prefix_cache_hit_fraction": 0.0}
    checks.append({"name": "prefix_cache", "result": result, "metrics": metrics, "detail": detail})
    write_json(path, {**health, "checks": checks})
    return run_dir


def test_an_attempt_answered_from_the_servers_cache_has_no_verdict(attempt_dir: Path, tmp_path: Path) -> None:
    """A search run again against a server still up repeats seed + i: the server held every prompt,
    TTFC came from its cache, the attempt passed, and the search reported a capacity it never saw."""
    assert judge(attempt_dir, max_error_rate=0.05).verdict == "pass"
    a = judge(with_prefix_cache_check(attempt_dir, tmp_path, "FAILED"), max_error_rate=0.05)
    assert (a.verdict, a.passed) == ("unknown", None)
    assert a.reason == f"its prefix_cache health check failed: {CACHED}"
    assert a.cache_answered and not a.nothing_sent


def test_a_prefix_cache_check_that_passed_leaves_the_verdict(attempt_dir: Path, tmp_path: Path) -> None:
    a = judge(with_prefix_cache_check(attempt_dir, tmp_path, "PASSED"), max_error_rate=0.05)
    assert (a.verdict, a.reason, a.cache_answered) == ("pass", None, False)
