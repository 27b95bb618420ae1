"""The recorder side of a run: receives the driver's batches and writes them down as they arrive.

Request records and trace lines are appended (and flushed) batch by batch, so a crash loses at
most the last tick. Each record is finalized here (its derived metrics computed, times made relative to
the run's start). The per-second time series is written once a second; the progress display gets every
batch and decides itself when to print.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, BinaryIO

import orjson
from veeksha.runner import ipc
from veeksha.runner.evaluation.request_metrics import finalize_record
from veeksha.runner.evaluation.timeseries import TimeseriesWriter
from veeksha.runner.lost_records import lost_record
from veeksha.runner.progress import Progress
from veeksha.shared.jsonio import naming_errors
from veeksha.shared.paths import RunPaths
from veeksha.shared.records import RUN_FAILED, RUN_INTERRUPTED

POLL_S = 0.2
RECORDING_NICE = 19  # the most there is: the recorder runs in the driver's idle time
# How long the driver may take to start (import, client, first sessions) before we give up.
START_DEADLINE_S = 120.0


@dataclass
class RecordingResult:
    status: str
    error: str | None
    num_records: int
    driver_cpu_seconds: float | None
    duration_s: float
    stop_reason: str | None = None
    num_lost: int = 0  # dispatched requests recorded as driver_lost


@dataclass
class _End:
    """How the run ended, as the driver reported it (or as the recorder found it)."""

    status: str
    error: str | None
    cpu_seconds: float | None = None
    stop_reason: str | None = None


def _driver_exited(proc: BaseProcess) -> _End:
    return _End(RUN_FAILED, f"the driver process exited unexpectedly (exit code {proc.exitcode})")


class Recorder:
    def __init__(
        self,
        paths: RunPaths,
        progress: Progress,
        count_tokens: Callable[[str], int],
        trace_enabled: bool,
    ) -> None:
        self.paths = paths
        self.progress = progress
        self.count_tokens = count_tokens
        self.trace_enabled = trace_enabled
        self.t0: float | None = None
        self.num_records = 0
        self.timeseries = TimeseriesWriter(paths.timeseries_csv)
        self.signals = 0
        self.driver_pid: int | None = None
        # Trace lines of dispatched requests whose record has not arrived yet, by request id.
        self.in_flight: dict[Any, dict[str, Any]] = {}
        self.drain_announced = False

    # -------------------------------------------------------------- signals

    def on_signal(self, signum: int, frame: Any) -> None:
        """Forward each Ctrl-C / SIGTERM to the driver once: first drains, second cancels."""
        self.signals += 1
        if self.driver_pid is not None:
            try:
                os.kill(self.driver_pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    # -------------------------------------------------------------- main loop

    def run(self, conn: Connection, proc: BaseProcess) -> RecordingResult:
        self.driver_pid = proc.pid
        started = time.monotonic()
        with (
            _yielding_to_driver(),
            self.paths.request_records.open("ab", buffering=0) as records,
            self._open_trace() as trace,
        ):
            end = self._receive_until_end(conn, proc, started, records, trace)
            num_lost = self._record_lost(records, end.error or "the run ended")
        error = end.error
        if num_lost:
            lost = f"{num_lost} dispatched request(s) had no result and were recorded as driver_lost"
            error = f"{error}; {lost}" if error else lost
        elapsed = self._elapsed() if self.t0 is not None else 0.0
        self.timeseries.close(elapsed)
        self.progress.close()
        status = end.status
        if status not in (RUN_FAILED,) and self.signals:
            status = RUN_INTERRUPTED
        return RecordingResult(
            status, error, self.num_records, end.cpu_seconds, elapsed, end.stop_reason, num_lost
        )

    def _receive_until_end(
        self, conn: Connection, proc: BaseProcess, started: float, records: BinaryIO, trace: BinaryIO
    ) -> _End:
        """Take the driver's messages until the run ends; flush the time series once a second."""
        last_second = started
        while True:
            if conn.poll(POLL_S):
                try:
                    kind, payload = orjson.loads(conn.recv_bytes())
                except (EOFError, OSError):  # the driver is gone without saying DONE
                    proc.join(1.0)  # it may still be exiting: wait briefly so its exit code is known
                    return _driver_exited(proc)  # at once: no time-series flush on this turn
                end = self._receive(kind, payload, records, trace)
            else:
                end = self._check_driver(proc, started)
            # Once a second whether or not a message came, on the turn that ends the run too.
            now = time.monotonic()
            if self.t0 is not None and now - last_second >= 1.0:
                last_second = now
                self.timeseries.flush(self._elapsed())
            if end is not None:
                return end

    def _receive(self, kind: str, payload: Any, records: BinaryIO, trace: BinaryIO) -> _End | None:
        """One message from the driver; the run's end when it says DONE or FAILED."""
        if kind == ipc.START:
            self.t0 = payload["t0"]
        elif kind == ipc.BATCH:
            self._write_batch(payload, records, trace)
        elif kind == ipc.DRAINING:
            self._announce_drain(payload)
        elif kind == ipc.DONE:
            return _End(
                payload["status"],
                payload.get("error"),
                payload.get("cpu_seconds"),
                payload.get("stop_reason"),
            )
        elif kind == ipc.FAILED:
            return _End(RUN_FAILED, payload["message"])
        return None

    def _check_driver(self, proc: BaseProcess, started: float) -> _End | None:
        """No message this poll: the run ends if the driver died or has not started in time."""
        if not proc.is_alive():
            return _driver_exited(proc)
        if self.t0 is None and time.monotonic() - started > START_DEADLINE_S:
            return _End(RUN_FAILED, "the driver process did not start in time")
        return None

    def _record_lost(self, records: BinaryIO, why: str) -> int:
        """Every dispatched request without a record gets one (records == dispatched, always)."""
        if not self.in_flight:
            return 0
        noticed_at = self._elapsed() if self.t0 is not None else None
        lost = [lost_record(line, why, noticed_at) for line in self.in_flight.values()]
        self.in_flight.clear()
        for record in lost:
            self.timeseries.add(record)
        _append(records, b"".join(orjson.dumps(r) + b"\n" for r in lost))
        self.num_records += len(lost)
        return len(lost)

    def _announce_drain(self, payload: dict[str, Any]) -> None:
        """Once per run: what the end is waiting for, and how to cut it short."""
        if self.drain_announced or not payload.get("in_flight"):
            return
        self.drain_announced = True
        self.progress.note(
            f"draining {payload['in_flight']} requests (up to {payload['up_to_s']:.0f}s; "
            "Ctrl-C again to cancel)"
        )

    def elapsed_or_none(self) -> float | None:
        """Seconds since the run started, or None before the driver said when it started."""
        return None if self.t0 is None else time.perf_counter() - self.t0

    def _elapsed(self) -> float:
        return self.elapsed_or_none() or 0.0

    def _open_trace(self) -> BinaryIO:
        target = self.paths.dispatch_trace if self.trace_enabled else os.devnull
        return open(target, "ab", buffering=0)

    def _write_batch(self, payload: dict[str, Any], records: BinaryIO, trace: BinaryIO) -> None:
        # The trace goes first, on disk too: a crash between the two writes leaves a dispatched
        # request that `evaluate` can still find and record as driver_lost.
        t0 = self.t0 or 0.0
        if payload["trace"]:
            lines = []
            for raw in payload["trace"]:
                line = self._relative_trace(raw, t0)
                if line["dispatched_at"] is not None:
                    self.in_flight[line["request_id"]] = line
                self.timeseries.add_dispatch(line["dispatched_at"])
                lines.append(orjson.dumps(line))
            _append(trace, b"\n".join(lines) + b"\n")
        if payload["records"]:
            lines = []
            for raw in payload["records"]:
                record = finalize_record(self._relative_record(raw, t0))
                self.in_flight.pop(record["request_id"], None)
                self.timeseries.add(record)
                lines.append(orjson.dumps(record))
            _append(records, b"\n".join(lines) + b"\n")
            self.num_records += len(lines)
        self.progress.update(self._elapsed(), payload["progress"])

    def _relative_record(self, raw: list[Any], t0: float) -> dict[str, Any]:
        rec = dict(zip(ipc.RAW_RECORD_FIELDS, raw, strict=True))
        for name in ipc.RAW_TIME_FIELDS:
            if rec[name] is not None:
                rec[name] -= t0
        rec["chunk_times"] = [t - t0 for t in rec["chunk_times"] or ()]
        for name in ("first_answer_at", "last_answer_at"):
            if rec[name] is not None:
                rec[name] -= t0
        self._count_tokens(rec, rec.pop("count_text"), rec.pop("reasoning_text"))
        return rec

    def _count_tokens(self, rec: dict[str, Any], text: str | None, reasoning: str | None) -> None:
        """Counts the server did not give, and (with a tokenizer) the client's count beside the server's."""
        counted_reasoning = self.count_tokens(reasoning) if reasoning else 0
        if rec["num_reasoning_tokens"] is None and rec["reasoning_token_source"] is not None:
            rec["num_reasoning_tokens"] = counted_reasoning  # no reasoning text: 0 tokens
        if text is None:
            return
        # Output is reasoning and answer, as the server's completion_tokens counts it.
        counted = self.count_tokens(text) + counted_reasoning
        if rec["num_output_tokens"] is None:
            rec["num_output_tokens"] = counted
        elif rec["client_prompt_tokens"] is not None:  # the driver asked for a comparison
            rec["client_output_tokens"] = counted

    def _relative_trace(self, raw: list[Any], t0: float) -> dict[str, Any]:
        line = dict(zip(ipc.RAW_TRACE_FIELDS, raw, strict=True))
        for name in ipc.RAW_TRACE_TIME_FIELDS:
            if line[name] is not None:
                line[name] -= t0
        if line["content"] is None:
            del line["content"]
        return line


@contextlib.contextmanager
def _yielding_to_driver() -> Iterator[None]:
    """While recording, this thread runs at a lower scheduling priority (nice + RECORDING_NICE) than
    the driver, which shares its core on a small machine: the driver's wake-ups are the measurement,
    the recorder's work can wait a few milliseconds. Only this thread (the driver is already running
    and keeps its own nice); the old nice is restored after, where the system allows raising it back."""
    tid = threading.get_native_id()
    try:
        old = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(old + RECORDING_NICE, 19))
    except OSError:  # not Linux, or not allowed: record at the usual priority
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):  # raising it back may need privileges
            os.setpriority(os.PRIO_PROCESS, tid, old)


def _append(f: BinaryIO, data: bytes) -> None:
    """Append to an unbuffered file: each batch reaches the file now (a crash loses at most the batch
    in hand), and a failed write (disk full) leaves nothing behind in a buffer to fail again."""
    view = memoryview(data)
    with naming_errors(f.name):
        while view:
            view = view[f.write(view) :]
