"""Arrival schedules and precise waiting.

Rate traffic is an absolute schedule: session k is due at t0 + (sum of the first k gaps). A late
wake-up makes one session late (its dispatch_delay shows it); it never shifts the ones after it.
"""

from __future__ import annotations

import asyncio
import ctypes
import heapq
import os
import random
import sys
import time
import weakref
from collections.abc import Callable, Iterator

from veeksha.shared.config import FixedIntervals, GammaIntervals, PoissonIntervals

# uvloop timers have ~1 ms resolution. Where no timerfd is available (see PreciseTimer), sleep until
# this close to the deadline, then yield to the loop until it passes (sleep(0) keeps I/O flowing).
SPIN_WINDOW_S = 0.0015


def interval_sampler(
    gen: PoissonIntervals | GammaIntervals | FixedIntervals, rng: random.Random
) -> Callable[[], float]:
    """Gaps between session arrivals, in seconds."""
    if isinstance(gen, PoissonIntervals):
        rate = gen.arrival_rate
        return lambda: rng.expovariate(rate)
    if isinstance(gen, GammaIntervals):
        # Gamma with mean 1/rate and coefficient of variation cv: shape k = 1/cv², scale = 1/(rate k).
        shape = 1.0 / (gen.cv * gen.cv)
        scale = 1.0 / (gen.arrival_rate * shape)
        return lambda: rng.gammavariate(shape, scale)
    gap = 1.0 / gen.rate
    return lambda: gap


def arrival_offsets(sample_gap: Callable[[], float], first_at: float = 0.0) -> Iterator[float]:
    """Absolute offsets from the run start: first_at, first_at + gap, ... (never drifts)."""
    t = first_at
    while True:
        yield t
        t += sample_gap()


async def sleep_until(deadline: float, clock: Callable[[], float] = time.perf_counter) -> None:
    """Wait until `clock()` >= deadline with sub-millisecond precision."""
    if clock is time.perf_counter:
        timer = PreciseTimer.of_running_loop()
        if timer is not None:
            await timer.sleep_until(deadline)
            return
    remaining = deadline - clock()
    if remaining > SPIN_WINDOW_S:
        await asyncio.sleep(remaining - SPIN_WINDOW_S)
    while clock() < deadline:
        await asyncio.sleep(0)


class PreciseTimer:
    """Sub-millisecond wake-ups without spinning: one Linux timerfd per event loop, armed (absolute,
    CLOCK_MONOTONIC, the clock of time.perf_counter on Linux) for the earliest pending deadline.

    The spin it replaces yielded to the loop until the deadline passed: at 800 arrivals/s (gaps of
    1.25 ms on average, spin window 1.5 ms) the driver never slept, used its whole core, and the
    recorder sharing that core then took the CPU from it a scheduler slice at a time.

    Besides sleepers (futures), it runs callbacks at their deadline (`call_at`), and anyone may fire
    what is due early (`fire_due`): the HTTP client does on every read, so a request due while the
    loop works through a batch of reads is sent from inside that batch, not after it (a loop turn at
    800 requests/s can hold hundreds of reads). `next_due` is the earliest deadline (inf: none).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, settime: Callable[..., int]) -> None:
        self._fd = fd
        self._settime = settime
        # struct itimerspec {interval sec, nsec; value sec, nsec}, made once: arming writes two slots
        # (half the cost of building the structs per call, measured 3.8 -> 1.9 µs).
        self._spec = (ctypes.c_long * 4)()
        self._heap: list[tuple[float, int, asyncio.Future[None] | Callable[[float], None]]] = []
        self._seq = 0
        self.next_due = float("inf")
        loop.add_reader(fd, self._fired)  # the loop keeps this object alive, and nothing else does
        weakref.finalize(self, os.close, fd)

    @classmethod
    def of_running_loop(cls) -> PreciseTimer | None:
        loop = asyncio.get_running_loop()
        try:
            return _TIMERS[loop]
        except KeyError:
            timer = _TIMERS[loop] = cls._make(loop)
            return timer
        except TypeError:  # a loop that cannot be weakly referenced
            return None

    @classmethod
    def _make(cls, loop: asyncio.AbstractEventLoop) -> PreciseTimer | None:
        if not sys.platform.startswith("linux") or time.get_clock_info("perf_counter").implementation != (
            "clock_gettime(CLOCK_MONOTONIC)"
        ):
            return None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
            if fd < 0:
                return None
            return cls(loop, fd, libc.timerfd_settime)
        except (OSError, AttributeError, NotImplementedError):  # no libc symbol, or a loop without add_reader
            return None

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= time.perf_counter():
            return
        future = asyncio.get_running_loop().create_future()
        self._push(deadline, future)
        await future

    def call_at(self, deadline: float, callback: Callable[[float], None]) -> None:
        """Call `callback(now)` once `deadline` has passed (from the timer, or from `fire_due`).
        `now` is when the caller looked: after slow callbacks it may be stale."""
        self._push(deadline, callback)

    def fire_due(self, now: float) -> None:
        """Wake the sleepers and run the callbacks whose deadline is at or before `now`. Only those
        pending when the pass began: one a callback schedules for a time already passed waits for
        the next pass (the timer is armed for it, so at once), never keeping this one going."""
        heap = self._heap
        last = self._seq
        while heap and heap[0][0] <= now and heap[0][1] <= last:
            target = heapq.heappop(heap)[2]
            if isinstance(target, asyncio.Future):
                if not target.done():  # a cancelled sleeper is just dropped
                    target.set_result(None)
            else:
                target(now)
        if not heap:
            self.next_due = float("inf")
        elif heap[0][0] != self.next_due:
            self._arm(heap[0][0])

    def _push(self, deadline: float, target: asyncio.Future[None] | Callable[[float], None]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, target))
        if deadline < self.next_due:
            self._arm(deadline)

    def _arm(self, deadline: float) -> None:
        self.next_due = deadline
        sec = int(deadline)
        spec = self._spec
        spec[2] = sec
        spec[3] = int((deadline - sec) * 1e9)
        self._settime(self._fd, _TFD_TIMER_ABSTIME, spec, None)

    def _fired(self) -> None:
        try:
            os.read(self._fd, 8)
        except BlockingIOError:  # re-armed since it fired
            pass
        self.fire_due(time.perf_counter())


_TIMERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, PreciseTimer | None]
_TIMERS = weakref.WeakKeyDictionary()
_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC
_TFD_TIMER_ABSTIME = 1


def rampup_start_offsets(target: int, rampup_s: float) -> list[float]:
    """Concurrent traffic: worker k of `target` starts at rampup * k / (target - 1), a linear ramp whose
    last worker starts at `rampup_s`, so the concurrency reaches the target then (the concurrency
    health check judges the run from that moment on)."""
    if rampup_s <= 0 or target <= 1:
        return [0.0] * target
    return [rampup_s * k / (target - 1) for k in range(target)]
