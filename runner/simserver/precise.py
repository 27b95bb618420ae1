"""Precise timing for the simulated server: every stream on its own absolute schedule.

With `server.precise` set, the batching model is replaced by a known truth: chunk k of a request
(`tokens_per_chunk` tokens each) is due at

    arrival + ttft + k * itl

where `arrival` is when the request was parsed. Dues are absolute, so a late write never shifts the
chunks after it. The engine records how late it actually wrote each chunk against its due (the
server's own error, reported by GET /sim/stats), which is what a client benchmark's fidelity is measured
against: client TTFC minus `ttft` is the client's error plus this lateness.

Cost: one timer for the whole engine, not one per chunk. Every stream has the same ttft, so first
chunks fall due in arrival order (a FIFO); later chunks wait in a heap. At each wake-up the due first
chunks are written before the due later ones: they are the TTFT truth, one per `tokens` chunks.

First chunks also have a wake-up of their own at their exact due time (Linux: the driver's timerfd,
traffic.PreciseTimer), and a pass through due later chunks stops to write a first chunk that falls
due meanwhile. The loop's timer alone has whole-millisecond resolution: first chunks were then
0.6 ms late at the median and 1.9 ms at p99 at 800 requests/s, and that lateness counts in every
client's TTFC error against the truth. The exact wake-ups cost one more wake-up per request; later
chunks keep the millisecond timer (one wake-up per millisecond, not one per chunk).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from collections import deque

from veeksha.runner.driver.traffic import PreciseTimer
from veeksha.runner.simserver.engine import EngineRequest, SimulatedEngine
from veeksha.shared.config import SimulatedServerConfig

log = logging.getLogger(__name__)

_BUCKET_S = 1e-5  # lateness histogram resolution: 10 µs
_BUCKETS = 100_000  # up to 1 s; later writes land in the last bucket (the max is kept exactly)
# A wake-up writes for at most this long, then lets the loop read new requests (their arrival time
# is the schedule's origin) before it goes on; behind schedule, one pass could otherwise run for
# tens of milliseconds.
_MAX_WAKE_S = 0.002


class Lateness:
    """How late chunks were written versus their due time: a fixed-resolution histogram."""

    def __init__(self) -> None:
        self.counts = [0] * (_BUCKETS + 1)
        self.n = 0
        self.max_s = 0.0

    def add(self, late_s: float) -> None:
        self.n += 1
        if late_s > self.max_s:
            self.max_s = late_s
        i = int(late_s / _BUCKET_S) if late_s > 0 else 0
        self.counts[min(i, _BUCKETS)] += 1

    def quantile_s(self, q: float) -> float:
        """Upper edge of the bucket holding the q-quantile (0 when nothing was written)."""
        if not self.n:
            return 0.0
        rank = q * (self.n - 1)
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen > rank:
                return min((i + 1) * _BUCKET_S, self.max_s)
        return self.max_s

    def stats(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}chunks": self.n,
            f"{prefix}lateness_p50_ms": 1e3 * self.quantile_s(0.5),
            f"{prefix}lateness_p99_ms": 1e3 * self.quantile_s(0.99),
            f"{prefix}lateness_max_ms": 1e3 * self.max_s,
        }


def precise_stats(engine: PreciseEngine) -> dict[str, float]:
    """What GET /sim/stats adds in precise mode: how late chunks were written, all of them
    (precise_*) and first chunks only (first_*), as p50/p99/max in milliseconds."""
    return {**engine.lateness.stats("precise_"), **engine.first_lateness.stats("first_")}


class PreciseEngine(SimulatedEngine):
    """Same interface as SimulatedEngine (submit, output_limit, counters); no batching, no KV model."""

    def __init__(self, cfg: SimulatedServerConfig, loop: asyncio.AbstractEventLoop):
        super().__init__(cfg, loop)
        assert cfg.precise is not None
        self._ttft = float(cfg.precise.ttft)
        self._itl = float(cfg.precise.itl)
        # First chunks, (due, request), fall due in arrival order: a FIFO. Later chunks, (due, seq,
        # request), in a heap: first chunks are written ahead of due later ones, so the chunks that
        # follow them are not queued in due order.
        self._first: deque[tuple[float, EngineRequest]] = deque()
        self._later: list[tuple[float, int, EngineRequest]] = []
        self._seq = 0
        # Streams begun and neither finished nor cancelled. Not the queues' length: a cancelled stream
        # stays queued until its next chunk falls due (seconds, with a long ttft), running for nobody.
        self._live = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        # The exact wake-up of the oldest first chunk (None where there is no timerfd: the loop's
        # timer then serves first chunks too).
        self._exact: PreciseTimer | None = None
        self._exact_armed = False
        self.lateness = Lateness()  # every chunk
        self.first_lateness = Lateness()  # first chunks only (the TTFT a client should measure)

    @property
    def num_running(self) -> int:
        return self._live

    @property
    def num_waiting(self) -> int:
        return 0

    def submit(self, req: EngineRequest) -> None:
        due = time.perf_counter() + self._ttft
        self.admitted += 1
        self._live += 1
        self.peak_running = max(self.peak_running, self._live)
        self._first.append((due, req))
        if self._exact is None:
            self._exact = PreciseTimer.of_running_loop()
        if self._exact is not None:
            self._arm_exact()
        else:
            self._arm(due)

    def cancel(self, req: EngineRequest) -> None:
        """Its client left: no longer running, though its queue entry waits until it falls due."""
        if not req.cancelled and req.generated < req.limit:
            self._live -= 1
        req.cancelled = True

    def _arm_exact(self) -> None:
        """The next first chunk's exact wake-up. First chunks fall due in arrival order, so one
        pending wake-up, for the oldest, is all there ever is."""
        if self._first and not self._exact_armed:
            self._exact_armed = True
            self._exact.call_at(self._first[0][0], self._first_due)  # type: ignore[union-attr]  # set by submit()

    def _first_due(self, now: float) -> None:
        # `now` is when the timer's caller looked, maybe long ago (several callbacks ran since): the
        # time budget starts from the clock, or a backlog would end every pass before its first write.
        self._exact_armed = False
        if not self._emit_first(time.perf_counter() + _MAX_WAKE_S):
            # Out of time with first chunks due: the loop's wake-up writes them after a read, and
            # re-arms this one (arming it now, for a chunk already due, would call this again at once).
            self._wake_soon()
            return
        if self._later:  # the streams just begun go on on the loop's timer
            self._arm(self._later[0][0])
        self._arm_exact()

    def _arm(self, due: float) -> None:
        if due >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = due
        # Timers have whole-millisecond resolution (libuv; epoll_wait too), rounded to the nearest:
        # ask for the next whole millisecond at or after the due time, never for less than one unless
        # it is due already. Shorter delays round to 0 and the loop would spin through its I/O polls
        # (measured: 200,000 wake-ups/s and a saturated server at 800 requests/s). Chunks are then up
        # to about a millisecond late, which the lateness histogram reports.
        left = due - time.perf_counter()
        delay = math.ceil(left * 1e3) / 1e3 if left > 0 else 0.0
        self._timer = self._loop.call_later(delay, self._wake)

    def _wake(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        self.steps += 1
        # First chunks go before later ones that are due too: they are the TTFT truth, and there is
        # one of them per 64 later chunks, so the order costs the later chunks next to nothing.
        stop_at = time.perf_counter() + _MAX_WAKE_S
        if not (self._emit_first(stop_at) and self._emit_later(stop_at)):
            # Out of time with chunks due, or a first chunk fell due: read what arrived meanwhile,
            # then go on.
            self._wake_soon()
            return
        if self._exact is not None:
            self._arm_exact()
        queues = (self._later,) if self._exact is not None else (self._first, self._later)
        heads = [q[0][0] for q in queues if q]
        if heads:
            self._arm(min(heads))

    def _wake_soon(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = 0.0
        self._timer = self._loop.call_soon(self._wake)  # type: ignore[assignment]  # a Handle: cancel() is all we use

    def _emit_first(self, stop_at: float) -> bool:
        """Write every first chunk that is due; False if time ran out with some still due."""
        queue = self._first
        while queue:
            due, req = queue[0]
            now = time.perf_counter()
            if due > now:
                return True
            if now > stop_at:
                return False
            queue.popleft()
            if not req.cancelled:
                self._emit(due, req, self.first_lateness, due)  # one chunk: its own, never the next
        return True

    def _emit_later(self, stop_at: float) -> bool:
        """Write every later chunk that is due; False if time ran out with some still due."""
        heap, first = self._later, self._first
        while heap:
            due = heap[0][0]
            now = time.perf_counter()
            if due > now:
                return True
            if now > stop_at or (first and first[0][0] <= now):  # out of time, or a first chunk is due
                return False
            req = heapq.heappop(heap)[2]
            if not req.cancelled:
                self._emit(due, req, None, now)
        return True

    def _emit(self, due: float, req: EngineRequest, first: Lateness | None, now: float) -> None:
        """Write the chunk due at `due` and, when the stream is behind, every later one due by `now`
        (one write: catching up must not cost a send per chunk)."""
        steps: list[tuple[int, int]] = []
        start, limit, tpc, itl = req.generated, req.limit, self._tpc, self._itl
        next_due = due
        while True:
            end = min(start + tpc, limit)
            steps.append((start, end))
            start, next_due = end, next_due + itl
            if end >= limit or next_due > now:
                break
        finished = start >= limit
        self.generated_tokens += start - req.generated
        req.generated = start
        try:
            if len(steps) == 1:
                req.sink.on_tokens(steps[0][0], steps[0][1], finished)
            else:
                req.sink.on_steps(steps, finished)  # type: ignore[attr-defined]  # the server's sinks have it
        except Exception:  # one broken stream must not stop the engine for everyone
            log.exception("simulated engine: dropping a request whose sink failed")
            self._live -= 1
            req.cancelled = True  # (dropped: a cancel from its connection must not count it again)
            return
        written = time.perf_counter()
        for k in range(len(steps)):
            late = written - (due + k * itl)
            self.lateness.add(late)
            if first is not None:
                first.add(late)
        if finished:
            self._live -= 1
        else:
            self._seq += 1
            heapq.heappush(self._later, (next_due, self._seq, req))
