"""The files a capacity search lists its attempts in: the attempts CSV is derived from the results
JSON (which carries the status an uploader waits for), so it is written first."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
import veeksha.runner.capacity_results as capacity_results
from veeksha.runner.capacity_results import Attempt, write_results
from veeksha.shared.jsonio import write_json
from veeksha.shared.paths import CAPSEARCH_ATTEMPTS_CSV, CAPSEARCH_RESULTS


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
