"""The run's driver processes as the recorder sees them: one link per driver.

A link is the driver's message pipe (runner.ipc frames) plus what the recorder needs to control it:
start it, send it the common start, forward a Ctrl-C, tell whether it lives, stop it. `LocalDriver`
is a spawned process on this machine; runner/ray_drivers.py runs drivers as Ray actors on a
cluster's nodes behind the same interface.
"""

from __future__ import annotations

import fcntl
import math
import multiprocessing
import os
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Protocol

from veeksha.runner.driver.dispatcher import FORWARDED_STOP, Placement, driver_main
from veeksha.runner.driver.rescue import CrashFiles
from veeksha.runner.held_signals import sigint_blocked
from veeksha.runner.sessions.factory import make_session_generator
from veeksha.runner.sessions.model import SessionGenerator
from veeksha.shared.config import BenchmarkConfig, ConcurrentTraffic, arrival_rate_of
from veeksha.shared.config_checks import session_slots
from veeksha.shared.errors import ConfigError

# runtime.num_drivers: auto. One driver keeps millisecond timing up to about this many requests per
# second on one core (scripts/bench_fidelity.py), or this many concurrent sessions.
REQUESTS_PER_S_PER_DRIVER = 400.0
CONCURRENT_SESSIONS_PER_DRIVER = 128
# Sessions drawn to estimate requests per session (auto only; cheap: a few ms).
SESSIONS_SAMPLED = 100
TIMED_SESSIONS_SAMPLED = 10_000  # placeholders (times only, no prompt): cheap to draw
# How far ahead of now the common start is set: every driver must have its GO before it.
LOCAL_START_MARGIN_S = 0.05
# A driver's record batches wait in its pipe between the recorder's receive rounds
# (recorder.RECEIVE_ROUND_S): 1 MiB holds about 0.6 s of them at 1,000 requests/s, so the driver
# never has to keep them in its own write buffer (64 KiB, Linux's default, holds about 40 ms).
PIPE_BYTES = 1 << 20


class DriverLink(Protocol):
    driver_id: int
    conn: Connection  # the driver's messages (runner.ipc frames)
    start_margin_s: float  # the common start must be at least this far ahead for this driver
    where: str  # where it runs, for messages and run.json ("local", or a Ray node)
    shares_clock: bool  # on the recorder's host: the same monotonic clock

    def start(self) -> None: ...

    def go(self, start: dict[str, float | None]) -> None:
        """Send the common start (runner.ipc GO); a driver that is gone is found by its pipe."""
        ...

    def alive(self) -> bool: ...

    @property
    def exit_code(self) -> int | None:
        """The driver process's exit code once it has ended and been stopped (negative: the signal
        that ended it); None before, or when it cannot be known (its Ray actor was lost)."""
        ...

    def describe_exit(self) -> str:
        """Why it is gone, for the run's error (e.g. "exit code -9")."""
        ...

    def interrupt(self) -> None:
        """A Ctrl-C for the driver: the first drains, the second cancels."""
        ...

    def stop(self, wait_s: float) -> None:
        """Wait up to `wait_s` for it to exit, then kill it."""
        ...


def message_pipe(ctx: BaseContext) -> tuple[Connection, Connection]:
    """(receiver, sender) of a one-way pipe for a driver's messages, with room for PIPE_BYTES (Linux;
    elsewhere, or above /proc/sys/fs/pipe-max-size, the system's default room)."""
    receiver, sender = ctx.Pipe(duplex=False)
    try:
        fcntl.fcntl(receiver.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (OSError, AttributeError):
        pass
    return receiver, sender


class LocalDriver:
    """A driver process on this machine (multiprocessing spawn: a fresh interpreter, no shared state)."""

    start_margin_s = LOCAL_START_MARGIN_S
    where = "local"
    shares_clock = True

    def __init__(
        self, cfg: BenchmarkConfig, placement: Placement, crash_files: CrashFiles | None = None
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.driver_id = placement.driver_id
        self.conn, sender = message_pipe(ctx)
        go_receiver, self._go = ctx.Pipe(duplex=False)
        self._child_ends = (sender, go_receiver)
        self.proc = ctx.Process(
            target=driver_main,
            args=(cfg, sender, go_receiver, placement, crash_files),
            name=f"veeksha-driver-{placement.driver_id}",
            daemon=True,
        )

    def start(self) -> None:
        with _sigint_held_for_children():
            self.proc.start()
        for end in self._child_ends:  # the child holds its own copies now
            end.close()

    def go(self, start: dict[str, float | None]) -> None:
        send_start(self._go, start)

    def alive(self) -> bool:
        return self.proc.is_alive()

    @property
    def exit_code(self) -> int | None:
        """The process's exit code once it has ended (negative: the signal that ended it)."""
        return self.proc.exitcode

    def describe_exit(self) -> str:
        return f"exit code {self.proc.exitcode}"

    def interrupt(self) -> None:
        interrupt_process(self.proc)

    def stop(self, wait_s: float) -> None:
        stop_process(self.proc, wait_s)


@contextmanager
def _sigint_held_for_children() -> Iterator[None]:
    """sigint_blocked (driver_main unblocks it once its own handler is set): a terminal Ctrl-C (the
    child is in our process group until driver_main leaves it) during a driver's start-up killed it
    with a KeyboardInterrupt traceback, and the run counted as failed.

    multiprocessing's resource tracker is started first, outside the block: the first
    Process.start() starts it, and its start (Python 3.11) unblocks SIGINT on its way out, so the
    first driver began with SIGINT unblocked and a Ctrl-C in its first second printed its
    KeyboardInterrupt traceback."""
    resource_tracker.ensure_running()
    with sigint_blocked():
        yield


def send_start(go: Connection, start: dict[str, float | None]) -> None:
    """Hand a driver process its common start (runner.ipc GO), once; a driver that is gone is found
    by its message pipe, not here."""
    try:
        go.send(start)
    except OSError:
        pass
    go.close()


def interrupt_process(proc: BaseProcess) -> None:
    """A Ctrl-C for a driver process (its first drains, its second cancels), forwarded as
    FORWARDED_STOP: a driver tells it from the stop signal of a whole job (dispatcher._on_signal)."""
    if proc.pid is not None:
        try:
            os.kill(proc.pid, FORWARDED_STOP)
        except ProcessLookupError:
            pass


def stop_process(proc: BaseProcess, wait_s: float) -> int | None:
    """Wait up to `wait_s` for a driver process to exit, then kill it; its exit code."""
    if proc.pid is None:
        return None  # never started
    proc.join(wait_s)
    if proc.is_alive():
        proc.kill()
        proc.join()
    return proc.exitcode


def num_drivers(cfg: BenchmarkConfig, cores: int) -> int:
    """runtime.num_drivers, with auto resolved: as many drivers as the offered load needs (rate ×
    requests per session, or concurrent sessions), at least 1 and at most `cores`."""
    n = cfg.runtime.num_drivers
    if n != "auto":
        return n
    traffic = cfg.traffic_scheduler
    if isinstance(traffic, ConcurrentTraffic):
        need = math.ceil(traffic.target_concurrent_sessions / CONCURRENT_SESSIONS_PER_DRIVER)
    else:
        rate = _timed_rate(make_session_generator(cfg))  # a timed replay keeps the trace's times
        if rate is None:
            rate = arrival_rate_of(traffic.interval_generator)
        requests_per_s = rate * _requests_per_session(make_session_generator(cfg))
        need = math.ceil(requests_per_s / REQUESTS_PER_S_PER_DRIVER)
    slots = session_slots(cfg)  # each driver needs one of the run's session slots at least
    return max(1, min(need, cores, slots[1] if slots is not None else need))


def _timed_rate(sessions: SessionGenerator) -> float | None:
    """Sessions per second of a timed trace replay (time_scale applied), from its first
    TIMED_SESSIONS_SAMPLED sessions; None when the sessions carry no times (the rate's own
    interval_generator, ignored by a timed replay, counted instead: 1 driver at 10,000/s)."""
    offsets = []
    for _ in range(TIMED_SESSIONS_SAMPLED):
        session = sessions.next_session(build=False)
        if session is None or session.arrival_offset is None:
            break
        offsets.append(session.arrival_offset)
    if len(offsets) < 2 or max(offsets) <= min(offsets):
        return None
    return (len(offsets) - 1) / (max(offsets) - min(offsets))


def _requests_per_session(sessions: SessionGenerator) -> float:
    counts = []
    for _ in range(SESSIONS_SAMPLED):
        session = sessions.next_session()
        if session is None:
            break
        counts.append(len(session.nodes))
    return sum(counts) / len(counts) if counts else 1.0


# More local drivers than this per core is refused (check_local_drivers).
MAX_DRIVERS_PER_CORE = 4


def available_cores() -> int:
    return len(os.sched_getaffinity(0))


def check_local_drivers(cfg: BenchmarkConfig) -> None:
    """A driver is one core. A few more drivers than cores still run (they share cores, and the
    drivers health check shows what that cost: tests place 3 drivers on 2 cores); many more is a
    typo that would start thousands of processes. Ray checks its cluster's CPUs itself."""
    n, cores = cfg.runtime.num_drivers, available_cores()
    limit = MAX_DRIVERS_PER_CORE * cores
    if cfg.runtime.ray_address is None and isinstance(n, int) and n > limit:
        on = f"{cores} core" if cores == 1 else f"{cores} cores"
        raise ConfigError(
            f"config error at runtime.num_drivers: {n} is not allowed on {on} (a driver is one "
            f"core; at most {MAX_DRIVERS_PER_CORE} per core are started); use auto, at most {limit}, "
            "or runtime.ray_address to spread them over a cluster"
        )
