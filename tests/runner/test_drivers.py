"""runtime.num_drivers: auto starts as many drivers as the offered load needs, up to the cores."""

from __future__ import annotations

import fcntl
import multiprocessing
import signal
import subprocess
import sys
from typing import Any

import pytest
from veeksha.runner.drivers import (
    CONCURRENT_SESSIONS_PER_DRIVER,
    PIPE_BYTES,
    REQUESTS_PER_S_PER_DRIVER,
    message_pipe,
    num_drivers,
)
from veeksha.shared.config_loader import build_benchmark_config

SINGLE = {"type": "synthetic", "session_graph": {"type": "single_request"}}
FOUR_TURNS = {
    "type": "synthetic",
    "session_graph": {"type": "linear", "num_request_generator": {"type": "fixed", "value": 4}},
}


def config(traffic: dict[str, Any], sessions: dict[str, Any] = SINGLE, drivers: Any = "auto"):
    return build_benchmark_config(
        {"traffic_scheduler": traffic, "session_generator": sessions, "runtime": {"num_drivers": drivers}}
    )


def rate(per_s: float) -> dict[str, Any]:
    return {"type": "rate", "interval_generator": {"type": "poisson", "arrival_rate": per_s}}


def test_a_light_load_gets_one_driver() -> None:
    assert num_drivers(config(rate(10)), cores=8) == 1


def test_the_request_rate_counts_every_turn_of_a_session() -> None:
    sessions_per_s = REQUESTS_PER_S_PER_DRIVER / 2  # x 4 turns: twice one driver's rate
    assert num_drivers(config(rate(sessions_per_s)), cores=8) == 1
    assert num_drivers(config(rate(sessions_per_s), FOUR_TURNS), cores=8) == 2


def test_auto_never_asks_for_more_drivers_than_cores() -> None:
    assert num_drivers(config(rate(50 * REQUESTS_PER_S_PER_DRIVER)), cores=3) == 3


def test_concurrent_traffic_gets_a_driver_per_so_many_sessions() -> None:
    traffic = {"type": "concurrent", "target_concurrent_sessions": 2 * CONCURRENT_SESSIONS_PER_DRIVER + 1}
    assert num_drivers(config(traffic), cores=8) == 3


def test_auto_never_asks_for_more_drivers_than_the_session_cap() -> None:
    # Each driver takes a share of max_concurrent_sessions: a share of 0 would be no cap at all.
    traffic = {**rate(50 * REQUESTS_PER_S_PER_DRIVER), "max_concurrent_sessions": 2}
    assert num_drivers(config(traffic), cores=8) == 2


@pytest.mark.parametrize("n", [1, 2, 5])
def test_a_number_is_taken_as_given(n: int) -> None:
    assert num_drivers(config(rate(10), drivers=n), cores=2) == n


def test_a_drivers_message_pipe_holds_a_second_of_batches_between_receive_rounds() -> None:
    # The recorder reads every RECEIVE_ROUND_S: the batches of that gap must fit in the pipe, or the
    # driver keeps them in its own write buffer (Linux's default pipe holds 64 KiB, about 40 ms at
    # 1,000 requests/s).
    receiver, sender = message_pipe(multiprocessing.get_context("spawn"))
    try:
        assert fcntl.fcntl(receiver.fileno(), fcntl.F_GETPIPE_SZ) >= PIPE_BYTES
        sender.send_bytes(b"x" * (PIPE_BYTES // 2))  # blocks at the default size (a test timeout)
        assert receiver.recv_bytes() == b"x" * (PIPE_BYTES // 2)
    finally:
        receiver.close()
        sender.close()


@pytest.mark.parametrize(("time_scale", "drivers"), [(1.0, 3), (3.0, 8)])
def test_a_timed_replay_is_sized_by_its_trace_times(tmp_path, time_scale: float, drivers: int) -> None:
    # A timed replay keeps the trace's times and ignores interval_generator: auto counted the
    # latter's default (1 session/s) and started one driver for 1,000 (or 10,000) requests/s.
    trace = tmp_path / "trace.jsonl"
    trace.write_text(
        "".join(f'{{"input_length": 10, "output_length": 4, "timestamp": {i / 1000}}}\n' for i in range(5000))
    )
    sessions = {"type": "trace", "path": str(trace), "timed_replay": True, "time_scale": time_scale}
    # 1,000 requests/s (x time_scale), 400 per driver: 3 drivers, or 8 at 3,000/s.
    assert num_drivers(config(rate(1), sessions), cores=16) == drivers


# A fresh interpreter, as veeksha-run is: multiprocessing's resource tracker is not running yet, and
# the first Process.start() starts it. Prints the first driver's blocked-signal mask (/proc SigBlk).
FIRST_DRIVER_MASK = """
from pathlib import Path
from veeksha.runner.driver.dispatcher import Placement
from veeksha.runner.drivers import LocalDriver
from veeksha.shared.config import BenchmarkConfig

if __name__ == "__main__":
    driver = LocalDriver(BenchmarkConfig(), Placement(0, 1))
    driver.start()
    status = Path(f"/proc/{driver.proc.pid}/status").read_text()  # long before its own handler
    driver.stop(0.0)
    print(next(line.split()[1] for line in status.splitlines() if line.startswith("SigBlk:")))
"""


def test_the_first_driver_starts_with_ctrl_c_blocked() -> None:
    # The resource tracker's start (Python 3.11) unblocked SIGINT in the parent just before the
    # first driver was spawned: that driver began with Ctrl-C deliverable, and a terminal Ctrl-C in
    # its first second printed its KeyboardInterrupt traceback (N=1 too).
    out = subprocess.run(
        [sys.executable, "-c", FIRST_DRIVER_MASK], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert int(out.strip(), 16) & (1 << (signal.SIGINT - 1)), out


ONE_CORE_REFUSAL = """
import os
from veeksha.runner.drivers import check_local_drivers
from veeksha.shared.config_loader import build_benchmark_config
from veeksha.shared.errors import ConfigError

os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
try:
    check_local_drivers(build_benchmark_config({"runtime": {"num_drivers": 5}}))
except ConfigError as e:
    print(e)
"""


def test_too_many_drivers_for_one_core_is_refused_in_good_english() -> None:
    out = subprocess.run(
        [sys.executable, "-c", ONE_CORE_REFUSAL], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "runtime.num_drivers: 5 is not allowed on 1 core (a driver is one core;" in out, out
