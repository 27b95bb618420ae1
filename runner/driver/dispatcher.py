"""The driver process: keeps the arrival schedule, runs session graphs, sends requests, timestamps.

It does nothing else. Records leave as positional lists, batched on a short tick (TICK_S), through a
non-blocking pipe to the recorder process, which does all the arithmetic and file writing.

A run may have several drivers (runtime.num_drivers), each running its share of the one session
stream (placement.py) from one common start that the recorder gives once every driver is ready.

Rate traffic is sent on time even when the loop is busy: a session's task starts LOOKAHEAD_S early,
builds its first request and hands it to the precise timer (traffic.PreciseTimer), which sends it at
its due time, from the timer or from inside the first read after that time (transport.DueHook).
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from typing import Any

import orjson
from veeksha.runner import ipc
from veeksha.runner.driver.dispatch_ring import DispatchRing
from veeksha.runner.driver.http.client import LLMClient, Prepared, make_client, run_secret_values
from veeksha.runner.driver.http.outcome import Outcome
from veeksha.runner.driver.placement import PlacedSessions
from veeksha.runner.driver.rescue import CrashFiles, Rescue, pipe_bytes
from veeksha.runner.driver.steal import StealWatch
from veeksha.runner.driver.traffic import (
    PreciseTimer,
    interval_sampler,
    rampup_start_offsets,
    sleep_until,
)
from veeksha.runner.sessions.factory import make_session_generator, requests_in_flight_per_session
from veeksha.runner.sessions.model import RequestNode, Session, SessionGenerator
from veeksha.runner.sessions.randomness import stream
from veeksha.runner.sessions.tokenizer import count_tokens_approx, token_counter
from veeksha.shared.config import BenchmarkConfig, ConcurrentTraffic, RateTraffic, arrival_rate_of
from veeksha.shared.config_checks import session_slots
from veeksha.shared.records import (
    CANCELLED,
    COUNT_SERVER,
    COUNT_TOKENIZER,
    PROGRESS_CANCELLED,
    PROGRESS_COMPLETED,
    PROGRESS_DISPATCHED,
    PROGRESS_ERRORED,
    PROGRESS_IN_FLIGHT,
    PROGRESS_OUTPUT_TOKENS,
    PROGRESS_SESSIONS,
    RUN_COMPLETED,
    RUN_FAILED,
    RUN_INTERRUPTED,
    STOP_BENCHMARK_TIMEOUT,
    STOP_MAX_REQUESTS,
    STOP_MAX_SESSIONS,
    STOP_SESSIONS_EXHAUSTED,
    SUCCESS,
)
from veeksha.shared.redact import secret_values
from veeksha.shared.schema import to_dict

# Records leave on every tick: at 800 requests/s a 100 ms tick serialised 80 records (64 chunk times
# each) at once, a 1.2 ms block of the loop; 20 ms ticks ship a fifth of that each time.
TICK_S = 0.02
# Sessions generated ahead of need: this many seconds of arrivals (at least MIN_BUFFER).
BUFFER_AHEAD_S = 3.0
MIN_BUFFER = 64
MAX_BUFFER = 4096
PIPE_DRAIN_TIMEOUT_S = 30.0
# Per tick, session generation may take at most this long, and must end this long before the next
# arrival is due (generation blocks the loop: an arrival must never wait behind it, and chunks read
# after it would be timestamped late). Without such a gap a session is made when it is needed (_next_session).
REFILL_BUDGET_S = 0.001
REFILL_CLEARANCE_S = 0.003
# Rate traffic: a session's task starts this long before the session is due. It builds the first
# request and hands it to the precise timer, which sends it from inside the first read after its
# time. A task started only when the session before it went out would first run after the read batch
# in hand: at 800 requests/s batches of up to 10-20 ms, and every session due in one waited for it.
LOOKAHEAD_S = 0.05
UNBOUNDED_CONNECTIONS = 4096
# The recorder forwards each stop it gets with this signal (drivers.interrupt_process); SIGINT and
# SIGTERM come from outside. A forwarded stop and an outside one this close together are one stop
# (Driver._on_signal).
FORWARDED_STOP = signal.SIGUSR1
SAME_STOP_S = 0.5
REPEAT_S = 0.005  # the same signal again this soon: one delivery seen twice


@dataclass(frozen=True)
class Placement:
    """Which driver this is, of how many."""

    driver_id: int = 0
    num_drivers: int = 1


def driver_main(
    cfg: BenchmarkConfig,
    conn: Connection,
    go: Connection,
    placement: Placement,
    crash_files: CrashFiles | None = None,
) -> None:
    """Entry point of a spawned driver process: `conn` carries its messages to the recorder, `go`
    the recorder's common start (runner.ipc); `crash_files`, where what a crash of the recorder or
    of this process would lose goes (driver/rescue.py)."""
    # Own process group: a terminal Ctrl-C reaches only the recorder, which forwards it once.
    os.setpgrp()
    # A signal that arrives during set-up is kept and acted on once the loop runs.
    early: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM, FORWARDED_STOP):
        signal.signal(sig, lambda signum, frame: early.append(signum))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # held since our start (drivers.py)
    import uvloop

    uvloop.run(Driver(cfg, conn, go, placement, crash_files).run(early))


class _PipeProtocol(asyncio.Protocol):
    """Tells when the pipe to the recorder is closed (after its buffer was flushed)."""

    def __init__(self, closed: asyncio.Future[None]) -> None:
        self.closed = closed

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class _Node:
    """Per-run state of one request node while its session runs."""

    __slots__ = (
        "completed_at",
        "context",
        "dispatched_at",
        "done",
        "ok",
        "output_tokens",
        "reply",
        "request_id",
        "spec",
        "total_tokens",
    )

    def __init__(self, spec: RequestNode) -> None:
        self.spec = spec
        self.done = asyncio.Event()
        self.ok = False
        self.completed_at = 0.0
        self.context: Any = None  # messages (chat) or prompt prefix (completions) before this turn
        self.reply = ""
        # The answer's tokens, which a later turn carries in its history: None until a later turn
        # needs them counted from `reply` (the server's count is set when it has one).
        self.output_tokens: int | None = None
        self.total_tokens = 0  # prompt tokens this node sent, history included
        self.request_id = -1
        self.dispatched_at: float | None = None  # None until sent


# A session queued for a slot (max_concurrent_sessions): itself, when it was due, whether it is warmup.
_Queued = tuple[Session, float, bool]

NOT_SENT_FAILED = "not sent: an earlier request of this session failed"
NOT_SENT_QUEUED = "not sent: its session was still queued for a slot (max_concurrent_sessions) at the stop"


@dataclass(slots=True)
class _Turn:
    """One request of a session, built before its time (_send_request) and sent at it (_fire)."""

    session: Session
    nodes: list[_Node]
    node: _Node
    scheduled_at: float
    ready_at: float
    is_warmup: bool
    payload: Any
    prepared: Prepared


class Driver:
    def __init__(
        self,
        cfg: BenchmarkConfig,
        conn: Connection,
        go: Connection,
        placement: Placement,
        crash_files: CrashFiles | None = None,
    ) -> None:
        self.cfg = cfg
        self.conn = conn
        self.go = go
        self.driver_id = placement.driver_id
        self.num_drivers = placement.num_drivers
        self.parent_pid = os.getppid()
        self.runtime = cfg.runtime
        self.traffic = cfg.traffic_scheduler
        self.is_chat = cfg.client.type == "openai_chat_completions"
        self.include_content = cfg.trace_recorder.include_content
        self.cancel_on_failure = self.traffic.cancel_session_on_failure
        self.sessions: PlacedSessions | None = None
        self.count_source = ""
        self.buffer: deque[Session] = deque()
        self.sessions_done = False  # every session of this driver's share is in the buffer
        self.client: LLMClient | None = None
        self.count_tokens: Callable[[str], int] = count_tokens_approx
        self.timer: PreciseTimer | None = None

        self.records: list[list[Any]] = []
        self.trace: list[list[Any]] = []
        self.out: asyncio.WriteTransport | None = None
        content_secrets = run_secret_values(cfg) if self.include_content else None
        rescue = None if crash_files is None else crash_files.rescue
        self.rescue = Rescue(rescue, pipe_bytes(conn.fileno()), content_secrets)
        self.ring = DispatchRing(None if crash_files is None else crash_files.dispatches)
        self.t0 = 0.0
        # t0 + benchmark_timeout (inf: no timeout): nothing is sent at or after it (_fire).
        self.deadline = float("inf")
        # Request ids are unique across drivers: driver d of N numbers its requests d, d + N, ...
        self.next_request_id = self.driver_id
        # This driver's cap on requests dispatched; each warmup request it sends raises it by one (_fire).
        self.max_requests = _share(self.runtime.max_requests, self.driver_id, self.num_drivers)
        self.sessions_started = 0
        self.requests_dispatched = 0
        self.requests_completed = 0
        self.requests_errored = 0
        self.requests_cancelled = 0  # sent, then cancelled at shutdown
        self.output_tokens = 0
        self.in_flight = 0
        self.session_tasks: set[asyncio.Task[float]] = set()

        self.waiting: set[asyncio.Future[None]] = set()  # turns waiting for their due time or think time
        # max_concurrent_sessions: the session tasks waiting for a slot, with what a stop records of them
        # (None: still before its due time; a stop ends it without a record, as with no cap).
        self.queued: dict[asyncio.Task[Any], _Queued | None] = {}
        self.scheduling = True  # new sessions may start
        self.dispatch_open = True  # requests may be sent
        self.stop_status: str | None = None  # the run status a stop implies (None: ran to its end)
        self.stop_reason: str | None = None  # why a completed run stopped (records.STOP_*)
        self.draining = False  # dispatch is over; the in-flight requests are awaited
        self.timed_out = False  # benchmark_timeout has passed
        self.signals = 0
        # When a stop came that no stop from the other side (outside / the recorder) has matched yet.
        self.unmatched_stop: dict[bool, float] = {}  # forwarded? -> monotonic time
        self.last_signal: tuple[int, float] | None = None  # (signal, monotonic time)
        self.dispatcher: asyncio.Task[None] | None = None
        self.failure: str | None = None

    # ------------------------------------------------------------------ lifecycle

    async def run(self, early_signals: list[int]) -> None:
        loop = asyncio.get_running_loop()
        # The transport gets its own copy of the pipe's fd and closes it; the Connection closes its own.
        pipe = os.fdopen(os.dup(self.conn.fileno()), "wb", buffering=0)
        self.conn.close()
        self.pipe_closed = loop.create_future()
        self.out, _ = await loop.connect_write_pipe(lambda: _PipeProtocol(self.pipe_closed), pipe)
        try:
            generator = make_session_generator(self.cfg)
            self.count_source = generator.token_count_source
            self.sessions = self._placed(generator)
            self.count_tokens = token_counter(self.cfg.client.tokenizer)[0]  # loaded once per process
            server_secrets = secret_values(to_dict(self.cfg.server)) if self.cfg.server else []
            self.client = make_client(self.cfg.client, self._max_connections(), server_secrets)
            self.timer = PreciseTimer.of_running_loop()
            if self.timer is not None:  # due requests go out from inside reads (transport.DueHook)
                self.client.set_due_hook(self.timer)
            self._fill_buffer(self._buffer_target(), budget_s=None)
        except Exception as e:  # bad tokenizer, unreadable trace...: say so, in one line
            self._send(ipc.FAILED, {"message": f"{type(e).__name__}: {e}"})
            await self._close()
            return
        for sig in (signal.SIGINT, signal.SIGTERM, FORWARDED_STOP):
            loop.add_signal_handler(sig, self._on_signal, sig)
        # Everything built so far lives for the whole run: keep it out of the collector's scans,
        # and collect young objects less often (a full pass over the heap is a multi-ms stall).
        # Collections are then rare, so a request must leave no reference cycle: its objects, reply
        # text included, would stay until one runs (tests/runner/driver/test_memory.py checks this).
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)

        self.rescue.open()  # before the first request: a crash from here on leaves it to evaluate
        self.ring.open()
        self._send(ipc.READY, {"pid": os.getpid()})
        try:
            start = self.go.recv()  # blocks until every driver is ready (nothing else runs yet)
        except (EOFError, OSError):  # the recorder is gone before the start
            await self._close()
            return
        self.go.close()
        cpu0 = time.process_time()  # CPU spent on the run itself, set-up excluded
        steal = StealWatch.start()  # inside the start margin: the first session is not due yet
        self.t0 = _local_t0(start)
        if self.runtime.benchmark_timeout > 0:
            self.deadline = self.t0 + self.runtime.benchmark_timeout
        self.ring.start(self.t0)
        self._send(ipc.START, {"t0": self.t0, "pid": os.getpid()})
        ticker = asyncio.create_task(self._tick())
        self.dispatcher = asyncio.create_task(self._dispatch())
        for signum in early_signals:
            self._on_signal(signum)
        try:
            await self.dispatcher
        except asyncio.CancelledError:
            pass
        except Exception as e:  # a bug in the arrival loop or a worker: as any other (_fail)
            self._fail(e)
        # No new sessions from here; sessions already started still send their remaining turns
        # unless a stop (timeout, signal, max_requests) closed dispatch.
        self.scheduling = False
        self._announce_drain()
        await self._drain()
        ticker.cancel()
        self._flush()
        self._send(
            ipc.DONE,
            {
                "status": self.stop_status or RUN_COMPLETED,
                "stop_reason": self.stop_reason or self._natural_stop_reason(),
                "error": self.failure,
                "cpu_seconds": time.process_time() - cpu0,
                "cpu_steal_seconds": steal.seconds(),
                "num_cpus": len(steal.cpus) or None,
                "run_seconds": round(time.perf_counter() - self.t0, 3),  # what both CPU figures span
                "requests": self.requests_dispatched,
            },
        )
        await self._close()

    async def _close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
        if self.out is not None:
            # close() flushes what is still buffered first; exiting before that would lose the
            # last records (the kernel pipe holds only 64 KiB).
            self.out.close()
            try:
                await asyncio.wait_for(asyncio.shield(self.pipe_closed), PIPE_DRAIN_TIMEOUT_S)
            except TimeoutError:
                pass
            if os.getppid() != self.parent_pid:  # the recorder died while the last batches waited
                self.rescue.begin()
        self.rescue.close()
        self.ring.close()

    def _natural_stop_reason(self) -> str | None:
        if self.stop_status not in (None, RUN_COMPLETED):
            return None
        if not self._requests_left():  # max_requests: 0, or a cap reached as the last session ended
            return STOP_MAX_REQUESTS
        exhausted = self.sessions is not None and self.sessions.exhausted
        return STOP_SESSIONS_EXHAUSTED if exhausted else STOP_MAX_SESSIONS

    def _stop_dispatch(self, status: str, reason: str | None = None) -> None:
        """Stop sending: `status` is what the stop means for the run, `reason` why a completed run ended."""
        if self.stop_status is None:
            self.stop_status, self.stop_reason = status, reason
            # In-flight requests get the grace period after a timeout or a signal; a request cap
            # waits for them (until the benchmark timeout, _tick_once).
            if reason != STOP_MAX_REQUESTS:
                self._cancel_after_grace()
        self.dispatch_open = False
        self.scheduling = False
        if self.dispatcher is not None and not self.dispatcher.done():
            self.dispatcher.cancel()
        for waiting in self.waiting:  # not yet due: they will not be sent, their sessions end now
            if not waiting.done():
                waiting.set_result(None)
        self._drop_queued()

    def _drop_queued(self) -> None:
        """Dispatch stopped: the sessions still queued for a slot (max_concurrent_sessions) end now.
        Each that was due has its first requests recorded as cancelled: ready at its due time and
        never dispatched (config.md: the wait is recorded, not hidden; the session_dispatch_rate
        check counts them). Dropped without a record, the sessions that waited longest would vanish.
        Not stamped dispatched at the stop: they would then count as sent, diluting the error rate
        of the few that were, and as a burst of sessions dispatched at the very end."""
        if not self.queued:
            return
        stopped_at = min(time.perf_counter(), self.deadline)  # a timeout stops at its own moment
        for task, waiting in self.queued.items():
            task.cancel()
            if waiting is None:  # not yet in line (before its due time, or due but not yet run)
                continue
            session, scheduled_at, is_warmup = waiting
            if scheduled_at >= stopped_at:  # not due yet: not offered, as with no cap
                continue
            for spec in session.nodes:
                if not spec.parents:
                    self._record_cancelled(
                        session, spec, scheduled_at, is_warmup, scheduled_at, NOT_SENT_QUEUED
                    )
        self.queued.clear()

    def _cancel_after_grace(self) -> None:
        grace = self.runtime.post_timeout_grace_seconds
        if grace >= 0:  # -1: wait for every in-flight request
            asyncio.get_running_loop().call_later(grace, self._cancel_all)

    def _on_signal(self, sig: int) -> None:
        """The first Ctrl-C drains, the second cancels. A drain that was under way already (after
        the timeout, a cap, the last session) is cancelled by the first: it said "Ctrl-C to cancel",
        and a Ctrl-C that did nothing left the user waiting up to request_timeout.

        systemd, Slurm and a shell's job control signal every process of a job at once: a driver
        then gets the job's SIGTERM (or SIGINT) and the stop its recorder forwards, and a job
        stopped once was cancelled. So an outside signal and a forwarded one within SAME_STOP_S of
        each other are one stop, each matched once; two of one kind (a user's two Ctrl-Cs, which
        the recorder forwards, or `kill -TERM` twice) are two."""
        now = time.monotonic()
        last, self.last_signal = self.last_signal, (sig, now)
        if last is not None and last[0] == sig and now - last[1] < REPEAT_S:
            return  # one delivery handled twice (seen now and then under uvloop), not a second stop
        forwarded = sig == FORWARDED_STOP
        other = self.unmatched_stop.pop(not forwarded, None)
        if other is not None and now - other < SAME_STOP_S:
            return  # the same stop, seen from both sides
        self.unmatched_stop[forwarded] = now
        self.signals += 1
        self._stop_dispatch(RUN_INTERRUPTED)
        if self.signals >= 2 or self.draining:
            self._cancel_all()

    def _cancel_all(self) -> None:
        # Cancelling a session reaches the request it awaits; _send_request records it as cancelled.
        for task in list(self.session_tasks):
            task.cancel()

    def _announce_drain(self) -> None:
        self.draining = True  # dispatch is over, whatever ended it: a Ctrl-C now cancels
        if not self.in_flight:
            return
        grace = self.runtime.post_timeout_grace_seconds
        cancels = self.stop_reason != STOP_MAX_REQUESTS and self.stop_status is not None and grace >= 0
        up_to = grace if cancels else self.cfg.client.request_timeout
        timeout = self.runtime.benchmark_timeout
        if not cancels and timeout > 0 and grace >= 0:  # a request cap: the timeout still cuts it
            until_timeout = max(0.0, self.t0 + timeout - time.perf_counter())
            up_to = min(up_to, until_timeout + grace)
        self._send(ipc.DRAINING, {"in_flight": self.in_flight, "up_to_s": up_to})

    async def _drain(self) -> None:
        """After dispatch stops: wait until every session task has ended (_stop_dispatch has arranged
        their cancellation after the grace period, when the stop calls for one)."""
        while self.session_tasks:
            await asyncio.wait(list(self.session_tasks))

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self._tick_once()
            except Exception as e:  # housekeeping must not die silently: end the run, say why
                self._fail(e)
                return

    def _fail(self, e: Exception) -> None:
        """A driver bug (housekeeping, dispatch, a session): the run ends as failed, saying why; the
        records so far are still flushed and DONE is sent."""
        if self.failure is None:
            self.failure = f"{type(e).__name__}: {e}"
        self._stop_dispatch(RUN_FAILED)
        self.stop_status, self.stop_reason = RUN_FAILED, None  # even after another stop
        self._cancel_all()

    def _tick_once(self) -> None:
        # _fire stops dispatch at the deadline itself; this ends a run that sends nothing then.
        if not self.timed_out and time.perf_counter() >= self.deadline:
            self._time_out()
        if os.getppid() != self.parent_pid:  # the recorder died: stop at once
            self.rescue.begin()  # what it may not have written, and all from now on
            self._stop_dispatch(RUN_INTERRUPTED)
            self._cancel_all()
        self._flush()
        if self.scheduling:
            self._refill()

    def _time_out(self) -> None:
        """benchmark_timeout has passed: dispatch stops (the grace period starts)."""
        self.timed_out = True
        if self.dispatch_open:
            self._stop_dispatch(RUN_COMPLETED, STOP_BENCHMARK_TIMEOUT)
        else:  # a request cap stopped dispatch and waits: the timeout still bounds that wait
            self._cancel_after_grace()

    # ------------------------------------------------------------------ traffic

    async def _dispatch(self) -> None:
        if isinstance(self.traffic, RateTraffic):
            await self._dispatch_rate(self.traffic)
        elif isinstance(self.traffic, ConcurrentTraffic):
            await self._dispatch_concurrent(self.traffic)

    def _placed(self, generator: SessionGenerator) -> PlacedSessions:
        """This driver's share of the run's sessions, with the schedule's arrival offsets."""
        gaps = None
        if isinstance(self.traffic, RateTraffic):
            gaps = interval_sampler(self.traffic.interval_generator, stream(self.cfg.seed, "arrivals"))
        limit = self.runtime.max_sessions
        total = limit + self.runtime.warmup_sessions if limit >= 0 else None
        slots = session_slots(self.cfg)  # split as _share splits them: slot s on driver s % N
        return PlacedSessions(
            generator, self.driver_id, self.num_drivers, gaps, total, slots[1] if slots else None
        )

    def _requests_left(self) -> bool:
        return self.max_requests < 0 or self.requests_dispatched < self.max_requests

    async def _dispatch_rate(self, traffic: RateTraffic) -> None:
        # A driver's cap is its share of the run's (max_concurrent_sessions is per run).
        cap = _share(traffic.max_concurrent_sessions or 0, self.driver_id, self.num_drivers)
        limiter = asyncio.Semaphore(cap) if cap > 0 else None
        while self.scheduling and self._requests_left():
            session = self._next_session()
            if session is None:
                break
            assert session.arrival_offset is not None, "placement sets it for rate traffic"
            due = self.t0 + session.arrival_offset
            wait = due - LOOKAHEAD_S - time.perf_counter()
            if wait > 0:  # the loop's own timer: the task need only start about this early
                await asyncio.sleep(wait)
            self._start_session(session, due, limiter, start_at=due)

    async def _dispatch_concurrent(self, traffic: ConcurrentTraffic) -> None:
        # Driver d runs workers d, d + N, ... of the run's ramp.
        ramp = rampup_start_offsets(traffic.target_concurrent_sessions, traffic.rampup_seconds)
        starts = ramp[self.driver_id :: self.num_drivers]
        workers = [asyncio.create_task(self._worker(self.t0 + s)) for s in starts]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()

    async def _worker(self, start_at: float) -> None:
        """One slot of the closed loop: its first session is due at its ramp time, each next one when
        the one before completed. Building a session here, and this task's wake-up after the last
        response, are the client's own lateness: they show as the next session's dispatch delay."""
        await sleep_until(start_at)
        ready_at = start_at
        while self.scheduling and self._requests_left():
            session = self._next_session()
            if session is None:
                return
            task = self._start_session(session, ready_at, None)
            await asyncio.wait([task])
            # Its last response's arrival (a session that raised has ended the run: _run_session).
            ready_at = time.perf_counter() if task.cancelled() else task.result()

    def _next_session(self) -> Session | None:
        if not self.buffer:
            self._fill_buffer(1, budget_s=None)
        return self.buffer.popleft() if self.buffer else None

    def _buffer_target(self) -> int:
        rate = 0.0
        if isinstance(self.traffic, RateTraffic):
            rate = arrival_rate_of(self.traffic.interval_generator)
        else:
            rate = self.traffic.target_concurrent_sessions
        return min(MAX_BUFFER, max(MIN_BUFFER, int(rate / self.num_drivers * BUFFER_AHEAD_S)))

    def _refill(self) -> None:
        """Top up the session buffer in the gap before the next due request (rate traffic)."""
        now = time.perf_counter()
        # Without the timer (not Linux) nothing is sent at an exact time: the budget alone bounds it.
        next_due = self.timer.next_due if self.timer is not None else float("inf")
        budget = min(REFILL_BUDGET_S, next_due - REFILL_CLEARANCE_S - now)
        if budget > 0:
            self._fill_buffer(self._buffer_target(), budget_s=budget)

    def _fill_buffer(self, target: int, budget_s: float | None) -> None:
        deadline = None if budget_s is None else time.perf_counter() + budget_s
        sessions = self.sessions
        assert sessions is not None, "made in run() before the first fill"
        while len(self.buffer) < target and not self.sessions_done:
            session = sessions.next_session()
            if session is None:
                self.sessions_done = True
                return
            self.buffer.append(session)
            if deadline is not None and time.perf_counter() > deadline:
                return

    def _max_connections(self) -> int:
        """The client's pool: room for every request that can be in flight at once (sessions × the
        most requests one session can have in flight), so that no request waits for another's
        connection. Past UNBOUNDED_CONNECTIONS only when the sessions alone needed more; a request
        that still finds the pool full waits outside its latency (http/client.py `complete`)."""
        if self.cfg.client.max_connections:
            return self.cfg.client.max_connections
        if isinstance(self.traffic, ConcurrentTraffic):
            sessions = self.traffic.target_concurrent_sessions * 4  # the headroom it has always had
        elif self.traffic.max_concurrent_sessions:
            sessions = self.traffic.max_concurrent_sessions
        else:
            return UNBOUNDED_CONNECTIONS
        return min(sessions * requests_in_flight_per_session(self.cfg), max(sessions, UNBOUNDED_CONNECTIONS))

    # ------------------------------------------------------------------ sessions

    def _start_session(
        self,
        session: Session,
        ready_at: float,
        limiter: asyncio.Semaphore | None,
        start_at: float | None = None,
    ) -> asyncio.Task[float]:
        # Warmup is the run's first sessions, wherever they run.
        is_warmup = session.session_id < self.runtime.warmup_sessions
        task = asyncio.create_task(self._run_session(session, ready_at, is_warmup, limiter, start_at))
        self.session_tasks.add(task)
        task.add_done_callback(self.session_tasks.discard)
        return task

    async def _run_session(
        self,
        session: Session,
        scheduled_at: float,
        is_warmup: bool,
        limiter: asyncio.Semaphore | None,
        start_at: float | None = None,
    ) -> float:
        """Run one session; returns when its last response arrived (now, when none did). A session
        that raises is a driver bug: it ends the run as failed (_fail), in rate and closed-loop traffic
        alike, and is not raised further (a rate session's task is awaited by no one)."""
        # Without a concurrency limit, the first turns are prepared now and sent at `start_at` exactly
        # (_send_request); with one, a slot is taken first, and they go when it is.
        due = start_at if limiter is None else None
        try:
            if limiter is not None:
                await self._take_slot(session, scheduled_at, is_warmup, limiter)
            try:
                nodes = [_Node(spec) for spec in session.nodes]
                if len(nodes) == 1:
                    await self._run_node(session, nodes, nodes[0], scheduled_at, is_warmup, due)
                else:
                    await self._run_nodes(session, nodes, scheduled_at, is_warmup, due)
                return max(n.completed_at for n in nodes) or time.perf_counter()
            finally:
                if limiter is not None:
                    limiter.release()
        except Exception as e:
            self._fail(e)
            return time.perf_counter()

    async def _take_slot(
        self, session: Session, scheduled_at: float, is_warmup: bool, limiter: asyncio.Semaphore
    ) -> None:
        """max_concurrent_sessions: from its due time, wait in line for a slot. A stop meanwhile
        records the session's wait and cancels this (_drop_queued); a stop before the session is in
        line (its due time not reached, or due but its task not yet run) cancels it without a record,
        as with no cap: a cap that never binds changes nothing."""
        task = asyncio.current_task()
        assert task is not None, "a session runs in its own task"
        self.queued[task] = None
        try:
            await sleep_until(scheduled_at)
            if limiter.locked():  # it has to wait: in line from its due time
                self.queued[task] = (session, scheduled_at, is_warmup)
            await limiter.acquire()
        finally:
            self.queued.pop(task, None)

    async def _run_nodes(
        self, session: Session, nodes: list[_Node], scheduled_at: float, is_warmup: bool, due: float | None
    ) -> None:
        """A session of several requests: each in its own task, sent as its parents complete."""
        tasks = [
            asyncio.create_task(self._run_node(session, nodes, n, scheduled_at, is_warmup, due))
            for n in nodes
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()

    async def _run_node(
        self,
        session: Session,
        nodes: list[_Node],
        node: _Node,
        scheduled_at: float,
        is_warmup: bool,
        due: float | None = None,
    ) -> None:
        """Send one turn once its parents are done (and it waited its wait_after_ready); a first turn
        at `due` if given, else at once."""
        spec = node.spec
        try:
            ready_at = scheduled_at
            if spec.parents:
                due = None  # ready when its parents are: sent at once
                parents = [nodes[p] for p in spec.parents]
                for p in parents:
                    await p.done.wait()
                ready_at = max(p.completed_at for p in parents) + spec.wait_after_ready
                if spec.wait_after_ready > 0 and not self._session_failed(nodes):
                    await self._think(ready_at)
                if self._session_failed(nodes):  # also a request of another branch, or during the wait
                    if self.dispatch_open:
                        self._record_cancelled(session, spec, scheduled_at, is_warmup)
                    return
            if not self.dispatch_open or not self._requests_left():
                return
            await self._send_request(session, nodes, node, scheduled_at, ready_at, is_warmup, due)
        finally:
            node.done.set()

    async def _think(self, ready_at: float) -> None:
        """A turn's think time, cut short when dispatch stops (_at's wait is one `_stop_dispatch`
        releases): the turn will not be sent, and a drain that waited out every think time (any
        length) had nothing left to wait for."""
        if self.dispatch_open:
            await self._at(ready_at, _no_fire)

    def _session_failed(self, nodes: list[_Node]) -> bool:
        """cancel_session_on_failure: once a request of the session failed, its remaining requests
        are not sent (in a branching session, those of the other branches too)."""
        return self.cancel_on_failure and any(n.done.is_set() and not n.ok for n in nodes)

    def _payload(self, nodes: list[_Node], node: _Node) -> tuple[Any, int]:
        """The request body's messages/prompt and its prompt token count (history included)."""
        spec = node.spec
        hp = spec.history_parent
        if hp is None:
            node.context = [] if self.is_chat else ""
            history_tokens = 0
        else:
            parent = nodes[hp]
            if self.is_chat:
                node.context = [
                    *parent.context,
                    {"role": "user", "content": parent.spec.content},
                    {"role": "assistant", "content": parent.reply},
                ]
            else:
                node.context = f"{parent.context}{parent.spec.content}{parent.reply}\n"
            if parent.output_tokens is None:  # counted once, by the first turn that carries it
                parent.output_tokens = self.count_tokens(parent.reply) if parent.reply else 0
            history_tokens = parent.total_tokens + parent.output_tokens
        node.total_tokens = history_tokens + spec.num_content_tokens
        if self.is_chat:
            return [*node.context, {"role": "user", "content": spec.content}], node.total_tokens
        return node.context + spec.content, node.total_tokens

    async def _send_request(
        self,
        session: Session,
        nodes: list[_Node],
        node: _Node,
        scheduled_at: float,
        ready_at: float,
        is_warmup: bool,
        due: float | None = None,
    ) -> None:
        spec = node.spec
        payload, total_tokens = self._payload(nodes, node)
        client = self.client
        assert client is not None
        prepared = client.prepare(payload, spec.requested_output_tokens)

        turn = _Turn(session, nodes, node, scheduled_at, ready_at, is_warmup, payload, prepared)
        try:
            if due is not None:
                await self._at(due, partial(self._fire, turn, idle_only=True))
            if node.dispatched_at is None:  # not sent at its time (no idle connection), or no due time
                self._fire(turn, time.perf_counter())
            if node.dispatched_at is None:  # dispatch has closed
                return
            outcome: Outcome = await client.complete(prepared)
        except asyncio.CancelledError:
            if node.dispatched_at is None:
                raise  # never sent: nothing to record
            client.abandon(prepared)
            # It was sent: it keeps its times and what it received (its text counts its tokens).
            outcome = prepared.out
            outcome.status, outcome.error_type = CANCELLED, "cancelled"
            outcome.error_message = "cancelled at shutdown"
        finally:
            if node.dispatched_at is not None:
                self.in_flight -= 1
        request_id, dispatched_at = node.request_id, node.dispatched_at
        ok = outcome.status == SUCCESS
        node.ok = ok
        node.completed_at = outcome.completed_at or time.perf_counter()
        node.reply = outcome.text
        # The answer's tokens for a later turn's history: the server's count less its reasoning
        # (counted among the reply's tokens, never sent back); without those counts the text is
        # counted only if a later turn carries it (_payload): nothing per request here.
        completion, reasoning = outcome.completion_tokens, outcome.reasoning_tokens
        if completion is not None and (reasoning is not None or not outcome.reasoning_text):
            node.output_tokens = max(0, completion - (reasoning or 0))
        if ok:
            self.requests_completed += 1
            self.output_tokens += outcome.completion_tokens or len(outcome.chunk_times)
        elif outcome.status == CANCELLED:  # at shutdown: not failed (the summary counts them apart)
            self.requests_cancelled += 1
        else:
            self.requests_errored += 1
        has_usage = outcome.completion_tokens is not None
        reasoning_counted = outcome.reasoning_tokens is not None
        answers = outcome.answer_times
        # With a tokenizer, the recorder also counts what the server counted, to compare the two.
        compare = has_usage and self.count_source == COUNT_TOKENIZER
        # Sent before by another request: the history this turn carries, and the part of the run's
        # shared prefix an earlier session sent (the generator knows it; here it is a field read).
        cacheable = total_tokens - spec.num_content_tokens + spec.cacheable_prefix_tokens
        self.records.append(
            ipc.make_record(
                request_id=request_id,
                session_id=session.session_id,
                node_id=spec.node_id,
                driver_id=self.driver_id,
                status=outcome.status,
                error_type=outcome.error_type,
                error_message=outcome.error_message,
                http_status=outcome.http_status,
                is_warmup=is_warmup,
                session_size=len(nodes),
                scheduler_ready_at=ready_at,
                scheduler_dispatched_at=dispatched_at,
                client_picked_up_at=outcome.picked_up_at,
                client_completed_at=outcome.completed_at,
                result_processed_at=time.perf_counter(),
                num_delta_prompt_tokens=spec.num_content_tokens,
                num_total_prompt_tokens=(
                    outcome.prompt_tokens if outcome.prompt_tokens is not None else total_tokens
                ),
                target_num_delta_prompt_tokens=spec.target_prompt_tokens,
                num_output_tokens=outcome.completion_tokens,
                num_requested_output_tokens=spec.requested_output_tokens,
                num_cacheable_prompt_tokens=cacheable,
                token_count_source=COUNT_SERVER if has_usage else self.count_source,
                num_reasoning_tokens=outcome.reasoning_tokens,
                reasoning_token_source=COUNT_SERVER if reasoning_counted else self.count_source,
                client_prompt_tokens=total_tokens if compare else None,
                client_output_tokens=None,  # counted by the recorder from count_text
                is_stream=client.is_stream,
                finish_reason=outcome.finish_reason,
                chunk_times=outcome.chunk_times,
                count_text=outcome.text if compare or not has_usage else None,
                first_answer_at=answers[0] if answers else None,
                last_answer_at=answers[-1] if answers else None,
                num_answer_chunks=len(answers),
                reasoning_text=outcome.reasoning_text or None if compare or not reasoning_counted else None,
            )
        )

    def _fire(self, turn: _Turn, now: float, idle_only: bool = False) -> None:
        """Send a prepared turn at `now`, unless dispatch has closed meanwhile. Synchronous: from the
        timer it may run inside another connection's read (PreciseTimer.fire_due), so it only counts,
        traces and writes. `idle_only` (the timer's call): send only if an idle keep-alive connection
        takes it at once; else the session's task sends it when it runs, and its dispatch delay and
        latency then count the wait for the task and the connecting, as without a timer."""
        if not self.dispatch_open or not self._requests_left():
            return
        # Checked here, not only on the tick: a turn due between the deadline and the next tick
        # (or, after a pause of the driver, the precise timer's backlog, run before the tick) was sent.
        if now >= self.deadline:
            self._time_out()
            return
        client = self.client
        assert client is not None, "made before any session"
        if not client.claim(turn.prepared) and idle_only:
            return
        node, nodes = turn.node, turn.nodes
        spec = node.spec
        if all(n.dispatched_at is None for n in nodes):  # the session's first request
            self.sessions_started += 1
        node.request_id = request_id = self.next_request_id
        self.next_request_id += self.num_drivers
        self.requests_dispatched += 1
        if turn.is_warmup and self.max_requests >= 0:  # warmup comes in addition to max_requests
            self.max_requests += 1
        self.in_flight += 1
        node.dispatched_at = now
        line = ipc.make_trace_line(
            request_id=request_id,
            session_id=turn.session.session_id,
            node_id=spec.node_id,
            driver_id=self.driver_id,
            session_size=len(nodes),
            scheduled_at=turn.scheduled_at,
            ready_at=turn.ready_at,
            dispatched_at=now,
            parent_nodes=spec.parents,
            history_parent=spec.history_parent,
            wait_after_ready=spec.wait_after_ready,
            is_warmup=turn.is_warmup,
            content=turn.payload if self.include_content else None,
        )
        self.trace.append(line)
        self.ring.add(line)  # in the map at once: a SIGKILL before the next tick's flush loses none
        # Only now its bytes: sent before its ring line, a request a kill cut in between reached the
        # server with no record to say so. On the connection claimed above (else `complete` sends it).
        client.start(turn.prepared, now)
        # After its own trace line: the stop's records of queued sessions take later ids, and a
        # driver's trace ids only grow (recorder.py `last_traced`).
        if not self._requests_left():
            self._stop_dispatch(RUN_COMPLETED, STOP_MAX_REQUESTS)

    async def _at(self, due: float, fire: Callable[[float], None]) -> None:
        """Run `fire(now)` once `due` has passed: called by the precise timer, or by the first read
        after `due` (a read batch does not delay it); its failure is raised here."""
        timer = self.timer
        if timer is None:  # no timerfd (not Linux): a plain wait, then at once
            await sleep_until(due)
            fire(time.perf_counter())
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def run(now: float) -> None:
            if done.done():  # cancelled, or dispatch stopped, before its time: nothing is sent
                return
            try:
                fire(now)
            except Exception as e:  # never into the read that called us: into the session
                if not done.done():
                    done.set_exception(e)
                return
            if not done.done():  # (a max_requests stop inside `fire` has released it already)
                done.set_result(None)

        timer.call_at(due, run)
        self.waiting.add(done)
        try:
            await done
        finally:
            self.waiting.discard(done)

    def _record_cancelled(
        self,
        session: Session,
        spec: RequestNode,
        scheduled_at: float,
        is_warmup: bool,
        ready_at: float | None = None,
        why: str = NOT_SENT_FAILED,
    ) -> None:
        """A request not sent: an earlier request of its session failed (no times), or the run stopped
        while its session was queued (ready at its due time: _drop_queued)."""
        request_id = self.next_request_id
        self.next_request_id += self.num_drivers
        self.trace.append(
            ipc.make_trace_line(
                request_id=request_id,
                session_id=session.session_id,
                node_id=spec.node_id,
                driver_id=self.driver_id,
                session_size=len(session.nodes),
                scheduled_at=scheduled_at,
                ready_at=ready_at,
                dispatched_at=None,
                parent_nodes=spec.parents,
                history_parent=spec.history_parent,
                wait_after_ready=spec.wait_after_ready,
                is_warmup=is_warmup,
                content=None,
            )
        )
        record = ipc.make_record(
            request_id=request_id,
            session_id=session.session_id,
            node_id=spec.node_id,
            driver_id=self.driver_id,
            status=CANCELLED,
            error_type="cancelled",
            error_message=why,
            http_status=None,
            is_warmup=is_warmup,
            session_size=len(session.nodes),
            scheduler_ready_at=ready_at,
            scheduler_dispatched_at=None,
            client_picked_up_at=None,
            client_completed_at=None,
            result_processed_at=None,
            num_delta_prompt_tokens=spec.num_content_tokens,
            num_total_prompt_tokens=None,
            target_num_delta_prompt_tokens=spec.target_prompt_tokens,
            num_output_tokens=None,
            num_requested_output_tokens=spec.requested_output_tokens,
            num_cacheable_prompt_tokens=None,
            token_count_source=self.count_source,
            num_reasoning_tokens=None,
            reasoning_token_source=None,
            client_prompt_tokens=None,
            client_output_tokens=None,
            is_stream=self.cfg.client.stream,
            finish_reason=None,
            chunk_times=[],
            count_text=None,
            first_answer_at=None,
            last_answer_at=None,
            num_answer_chunks=0,
            reasoning_text=None,
        )
        self.records.append(record)

    # ------------------------------------------------------------------ output

    def _flush(self) -> None:
        payload: dict[str, Any] = {"records": self.records, "trace": self.trace}
        self.records, self.trace = [], []
        payload["progress"] = {
            PROGRESS_SESSIONS: self.sessions_started,
            PROGRESS_DISPATCHED: self.requests_dispatched,
            PROGRESS_COMPLETED: self.requests_completed,
            PROGRESS_ERRORED: self.requests_errored,
            PROGRESS_CANCELLED: self.requests_cancelled,
            PROGRESS_IN_FLIGHT: self.in_flight,
            PROGRESS_OUTPUT_TOKENS: self.output_tokens,
        }
        self._send(ipc.BATCH, payload)

    def _send(self, kind: str, payload: dict[str, Any]) -> None:
        out = self.out
        if out is None:
            return
        if out.is_closing():  # the pipe broke (we close it only after the last message): no recorder
            self.rescue.begin()
        frame = ipc.frame(orjson.dumps([kind, payload]))
        if self.rescue.active:
            self.rescue.write(frame)
            return
        if out.is_closing():
            return
        out.write(frame)
        self.rescue.kept(kind, frame, out.get_write_buffer_size(), time.perf_counter())


def _no_fire(now: float) -> None:
    """What a think time does when it ends: nothing; the turn is sent by its session's task."""


def _share(total: int, driver_id: int, num_drivers: int) -> int:
    """Driver `driver_id`'s part of a run-wide count (the first drivers take one more of the
    remainder); negative (unlimited) and zero stay as they are."""
    if total <= 0:
        return total
    return total // num_drivers + (1 if driver_id < total % num_drivers else 0)


def _local_t0(start: dict[str, Any]) -> float:
    """The common start on this process's perf_counter: as given on the recorder's host, else from
    the wall-clock start (another host: its clock must be NTP-synchronised, docs/scale-out.md)."""
    t0 = start.get(ipc.GO_T0)
    if t0 is not None:
        return float(t0)
    return time.perf_counter() + (float(start[ipc.GO_START_WALL]) - time.time())
