"""What the run does with its driver links around the recording: every link it made is stopped,
whatever fails; and a driver killed by a signal is named with it, wherever it ran."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from veeksha.runner import benchmark
from veeksha.runner.recorder import RecordingResult
from veeksha.shared.config import BenchmarkConfig
from veeksha.shared.paths import RunPaths
from veeksha.shared.records import RUN_FAILED


class Link:
    """A DriverLink that never runs a driver: it records how it was stopped."""

    start_margin_s = 0.0
    where = "ray node 1234abcd at 10.0.0.5 (node-a)"
    shares_clock = False

    def __init__(self, driver_id: int, exit_code: int | None = None) -> None:
        self.driver_id = driver_id
        self.exit_code = exit_code
        self.stops: list[float] = []

    def stop(self, wait_s: float) -> None:
        self.stops.append(wait_s)


def test_every_link_is_stopped_when_the_recording_cannot_be_set_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recorder's files are opened after the drivers' actors exist: a run directory where
    timeseries.csv cannot be written left the actors running on the cluster."""
    links = [Link(0), Link(1)]
    monkeypatch.setattr(benchmark, "_driver_links", lambda cfg, paths: links)
    paths = RunPaths(tmp_path / "run")
    paths.root.mkdir()
    paths.timeseries_csv.parent.write_text("")  # metrics/ is a file: timeseries.csv cannot be made

    with pytest.raises(OSError):
        benchmark._record(BenchmarkConfig(), SimpleNamespace(paths=paths, known_secrets=()), None)  # type: ignore[arg-type]

    assert all(link.stops for link in links)


def failed(driver_id: int, error: str) -> RecordingResult:
    drivers = [
        {"driver_id": driver_id, "status": RUN_FAILED, "error": error, "where": "x", "cpu_seconds": None}
    ]
    return RecordingResult(RUN_FAILED, error, 0, None, 1.0, drivers=drivers)


def test_a_driver_killed_by_a_signal_is_named_with_it_wherever_it_ran() -> None:
    """A Ray driver's exit code came under another attribute's name than a local one's: its SIGKILL
    was never named."""
    error = "the driver process on ray node 1234abcd exited unexpectedly (exit code -9)"
    links: list[Any] = [Link(0, exit_code=-9)]

    (line,) = benchmark.driver_failures(failed(0, error), links)

    assert line.endswith("(exit code -9: killed by SIGKILL)"), line
