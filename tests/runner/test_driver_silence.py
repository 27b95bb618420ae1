"""A driver that stops talking: real driver processes, the real recorder, the simulated server.

The recorder is run here in-process on LocalDriver links, with its start deadline and silence limit
shortened (they are minutes and tens of seconds in a run): a driver stopped with SIGSTOP stands for
one stuck in native code or deadlocked.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from veeksha.runner.driver.dispatcher import Placement
from veeksha.runner.driver.rescue import CrashFiles
from veeksha.runner.drivers import LocalDriver
from veeksha.runner.progress import Progress
from veeksha.runner.recorder import Recorder, RecordingResult
from veeksha.shared.config_loader import build_benchmark_config
from veeksha.shared.paths import RunPaths
from veeksha.shared.records import RUN_COMPLETED, RUN_FAILED, RUN_INTERRUPTED

from tests.runner.helpers import read_jsonl
from tests.runner.simserver.test_standalone import simulate_server

SILENCE_S = 1.5
RATE = {"type": "rate", "interval_generator": {"type": "poisson", "arrival_rate": 20}}
# Every request streams for about 2.5 s: a stop always finds requests in flight.
LONG_REPLIES = {"text": {"output_length_generator": {"type": "fixed", "value": 250}}}


def record(
    tmp_path: Path,
    url: str,
    config: dict[str, Any],
    meanwhile: Callable[[list[LocalDriver], RunPaths], None] = lambda links, paths: None,
    **limits: float,
) -> tuple[RecordingResult, RunPaths]:
    """Two driver processes on `config`, recorded to their end; `meanwhile` runs in a thread alongside."""
    cfg = build_benchmark_config(
        {"client": {"api_base": url, "model": "sim"}, "runtime": {"num_drivers": 2}, **config}
    )
    paths = RunPaths(tmp_path / "run")
    paths.make_dirs()
    links = [LocalDriver(cfg, Placement(i, 2), CrashFiles.of(paths, i)) for i in range(2)]
    side = threading.Thread(target=meanwhile, args=(links, paths), daemon=True)
    side.start()
    try:
        result = Recorder(paths, Progress(0), len, True, **limits).run(links)  # type: ignore[arg-type]
    finally:
        for link in links:
            link.stop(5.0)
    side.join(10)
    return result, paths


def dispatched_ids(paths: RunPaths) -> list[int]:
    return sorted(t["request_id"] for t in read_jsonl(paths.dispatch_trace) if t["dispatched_at"] is not None)


def stop_driver_0_once_sending(links: list[LocalDriver], paths: RunPaths) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if paths.dispatch_trace.exists() and len(paths.dispatch_trace.read_bytes().splitlines()) >= 10:
            break
        time.sleep(0.05)
    os.kill(links[0].proc.pid, signal.SIGSTOP)  # type: ignore[arg-type]


def test_a_driver_that_stops_responding_is_killed_named_and_its_requests_recorded(tmp_path: Path) -> None:
    # The run waited forever at "draining N requests", naming nothing; two Ctrl-Cs ended it.
    config = {
        "traffic_scheduler": RATE,
        "session_generator": {"output_spec": LONG_REPLIES},
        "runtime": {"num_drivers": 2, "benchmark_timeout": 60, "post_timeout_grace_seconds": 1},
    }
    started = time.monotonic()
    with simulate_server("--decode_step_base", "0.01") as url:
        result, paths = record(tmp_path, url, config, stop_driver_0_once_sending, silence_limit_s=SILENCE_S)

    assert time.monotonic() - started < 30  # not the 60 s timeout: stopped when driver 0 went silent
    assert result.status == RUN_FAILED
    error = "driver 0 stopped responding (no message for 1.5 s)"
    assert (result.error or "").startswith(error), result.error
    assert [(d["status"], d["error"]) for d in result.drivers] == [
        (RUN_FAILED, error),
        (RUN_INTERRUPTED, None),  # told to stop, it did
    ]
    records = read_jsonl(paths.request_records)
    assert sorted(r["request_id"] for r in records) == dispatched_ids(paths)  # records == dispatched
    lost = [r for r in records if r["error_type"] == "driver_lost"]
    assert lost and {r["driver_id"] for r in lost} == {0} and result.num_lost == len(lost)


@pytest.mark.parametrize(
    ("traffic", "server"),
    [
        # Sessions 3 s apart, one each: driver 1 waits 6 s for its first.
        ({"type": "rate", "interval_generator": {"type": "fixed", "interval": 3.0}}, []),
        # A closed loop on a server that takes 2.5 s to answer: both wait on it.
        (
            {"type": "concurrent", "target_concurrent_sessions": 2, "rampup_seconds": 0},
            ["--precise.ttft", "2.5", "--precise.itl", "0.001"],
        ),
    ],
    ids=["long-gap", "slow-server"],
)
def test_an_idle_driver_is_not_taken_for_a_silent_one(
    tmp_path: Path, traffic: dict[str, Any], server: list[str]
) -> None:
    config = {
        "traffic_scheduler": traffic,
        "session_generator": {
            "session_graph": {"type": "single_request"},
            "output_spec": {"text": {"output_length_generator": {"type": "fixed", "value": 4}}},
        },
        "runtime": {"num_drivers": 2, "max_sessions": 2, "warmup_sessions": 0},
    }
    with simulate_server(*server) as url:
        result, paths = record(tmp_path, url, config, silence_limit_s=1.0)

    assert result.status == RUN_COMPLETED and result.error is None, result.error
    assert len(read_jsonl(paths.request_records)) == 2


def stop_driver_0_at_once(links: list[LocalDriver], paths: RunPaths) -> None:
    deadline = time.monotonic() + 30
    while links[0].proc.pid is None and time.monotonic() < deadline:
        time.sleep(0.001)
    os.kill(links[0].proc.pid, signal.SIGSTOP)  # type: ignore[arg-type]


def test_a_driver_that_does_not_start_in_time_is_named(tmp_path: Path) -> None:
    # After the deadline the run said "a driver process did not start in time" and listed both
    # drivers as interrupted, with no error.
    config = {"traffic_scheduler": RATE, "runtime": {"num_drivers": 2, "benchmark_timeout": 3}}
    with simulate_server() as url:
        result, _ = record(tmp_path, url, config, stop_driver_0_at_once, start_deadline_s=5.0)

    assert result.status == RUN_FAILED and result.error == "driver 0 did not start within 5 s"
    assert [(d["status"], d["error"]) for d in result.drivers] == [
        (RUN_FAILED, "driver 0 did not start within 5 s"),
        (RUN_INTERRUPTED, None),
    ]
