"""Arrival schedules and precise waiting.

Rate traffic is an absolute schedule: session k is due at t0 + (sum of the first k gaps). A late
wake-up makes one session late (its dispatch_delay shows it); it never shifts the ones after it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterator

from veeksha.shared.config import FixedIntervals, GammaIntervals, PoissonIntervals

# uvloop timers have ~1 ms resolution: sleep until this close to the deadline, then yield to the
# loop until it passes. Yielding (sleep(0)) keeps I/O flowing while we wait.
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
    remaining = deadline - clock()
    if remaining > SPIN_WINDOW_S:
        await asyncio.sleep(remaining - SPIN_WINDOW_S)
    while clock() < deadline:
        await asyncio.sleep(0)


def rampup_start_offsets(target: int, rampup_s: float) -> list[float]:
    """Concurrent traffic: worker k starts at rampup * k / target (a linear ramp to the target)."""
    if rampup_s <= 0 or target <= 1:
        return [0.0] * target
    return [rampup_s * k / target for k in range(target)]
