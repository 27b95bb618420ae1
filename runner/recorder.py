"""The recorder side of a run: receives the drivers' batches and writes them down as they arrive.

It starts the drivers (runner/drivers.py), gives them one common start once all are ready, and merges
their streams into one request log and one trace. A driver that dies, or falls silent for
SILENCE_LIMIT_S (it is then killed), has its in-flight requests recorded as driver_lost and the
others are stopped.

Request records and trace lines are appended (and flushed) batch by batch, so a crash loses at
most the last tick. Each record is finalized here (its derived metrics computed, times made relative to
the run's start). The per-second time series is written once a second; the progress display gets every
batch and decides itself when to print.

A launched server that exits mid-run is noticed here within POLL_S (`stop_when`, polled by the
recorder's waiting thread, never by a driver): the run stops as on a Ctrl-C (the drivers drain) and
fails, naming why.
Until then the drivers sent to a dead port until benchmark_timeout, and concurrent traffic replaced
each failed session at once, writing connect_error records by the thousand.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any, BinaryIO

import orjson
from veeksha.runner import ipc
from veeksha.runner.background import to_background
from veeksha.runner.driver.dispatch_ring import read_ring
from veeksha.runner.drivers import DriverLink
from veeksha.runner.evaluation.timeseries import TimeseriesWriter
from veeksha.runner.lost_records import discard_rescued, lost_record
from veeksha.runner.progress import Progress
from veeksha.runner.raw_lines import record_line, trace_line
from veeksha.shared.jsonio import naming_errors
from veeksha.shared.paths import RunPaths
from veeksha.shared.records import (
    PROGRESS_DISPATCHED,
    PROGRESS_ERRORED,
    PROGRESS_IN_FLIGHT,
    RUN_FAILED,
    RUN_INTERRUPTED,
    STOP_BENCHMARK_TIMEOUT,
    STOP_MAX_REQUESTS,
    STOP_MAX_SESSIONS,
    STOP_SESSIONS_EXHAUSTED,
)
from veeksha.shared.redact import scrub_list

POLL_S = 0.2
# The recorder takes the drivers' messages in rounds this far apart, each taking all that waits.
# It shares a core with a driver in a one-core test: five rounds a second instead of fifty (one per
# driver tick) halved the driver's dispatch delay p99 at 800 requests/s (0.67-1.19 -> 0.31-0.41 ms,
# three alternating runs) and cost about 3 % less CPU per request; the pipe holds the batches
# (drivers.PIPE_BYTES). Records reach the file up to this much later; nothing else changes.
RECEIVE_ROUND_S = 0.1
# How long the drivers may take to start (import, client, first sessions) before we give up.
START_DEADLINE_S = 120.0
# A driver sends a message on every tick (driver/dispatcher.py TICK_S, 20 ms: a BATCH even with
# nothing in it), idle or busy, waiting for its next session or for a slow server. One silent this
# long is stuck (stopped, deadlocked, hung in native code): it is killed as a driver stuck after
# Ctrl-C is, and the run fails naming it; the run waited for it forever, and an unattended sweep
# with it. Far above a collector pause or a slow tick on a loaded machine (milliseconds, a second
# at worst), and above a Ray relay's hiccup.
SILENCE_LIMIT_S = 20.0
# A gap this long between two of the recorder's own rounds (the whole job was stopped and resumed,
# or this thread got no CPU) gives every driver a fresh SILENCE_LIMIT_S: their silence meanwhile
# was the recorder's, and a driver resumed with it may not have ticked yet.
RECORDER_STALL_S = 2.0
INTERRUPTED_AT_START = "interrupted while the drivers were starting"
# After the second Ctrl-C (cancel) a driver has this long to end; then, or at a third, it is killed
# and its in-flight requests recorded as lost. A driver stuck in native code never ended, and
# nothing could stop veeksha-run short of a kill that left run.json "running".
CANCEL_WAIT_S = 10.0
DRAIN_GATHER_S = 1.0  # how long the drain line waits for every driver's count


@dataclass
class RecordingResult:
    status: str
    error: str | None
    num_records: int
    driver_cpu_seconds: float | None  # all drivers together
    duration_s: float
    stop_reason: str | None = None
    num_lost: int = 0  # dispatched requests recorded as driver_lost
    drivers: list[dict[str, Any]] = field(default_factory=list)  # per driver, for run.json


@dataclass
class _End:
    """How a driver (or the run) ended, as the driver reported it or as the recorder found it."""

    status: str
    error: str | None
    cpu_seconds: float | None = None
    stop_reason: str | None = None
    cpu_steal_seconds: float | None = None  # taken by the hypervisor from its worst core (driver/steal.py)
    num_cpus: int | None = None  # the cores it could run on
    run_seconds: float | None = None  # from its start to its end: the span of its CPU figures


@dataclass
class _Driver:
    """What the recorder knows of one driver."""

    link: DriverLink
    ready: bool = False
    t0: float | None = None  # the common start on the driver's own perf_counter
    last_traced: int = -1  # the request id of its latest trace line (a driver's ids only grow)
    # A Ray driver's ring file lines, sent by its actor after its process died (ipc.UNSHIPPED); a
    # local driver's ring file is read from the run directory instead.
    unshipped: list[list[Any]] | None = None
    end: _End | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    heard_at: float = 0.0  # monotonic time of its last message (or of the run's start)

    def as_json(self) -> dict[str, Any]:
        end = self.end or _End(RUN_FAILED, None)
        return {
            "driver_id": self.link.driver_id,
            "where": self.link.where,
            "status": end.status,
            "error": end.error,
            "cpu_seconds": end.cpu_seconds,
            "cpu_steal_seconds": end.cpu_steal_seconds,
            "num_cpus": end.num_cpus,
            "run_seconds": end.run_seconds,
        }


# A driver's end outranks another's in the run's status: a failure, then an interruption.
_STATUS_RANK = {RUN_FAILED: 2, RUN_INTERRUPTED: 1}
# And its stop reason: a run one of whose drivers was cut off by the timeout stopped at the timeout,
# whatever the others (which had sent their share) say; the same for a request cap.
_STOP_RANK = {
    STOP_BENCHMARK_TIMEOUT: 3,
    STOP_MAX_REQUESTS: 2,
    STOP_MAX_SESSIONS: 1,
    STOP_SESSIONS_EXHAUSTED: 0,
}


class Recorder:
    def __init__(
        self,
        paths: RunPaths,
        progress: Progress,
        count_tokens: Callable[[str], int],
        trace_enabled: bool,
        secrets: Iterable[str] = (),
        stop_when: Callable[[float | None], str | None] | None = None,
        start_deadline_s: float = START_DEADLINE_S,
        silence_limit_s: float = SILENCE_LIMIT_S,
    ) -> None:
        """`secrets`: the run's (driver.http.client.run_secret_values), scrubbed from the trace's
        content, where a server's replies (turn 1's, in turn 2's history) may have echoed them.
        `stop_when`: asked every POLL_S, with the seconds since the run's start (None before it), why
        the run must stop now (the launched server exited: ServerHandle.exited_early), or None.
        `start_deadline_s`, `silence_limit_s`: START_DEADLINE_S and SILENCE_LIMIT_S (tests shorten them)."""
        self.paths = paths
        self.progress = progress
        self.count_tokens = count_tokens
        self.trace_enabled = trace_enabled
        self.secrets = scrub_list(list(secrets))
        self.t0: float | None = None
        self.num_records = 0
        self.timeseries = TimeseriesWriter(paths.timeseries_csv)
        self.signals = 0
        self.drivers: list[_Driver] = []
        # Trace lines of dispatched requests whose record has not arrived yet, by request id.
        self.in_flight: dict[Any, dict[str, Any]] = {}
        self.drain_announced = False
        self.draining: dict[int, dict[str, Any]] = {}  # each driver's DRAINING, until announced
        self.draining_since: float | None = None  # when the first came
        self.num_lost = 0
        self.stopping = False  # the other drivers were told to stop after one died
        self.cancelled_at: float | None = None  # monotonic time of the second signal
        self.stop_when = stop_when
        self.stopped_for: str | None = None  # what stop_when said: the run failed for it
        self.start_deadline_s = start_deadline_s
        self.silence_limit_s = silence_limit_s

    # -------------------------------------------------------------- signals

    def on_signal(self, signum: int, frame: Any) -> None:
        """Forward each Ctrl-C / SIGTERM to every running driver once: first drains, second cancels.
        A driver not yet ready is left alone: the start gives up and stops it (a signal in the
        middle of its start-up killed it with a traceback, and the run counted as failed)."""
        self.signals += 1
        if self.signals == 2:
            self.cancelled_at = time.monotonic()
        for d in self.drivers:
            if d.ready:
                d.link.interrupt()

    # -------------------------------------------------------------- main loop

    def run(self, links: list[DriverLink], before_go: Callable[[], None] | None = None) -> RecordingResult:
        """`before_go`: called once every driver is ready, just before they are told to start."""
        self.drivers = [_Driver(link) for link in links]
        with (
            self.paths.request_records.open("ab", buffering=0) as records,
            self._open_trace() as trace,
        ):
            failed_start = self._start_all(before_go)  # drivers start at the recorder's priority...
            if failed_start is None:  # ...which then gives way to theirs
                at_low_priority(lambda: self._receive_until_end(records, trace), tick=self._watch)
            else:  # no driver got its start: none has sent anything
                for d in self.drivers:
                    d.link.stop(0.0)
                    d.end = d.end or _End(RUN_INTERRUPTED, None)  # stopped, not failed
            end = failed_start or self._run_end()
            self._record_lost(records, None, end.error or "the run ended")
        # Every dispatched request has its record now: nothing is left for `evaluate` to recover.
        discard_rescued(self.paths)
        error = end.error
        if self.num_lost:
            lost = f"{self.num_lost} dispatched request(s) had no result and were recorded as driver_lost"
            error = f"{error}; {lost}" if error else lost
        elapsed = self._elapsed() if self.t0 is not None else 0.0
        self.timeseries.close(elapsed)
        self.progress.close()
        status = end.status
        if status not in (RUN_FAILED,) and self.signals:
            status = RUN_INTERRUPTED
        if self.stopped_for is not None:  # what the run measured after it was no server
            status = RUN_FAILED
            error = (
                f"{self.stopped_for}; {error}"
                if error and self.stopped_for not in error
                else self.stopped_for
            )
        return RecordingResult(
            status,
            error,
            self.num_records,
            end.cpu_seconds,
            elapsed,
            end.stop_reason,
            self.num_lost,
            [d.as_json() for d in self.drivers],
        )

    def _start_all(self, before_go: Callable[[], None] | None) -> _End | None:
        """Start every driver, wait until all are READY, then give all one common start (GO).
        The run's end when one fails to start (or a signal comes first), else None."""
        for d in self.drivers:
            d.link.start()
        failed = self._wait_until_ready()
        if failed is not None:
            return failed
        if before_go is not None:
            before_go()
        if self.signals:  # came while the last READY was read: no driver was told of it
            return _End(RUN_INTERRUPTED, INTERRUPTED_AT_START)
        margin = max(d.link.start_margin_s for d in self.drivers)
        self.t0 = time.perf_counter() + margin
        start_wall = time.time() + margin
        for d in self.drivers:
            # A driver on this host gets the start on the monotonic clock they share, exactly.
            t0 = self.t0 if d.link.shares_clock else None
            d.link.go({ipc.GO_T0: t0, ipc.GO_START_WALL: start_wall})
        return None

    def _wait_until_ready(self) -> _End | None:
        started = time.monotonic()
        while not all(d.ready for d in self.drivers):
            if self.signals:
                return _End(RUN_INTERRUPTED, INTERRUPTED_AT_START)
            if self._must_stop():
                return _End(RUN_FAILED, self.stopped_for)
            if time.monotonic() - started > self.start_deadline_s:
                return self._not_started()
            for d in self._readable(self.drivers):
                failed = self._start_message(d)
                if failed is not None:
                    return failed
        return None

    def _not_started(self) -> _End:
        """The start's deadline passed: each driver not ready by then fails, named; the ready ones
        are only stopped (run() marks them interrupted)."""
        errors = []
        for d in self.drivers:
            if not d.ready and d.end is None:
                d.end = _End(RUN_FAILED, f"{self._who(d)} did not start within {self.start_deadline_s:g} s")
                errors.append(d.end.error)
        return _End(RUN_FAILED, "; ".join(e for e in errors if e))

    def _start_message(self, d: _Driver) -> _End | None:
        """One message of driver `d` while it starts: READY, or the end of the start."""
        message = self._next_message(d)
        if message is None:
            if self.signals:  # stopped by the signal that came meanwhile
                return _End(RUN_INTERRUPTED, INTERRUPTED_AT_START)
            d.link.stop(1.0)  # it may still be exiting: its exit code is then known
            d.end = _End(RUN_FAILED, self._exit_error(d))
            return d.end
        kind, payload = message
        if kind == ipc.FAILED:
            d.end = _End(RUN_FAILED, payload["message"])
            return d.end
        d.ready = kind == ipc.READY
        return None

    def _readable(self, drivers: list[_Driver]) -> list[_Driver]:
        """The drivers with a message (or an end of stream) waiting, after up to POLL_S."""
        by_conn = {d.link.conn: d for d in drivers}
        return [by_conn[c] for c in wait(list(by_conn), POLL_S)]  # type: ignore[index]

    def _next_message(self, d: _Driver) -> tuple[str, Any] | None:
        """One message of driver `d`; None when its stream ended (the driver is gone)."""
        try:
            kind, payload = orjson.loads(d.link.conn.recv_bytes())
        except (EOFError, OSError):
            return None
        return kind, payload

    def _receive_until_end(self, records: BinaryIO, trace: BinaryIO) -> None:
        """Take the drivers' messages until every one has ended; flush the time series once a second."""
        last_second = last_round = time.monotonic()
        for d in self.drivers:
            d.heard_at = last_round
        while True:
            running = [d for d in self.drivers if d.end is None]
            if not running:
                return
            readable = self._readable(running)
            round_start = time.monotonic()
            if round_start - last_round > RECORDER_STALL_S:
                for d in running:
                    d.heard_at = round_start
            last_round = round_start
            for d in readable:
                self._receive_waiting(d, records, trace)
            self._announce_drain()
            for d in running:
                if d.end is None and not d.link.alive() and not d.link.conn.poll(0):
                    self._lost_driver(d, records, trace)
            self._kill_stuck(records, trace)
            self._kill_silent(records, trace, round_start)
            # Once a second whether or not a message came.
            now = time.monotonic()
            if now - last_second >= 1.0:
                last_second = now
                self.timeseries.flush(self._elapsed())
            # The rest of the round: a recorder with more work than that goes on at once.
            time.sleep(max(0.0, RECEIVE_ROUND_S - (now - round_start)))

    def _receive_waiting(self, d: _Driver, records: BinaryIO, trace: BinaryIO) -> None:
        """Every message driver `d` has sent so far (at least one, or the end of its stream)."""
        d.heard_at = time.monotonic()
        while True:
            message = self._next_message(d)
            if message is None:
                self._lost_driver(d, records, trace)
                return
            self._receive(d, *message, records, trace)
            if d.end is not None or not d.link.conn.poll(0):
                return

    def _receive(self, d: _Driver, kind: str, payload: Any, records: BinaryIO, trace: BinaryIO) -> None:
        """One message from driver `d`; DONE or FAILED ends it."""
        if kind == ipc.START:
            d.t0 = payload["t0"]
        elif kind == ipc.BATCH:
            self._write_batch(d, payload, records, trace)
        elif kind == ipc.DRAINING:
            self.draining[d.link.driver_id] = payload
            if self.draining_since is None:
                self.draining_since = time.monotonic()
        elif kind == ipc.DONE:
            d.end = _End(
                payload["status"],
                payload.get("error"),
                payload.get("cpu_seconds"),
                payload.get("stop_reason"),
                payload.get("cpu_steal_seconds"),
                payload.get("num_cpus"),
                payload.get("run_seconds"),
            )
            if d.end.status == RUN_FAILED:  # the run has failed: the others need not go on
                self._stop_others()
        elif kind == ipc.FAILED:
            d.end = _End(RUN_FAILED, payload["message"])
            self._stop_others()
        elif kind == ipc.UNSHIPPED:  # the stream's end follows: _lost_driver traces them
            d.unshipped = payload["trace"]

    def _lost_driver(self, d: _Driver, records: BinaryIO, trace: BinaryIO) -> None:
        """Driver `d` is gone without saying DONE: its in-flight requests are recorded as lost, and
        the others stop (the run no longer offers the load it was asked for)."""
        d.link.stop(1.0)  # it may still be exiting: wait briefly so its exit code is known
        error = self._exit_error(d)
        d.end = _End(RUN_FAILED, error)
        self._trace_unshipped(d, trace)
        self._count_lost(d, self._record_lost(records, d.link.driver_id, error))
        self._stop_others()

    def _kill_stuck(self, records: BinaryIO, trace: BinaryIO) -> None:
        """Kill the drivers that did not end CANCEL_WAIT_S after the second signal (or at a third)."""
        if self.cancelled_at is None:
            return
        if self.signals < 3 and time.monotonic() - self.cancelled_at < CANCEL_WAIT_S:
            return
        for d in self.drivers:
            if d.end is None:
                d.link.stop(0.0)
                error = f"{self._who(d)} did not stop after Ctrl-C; killed"
                d.end = _End(RUN_INTERRUPTED, error)
                self._trace_unshipped(d, trace)
                self._count_lost(d, self._record_lost(records, d.link.driver_id, error))

    def _kill_silent(self, records: BinaryIO, trace: BinaryIO, now: float) -> None:
        """Kill the drivers that sent nothing for silence_limit_s up to `now` (this round's start:
        what came in this round is not silence); the run fails for it, as when a driver dies."""
        for d in self.drivers:
            if d.end is not None or now - d.heard_at <= self.silence_limit_s or d.link.conn.poll(0):
                continue
            error = f"{self._who(d)} stopped responding (no message for {self.silence_limit_s:g} s)"
            self.progress.note(f"{error}; killed")
            d.link.stop(0.0)
            d.end = _End(RUN_FAILED, error)
            self._trace_unshipped(d, trace)
            self._count_lost(d, self._record_lost(records, d.link.driver_id, error))
            self._stop_others()

    def _trace_unshipped(self, d: _Driver, trace: BinaryIO) -> None:
        """Driver `d` died: the dispatches it never shipped (its last tick, its write buffer) are
        in its ring file (driver/dispatch_ring.py), or, for a Ray driver, in what its actor read
        from it (d.unshipped); trace them, so that they get records too."""
        if d.t0 is None:  # it died before its start: it sent nothing
            return
        raw_lines = d.unshipped
        if raw_lines is None:
            _, raw_lines = read_ring(self.paths.driver_dispatches(d.link.driver_id))
        lines = [trace_line(raw, d.t0, []) for raw in raw_lines if raw[ipc.TRACE_REQUEST_ID] > d.last_traced]
        for line in lines:
            self.in_flight[line["request_id"]] = line
            self.timeseries.add_dispatch(line["dispatched_at"])
        if lines:
            _append(trace, b"".join(orjson.dumps(line) + b"\n" for line in lines))
            d.last_traced = lines[-1]["request_id"]

    def _count_lost(self, d: _Driver, lost: int) -> None:
        """Driver `d` is gone and `lost` of its requests were recorded as driver_lost (errors): its
        live counts say so, as the summary will. Its last in-flight count stayed on the line for the
        rest of the run."""
        p = dict(d.progress)
        in_flight = p.get(PROGRESS_IN_FLIGHT, 0)
        # Lost beyond its last in-flight count: sent after its last batch (traced from its ring file).
        p[PROGRESS_DISPATCHED] = p.get(PROGRESS_DISPATCHED, 0) + max(0, lost - in_flight)
        p[PROGRESS_ERRORED] = p.get(PROGRESS_ERRORED, 0) + lost
        p[PROGRESS_IN_FLIGHT] = 0
        d.progress = p
        self.progress.update(self._elapsed(), self._progress_of_all())

    def _who(self, d: _Driver) -> str:
        """How messages name driver `d`."""
        return f"driver {d.link.driver_id}" if len(self.drivers) > 1 else "the driver process"

    def _exit_error(self, d: _Driver) -> str:
        where = f" on {d.link.where}" if d.link.where != "local" else ""
        return f"{self._who(d)}{where} exited unexpectedly ({d.link.describe_exit()})"

    def _watch(self) -> None:
        """Every POLL_S, in the thread that waits for the receiving one and takes the signals: at
        normal priority, so a receive loop flooded with failures (a dead server, concurrent
        traffic) cannot starve it. A reason from stop_when stops the run as a first Ctrl-C does."""
        if self._must_stop():
            self.progress.note(f"stopping the run: {self.stopped_for}")
            self._stop_others()

    def _must_stop(self) -> bool:
        """True the first time stop_when gives a reason (kept in stopped_for), False before and after,
        and once a signal came (a job's SIGTERM reaches the server too: the run was interrupted)."""
        if self.stop_when is None or self.stopped_for is not None or self.signals:
            return False
        self.stopped_for = self.stop_when(self.elapsed_or_none())
        return self.stopped_for is not None

    def _stop_others(self) -> None:
        if not self.stopping:
            self.stopping = True
            for other in self.drivers:
                if other.end is None:
                    other.link.interrupt()

    def _run_end(self) -> _End:
        """The run's end from its drivers': the worst status, every driver's error, the CPU of all."""
        ends = [d.end or _End(RUN_FAILED, self._exit_error(d)) for d in self.drivers]
        worst = max(ends, key=lambda e: _STATUS_RANK.get(e.status, 0))
        errors = [e.error for e in ends if e.error]
        cpu = [e.cpu_seconds for e in ends if e.cpu_seconds is not None]
        reasons = [e.stop_reason for e in ends if e.stop_reason]
        reason = max(reasons, key=lambda r: _STOP_RANK.get(r, -1)) if reasons else None
        return _End(
            worst.status,
            "; ".join(dict.fromkeys(errors)) or None,
            sum(cpu) if cpu else None,
            reason if worst.status not in _STATUS_RANK else None,
        )

    def _record_lost(self, records: BinaryIO, driver_id: int | None, why: str) -> int:
        """Every dispatched request (of one driver, or of all) without a record gets one: records ==
        dispatched, always."""
        lines = [
            line
            for line in self.in_flight.values()
            if driver_id is None or line.get("driver_id") == driver_id
        ]
        if not lines:
            return 0
        noticed_at = self._elapsed() if self.t0 is not None else None
        lost = [lost_record(line, why, noticed_at) for line in lines]
        for line in lines:
            del self.in_flight[line["request_id"]]
        for record in lost:
            self.timeseries.add(record)
        _append(records, b"".join(orjson.dumps(r) + b"\n" for r in lost))
        self.num_records += len(lost)
        self.num_lost += len(lost)
        return len(lost)

    def _announce_drain(self) -> None:
        """Once per run: what the end is waiting for (every driver's in-flight requests), why, and
        how to cut it short."""
        if self.drain_announced or self.draining_since is None:
            return
        # Every running driver's count, added up: they drain at about the same moment, and a driver
        # that has not said so within DRAIN_GATHER_S (it still sends) is left out.
        running = [d for d in self.drivers if d.end is None and d.link.driver_id not in self.draining]
        if running and time.monotonic() - self.draining_since < DRAIN_GATHER_S:
            return
        in_flight = sum(p.get("in_flight") or 0 for p in self.draining.values())
        if not in_flight:
            return
        self.drain_announced = True
        up_to = max(p["up_to_s"] for p in self.draining.values())
        why = "a driver failed; " if self.stopping and not self.signals and not self.stopped_for else ""
        cancel = "Ctrl-C again to cancel" if self.signals else "Ctrl-C to cancel"
        self.progress.note(f"{why}draining {in_flight} requests (up to {up_to:.0f}s; {cancel})")

    def elapsed_or_none(self) -> float | None:
        """Seconds since the run started, or None before the driver said when it started."""
        return None if self.t0 is None else time.perf_counter() - self.t0

    def _elapsed(self) -> float:
        return self.elapsed_or_none() or 0.0

    def _open_trace(self) -> BinaryIO:
        # With the trace off it is still written, unlisted: after a crash it is the only list of what
        # was sent, and `evaluate` gives each of those requests a record (lost_records.recover).
        target = self.paths.dispatch_trace if self.trace_enabled else self.paths.unlisted_trace
        return open(target, "ab", buffering=0)

    def _write_batch(self, d: _Driver, payload: dict[str, Any], records: BinaryIO, trace: BinaryIO) -> None:
        # The trace goes first, on disk too: a crash between the two writes leaves a dispatched
        # request that `evaluate` can still find and record as driver_lost.
        t0 = d.t0 if d.t0 is not None else self.t0 or 0.0  # each driver's times are on its own clock
        if payload["trace"]:
            lines = []
            for raw in payload["trace"]:
                line = trace_line(raw, t0, self.secrets)
                if line["dispatched_at"] is not None:
                    self.in_flight[line["request_id"]] = line
                self.timeseries.add_dispatch(line["dispatched_at"])
                lines.append(orjson.dumps(line))
            _append(trace, b"\n".join(lines) + b"\n")
            d.last_traced = payload["trace"][-1][ipc.TRACE_REQUEST_ID]
        if payload["records"]:
            lines = []
            for raw in payload["records"]:
                record = record_line(raw, t0, self.count_tokens)
                self.in_flight.pop(record["request_id"], None)
                self.timeseries.add(record)
                lines.append(orjson.dumps(record))
            _append(records, b"\n".join(lines) + b"\n")
            self.num_records += len(lines)
        d.progress = payload["progress"]
        self.progress.update(self._elapsed(), self._progress_of_all())

    def _progress_of_all(self) -> dict[str, Any]:
        """The progress counters of every driver, added up."""
        if len(self.drivers) == 1:
            return self.drivers[0].progress
        total: dict[str, Any] = {}
        for d in self.drivers:
            for key, value in d.progress.items():
                total[key] = total.get(key, 0) + value
        return total


def at_low_priority(work: Callable[[], None], tick: Callable[[], None] = lambda: None) -> None:
    """Run `work` in a thread of its own at background priority (background.py); `tick` is called
    every POLL_S meanwhile, in this thread.

    The drivers may share a core with the recorder on a small machine: their wake-ups are the
    measurement, the recorder's work can wait a few milliseconds. Only that thread is lowered, and
    it ends with the work, so nothing needs raising back (which takes privileges): evaluation and the
    drivers of a sweep's next run keep the usual priority. This thread waits, and takes the signals."""
    failure: list[BaseException] = []

    def run() -> None:
        to_background()
        try:
            work()
        except BaseException as e:  # raised again in the caller's thread
            failure.append(e)

    worker = threading.Thread(target=run, name="veeksha-recorder")
    worker.start()
    while worker.is_alive():
        worker.join(POLL_S)  # short waits: signal handlers run between them
        tick()
    if failure:
        raise failure[0]


def _append(f: BinaryIO, data: bytes) -> None:
    """Append to an unbuffered file: each batch reaches the file now (a crash loses at most the batch
    in hand), and a failed write (disk full) leaves nothing behind in a buffer to fail again."""
    view = memoryview(data)
    with naming_errors(f.name):
        while view:
            view = view[f.write(view) :]
