"""How the recorder ends a run from its drivers' ends.

The drivers here are scripted: each is a real OS pipe carrying the messages a driver process sends
(runner.ipc), written by a thread. A real driver ends `failed` with DONE only when its own
housekeeping raises, which no input can make it do.
"""

from __future__ import annotations

import io
import multiprocessing
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from veeksha.runner import ipc
from veeksha.runner.progress import Progress
from veeksha.runner.recorder import Recorder
from veeksha.shared.paths import RunPaths
from veeksha.shared.records import (
    PROGRESS_COMPLETED,
    PROGRESS_DISPATCHED,
    PROGRESS_ERRORED,
    PROGRESS_IN_FLIGHT,
    PROGRESS_OUTPUT_TOKENS,
    PROGRESS_SESSIONS,
    RUN_COMPLETED,
    RUN_FAILED,
    RUN_INTERRUPTED,
)

GIVE_UP_S = 10.0  # a driver nobody interrupts ends by itself after this (the old behaviour)


class ScriptedDriver:
    """A DriverLink whose driver says READY, then (after GO) ends as `script` says."""

    start_margin_s = 0.01
    where = "local"
    shares_clock = True

    def __init__(self, driver_id: int, end: dict[str, Any], wait_for_interrupt: bool) -> None:
        self.driver_id = driver_id
        self.conn, self._sender = multiprocessing.Pipe(duplex=False)
        self._end = end
        self._wait_for_interrupt = wait_for_interrupt
        self.interrupted = threading.Event()
        self._go = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _send(self, kind: str, payload: dict[str, Any]) -> None:
        self._sender.send_bytes(orjson.dumps([kind, payload]))

    def _run(self) -> None:
        self._send(ipc.READY, {"pid": 0})
        self._go.wait()
        self._send(ipc.START, {"t0": time.perf_counter(), "pid": 0})
        if self._wait_for_interrupt:
            self.interrupted.wait(GIVE_UP_S)
        self._send(ipc.DONE, self._end)
        self._sender.close()

    def start(self) -> None:
        self._thread.start()

    def go(self, start: dict[str, float | None]) -> None:
        self._go.set()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def describe_exit(self) -> str:
        return "exit code 0"

    def interrupt(self) -> None:
        self.interrupted.set()

    def stop(self, wait_s: float) -> None:
        self._thread.join(wait_s)


def done(status: str, error: str | None = None) -> dict[str, Any]:
    return {"status": status, "error": error, "cpu_seconds": 0.1, "stop_reason": None, "requests": 0}


def test_a_driver_that_ends_failed_stops_the_others(tmp_path: Path) -> None:
    paths = RunPaths(tmp_path / "run")
    paths.make_dirs()
    failing = ScriptedDriver(
        0, done(RUN_FAILED, "RuntimeError: housekeeping broke"), wait_for_interrupt=False
    )
    other = ScriptedDriver(1, done(RUN_INTERRUPTED), wait_for_interrupt=True)
    started = time.monotonic()

    result = Recorder(paths, Progress(0), len, True).run([failing, other])

    assert other.interrupted.is_set()
    assert time.monotonic() - started < GIVE_UP_S / 2
    assert result.status == RUN_FAILED and "housekeeping broke" in (result.error or "")


def test_drivers_that_complete_leave_each_other_alone(tmp_path: Path) -> None:
    paths = RunPaths(tmp_path / "run")
    paths.make_dirs()
    drivers = [ScriptedDriver(i, done(RUN_COMPLETED), wait_for_interrupt=False) for i in (0, 1)]

    result = Recorder(paths, Progress(0), len, True).run(drivers)

    assert result.status == RUN_COMPLETED and result.error is None
    assert not any(d.interrupted.is_set() for d in drivers)


def test_a_ctrl_c_while_the_last_ready_is_read_stops_the_start(tmp_path: Path) -> None:
    # A signal between "is there a signal?" and reading the last READY was counted and never acted
    # on: not forwarded (the driver was not ready), and the start went on; the run ran its whole
    # length. The signal lands here exactly then.
    paths = RunPaths(tmp_path / "run")
    paths.make_dirs()
    driver = ScriptedDriver(0, done(RUN_COMPLETED), wait_for_interrupt=False)
    recorder = Recorder(paths, Progress(0), len, True)
    read = recorder._next_message

    def read_with_a_signal(d: Any) -> Any:
        message = read(d)
        recorder.on_signal(2, None)
        return message

    recorder._next_message = read_with_a_signal  # type: ignore[method-assign]
    result = recorder.run([driver])

    assert result.status == RUN_INTERRUPTED and "while the drivers were starting" in (result.error or "")
    assert not driver._go.is_set()  # never told to start


def trace_line(request_id: int, t0: float) -> list[Any]:
    return ipc.make_trace_line(
        request_id=request_id,
        session_id=request_id,
        node_id=0,
        driver_id=0,
        session_size=1,
        scheduled_at=t0 + request_id * 0.01,
        ready_at=t0 + request_id * 0.01,
        dispatched_at=t0 + request_id * 0.01,
        parent_nodes=(),
        history_parent=None,
        wait_after_ready=0.0,
        is_warmup=False,
        content=None,
    )


class DriverDyingBehindItsActor(ScriptedDriver):
    """A Ray driver whose process is killed after it shipped requests 0 and 1 but dispatched 0 to 4:
    its actor sends the ring file's lines (UNSHIPPED) before the end of the stream."""

    where = "ray node 1234abcd at 10.0.0.5 (node-a)"
    shares_clock = False
    exit_code = -9

    def __init__(self) -> None:
        super().__init__(0, done(RUN_COMPLETED), wait_for_interrupt=False)

    def _run(self) -> None:
        self._send(ipc.READY, {"pid": 0})
        self._go.wait()
        t0 = time.perf_counter()
        self._send(ipc.START, {"t0": t0, "pid": 0})
        shipped = [trace_line(i, t0) for i in (0, 1)]
        self._send(ipc.BATCH, {"records": [], "trace": shipped, "progress": {}})
        self._send(ipc.UNSHIPPED, {"trace": [trace_line(i, t0) for i in range(5)]})
        self._sender.close()

    def describe_exit(self) -> str:
        return "exit code -9"


def test_a_ray_drivers_unshipped_dispatches_sent_by_its_actor_get_a_record_each(tmp_path: Path) -> None:
    paths = RunPaths(tmp_path / "run")
    paths.make_dirs()

    result = Recorder(paths, Progress(0), len, True).run([DriverDyingBehindItsActor()])

    records = [orjson.loads(line) for line in paths.request_records.read_bytes().splitlines()]
    assert sorted(r["request_id"] for r in records) == [0, 1, 2, 3, 4]  # one each, none twice
    assert {r["error_type"] for r in records} == {"driver_lost"}
    traced = [orjson.loads(line)["request_id"] for line in paths.dispatch_trace.read_bytes().splitlines()]
    assert traced == [0, 1, 2, 3, 4]
    assert result.status == RUN_FAILED and result.num_lost == 5


class Terminal(io.StringIO):
    """What Progress writes to a terminal."""

    def isatty(self) -> bool:
        return True


class DriverDyingWithRequestsInFlight(ScriptedDriver):
    """A driver killed after its batch said: 3 sent, 1 answered, 2 in flight."""

    def __init__(self) -> None:
        super().__init__(0, done(RUN_COMPLETED), wait_for_interrupt=False)

    def _run(self) -> None:
        self._send(ipc.READY, {"pid": 0})
        self._go.wait()
        t0 = time.perf_counter()
        self._send(ipc.START, {"t0": t0, "pid": 0})
        progress = {
            PROGRESS_SESSIONS: 3,
            PROGRESS_DISPATCHED: 3,
            PROGRESS_COMPLETED: 1,
            PROGRESS_ERRORED: 0,
            PROGRESS_IN_FLIGHT: 2,
            PROGRESS_OUTPUT_TOKENS: 0,
        }
        traces = [trace_line(i, t0) for i in range(3)]
        self._send(ipc.BATCH, {"records": [answered(0, t0)], "trace": traces, "progress": progress})
        self._sender.close()

    def describe_exit(self) -> str:
        return "exit code -9"


def answered(request_id: int, t0: float) -> list[Any]:
    """The record of a request answered at once, as a driver sends it."""
    at = t0 + request_id * 0.01
    fields = {name: None for name in ipc.RAW_RECORD_FIELDS}
    fields.update(
        request_id=request_id,
        session_id=request_id,
        node_id=0,
        driver_id=0,
        status="success",
        error_type=None,
        is_warmup=False,
        session_size=1,
        scheduler_ready_at=at,
        scheduler_dispatched_at=at,
        client_picked_up_at=at,
        client_completed_at=at + 0.001,
        result_processed_at=at + 0.001,
        num_delta_prompt_tokens=1,
        num_total_prompt_tokens=1,
        target_num_delta_prompt_tokens=1,
        num_output_tokens=1,
        num_requested_output_tokens=1,
        token_count_source="server",
        is_stream=True,
        chunk_times=[at + 0.001],
        num_answer_chunks=1,
    )
    return ipc.make_record(**fields)


def test_a_driver_that_died_leaves_no_requests_in_flight_on_the_live_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its last in-flight count stayed on the line for the rest of the run; its requests are
    # recorded as driver_lost (status error), which the line now counts as failed.
    monkeypatch.setenv("COLUMNS", "200")
    paths = RunPaths(tmp_path / "run")
    paths.make_dirs()
    screen = Terminal()

    result = Recorder(paths, Progress(300, screen), len, True).run([DriverDyingWithRequestsInFlight()])

    assert result.num_lost == 2
    last = screen.getvalue().rstrip("\n").split("\r\033[K")[-1]
    assert "requests 3 sent / 1 ok / 2 failed  in flight 0" in last


class FrozenDriver(ScriptedDriver):
    """A driver that sends requests 0-2 (request 0 answered), then nothing more and never ends: as
    one stopped with SIGSTOP or stuck in native code, its pipe open. Its stop kills it."""

    def __init__(self, driver_id: int = 0) -> None:
        super().__init__(driver_id, done(RUN_COMPLETED), wait_for_interrupt=False)
        self.killed = threading.Event()

    def _run(self) -> None:
        self._send(ipc.READY, {"pid": 0})
        self._go.wait()
        t0 = time.perf_counter()
        self._send(ipc.START, {"t0": t0, "pid": 0})
        traces = [trace_line(i, t0) for i in range(3)]
        self._send(ipc.BATCH, {"records": [answered(0, t0)], "trace": traces, "progress": {}})
        self.killed.wait(GIVE_UP_S)
        self._sender.close()

    def alive(self) -> bool:
        return not self.killed.is_set()

    def describe_exit(self) -> str:
        return "exit code -9"

    def stop(self, wait_s: float) -> None:
        if not self.killed.wait(wait_s):
            self.killed.set()  # the kill


def test_a_driver_that_stops_sending_is_killed_and_named(tmp_path: Path) -> None:
    # A driver sends a batch every tick, idle or not. One that fell silent (SIGSTOP) kept the run
    # waiting forever, naming nothing, at "draining N requests"; a sweep waited with it.
    paths = RunPaths(tmp_path / "run")
    paths.make_dirs()
    frozen = FrozenDriver()
    started = time.monotonic()

    result = Recorder(paths, Progress(0), len, True, silence_limit_s=0.5).run([frozen])

    assert frozen.killed.is_set() and time.monotonic() - started < GIVE_UP_S / 2
    assert result.status == RUN_FAILED
    assert "the driver process stopped responding (no message for 0.5 s)" in (result.error or "")
    records = [orjson.loads(line) for line in paths.request_records.read_bytes().splitlines()]
    assert sorted(r["request_id"] for r in records) == [0, 1, 2]  # records == dispatched
    assert [r["error_type"] for r in records if r["request_id"]] == ["driver_lost"] * 2
    assert result.num_lost == 2 and result.drivers[0]["status"] == RUN_FAILED


class TickingDriver(ScriptedDriver):
    """A driver with nothing to send, as a real one ticks: an empty batch every 20 ms, until it is
    interrupted; then it ends interrupted."""

    def __init__(self, driver_id: int) -> None:
        super().__init__(driver_id, done(RUN_INTERRUPTED), wait_for_interrupt=True)

    def _run(self) -> None:
        self._send(ipc.READY, {"pid": 0})
        self._go.wait()
        self._send(ipc.START, {"t0": time.perf_counter(), "pid": 0})
        deadline = time.monotonic() + GIVE_UP_S
        while not self.interrupted.wait(0.02) and time.monotonic() < deadline:
            self._send(ipc.BATCH, {"records": [], "trace": [], "progress": {}})
        self._send(ipc.DONE, self._end)
        self._sender.close()


def test_a_silent_driver_of_two_fails_the_run_and_the_other_is_stopped(tmp_path: Path) -> None:
    # The other one, idle but ticking, is not taken for silent.
    paths = RunPaths(tmp_path / "run")
    paths.make_dirs()
    other = TickingDriver(0)
    frozen = FrozenDriver(1)

    result = Recorder(paths, Progress(0), len, True, silence_limit_s=0.5).run([other, frozen])

    assert other.interrupted.is_set()
    assert result.status == RUN_FAILED
    assert (result.error or "").startswith("driver 1 stopped responding (no message for 0.5 s)")
    assert [(d["status"], d["error"]) for d in result.drivers] == [
        (RUN_INTERRUPTED, None),
        (RUN_FAILED, "driver 1 stopped responding (no message for 0.5 s)"),
    ]


class NeverReady(ScriptedDriver):
    """A driver process that never says READY (stopped with SIGSTOP while it started)."""

    def __init__(self, driver_id: int) -> None:
        super().__init__(driver_id, done(RUN_COMPLETED), wait_for_interrupt=False)
        self.stopped = threading.Event()

    def _run(self) -> None:
        self.stopped.wait(GIVE_UP_S)
        self._sender.close()

    def stop(self, wait_s: float) -> None:
        self.stopped.set()
        super().stop(wait_s)


def test_a_driver_that_does_not_start_in_time_is_named_and_the_ready_one_is_not_blamed(
    tmp_path: Path,
) -> None:
    # The run said "a driver process did not start in time" and listed both drivers as
    # interrupted, with no error.
    paths = RunPaths(tmp_path / "run")
    paths.make_dirs()
    ready = ScriptedDriver(0, done(RUN_COMPLETED), wait_for_interrupt=False)
    stuck = NeverReady(1)

    result = Recorder(paths, Progress(0), len, True, start_deadline_s=0.5).run([ready, stuck])

    assert result.status == RUN_FAILED and result.error == "driver 1 did not start within 0.5 s"
    assert [(d["status"], d["error"]) for d in result.drivers] == [
        (RUN_INTERRUPTED, None),
        (RUN_FAILED, "driver 1 did not start within 0.5 s"),
    ]
    assert stuck.stopped.is_set() and not ready._go.is_set()
