"""Samplers for the config's length / wait generators (fixed, uniform, normal, zipf, ...).

`make_length_sampler` gives floats (think times, waits); `make_count_sampler` gives integers of at
least `minimum` (token counts, node counts, fan-in/out). Each sampler draws only from the `rng` it is
given, so one named stream per generator keeps every quantity reproducible on its own.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from veeksha.shared.config import (
    FixedGen,
    FixedStairGen,
    InverseGaussianGen,
    LengthGen,
    NormalGen,
    UniformGen,
    ZipfGen,
)
from veeksha.shared.errors import ConfigError


def make_length_sampler(gen: LengthGen, rng: random.Random) -> Callable[[], float]:
    """A callable drawing one float from `gen` per call."""
    if isinstance(gen, FixedGen):
        value = float(gen.value)
        return lambda: value
    if isinstance(gen, UniformGen):
        lo, hi = float(gen.min), float(gen.max)
        return lambda: rng.uniform(lo, hi)
    if isinstance(gen, NormalGen):
        return _normal(gen, rng)
    if isinstance(gen, ZipfGen):
        sample = _zipf(gen, rng)
        return lambda: float(sample())
    if isinstance(gen, InverseGaussianGen):
        return _inverse_gaussian(float(gen.mean), float(gen.shape), rng)
    if isinstance(gen, FixedStairGen):
        return _stair(gen)
    raise TypeError(f"unknown length generator {gen!r}")


# What a count may be: tokens of one prompt or reply (a 10M-token prompt is already ~50 MB of text),
# and requests, layers or fan of one session graph. A generator asking for more is a config error.
MAX_TOKENS = 10_000_000
MAX_GRAPH_COUNT = 10_000


def make_count_sampler(
    gen: LengthGen, rng: random.Random, minimum: int = 1, *, maximum: int | None = None, key: str = ""
) -> Callable[[], int]:
    """A callable drawing one integer >= `minimum` (and <= `maximum`) from `gen` per call (rounded
    half up).

    With a `maximum`, a generator whose values reach past it (its `reach()`: its fixed value, its max,
    or six deviations above a distribution's mean) is a ConfigError naming `key`: 1e20 tokens would fail
    deep in a run, or build a prompt of gigabytes. Only a draw beyond six deviations can still pass, and
    is cut to it.
    Uniform draws each integer of [ceil(min), floor(max)] with equal probability (rounding a float
    draw would give the two end values half weight); zipf is integer-valued already.
    """
    if maximum is None:
        return _count_sampler(gen, rng, minimum)
    # The config's own reach (the bound a think time is held to): a mean alone let normal {mean: 100,
    # std: 1e8} through, then cut 45% of its draws to `maximum`. Checked before anything is built.
    reach = gen.reach()
    if reach > maximum:
        raise ConfigError(f"config error at {key}: {reach:g} is more than {maximum:,}; use smaller values")
    draw = _count_sampler(gen, rng, minimum)
    return lambda: min(maximum, draw())


def _count_sampler(gen: LengthGen, rng: random.Random, minimum: int) -> Callable[[], int]:
    if isinstance(gen, UniformGen):
        lo, hi = math.ceil(gen.min), math.floor(gen.max)
        if lo > hi:  # e.g. uniform {min: 2.2, max: 2.8}: no integer inside, use the rounded middle
            value = max(minimum, _round((gen.min + gen.max) / 2))
            return lambda: value
        lo, hi = max(lo, minimum), max(hi, minimum)
        return lambda: rng.randint(lo, hi)
    if isinstance(gen, ZipfGen):
        # Ranks start at the smallest allowed count: raising draws below it to `minimum` would pile
        # several ranks' weight onto one value (min 0 gave P(1) = 0.66 for theta 1.2, not 0.44).
        sample = _zipf(gen, rng, floor=minimum)
        return sample
    draw = make_length_sampler(gen, rng)
    return lambda: max(minimum, _round(draw()))


def _round(x: float) -> int:
    return math.floor(x + 0.5)


def _normal(gen: NormalGen, rng: random.Random) -> Callable[[], float]:
    mean, std, lo, hi = float(gen.mean), float(gen.std), float(gen.min), float(gen.max)
    return lambda: min(hi, max(lo, rng.gauss(mean, std)))


def _stair(gen: FixedStairGen) -> Callable[[], float]:
    values = [float(v) for v in gen.values]
    repeat = gen.repeat_each
    calls = 0

    def sample() -> float:
        nonlocal calls
        value = values[(calls // repeat) % len(values)]
        calls += 1
        return value

    return sample


def _inverse_gaussian(mean: float, shape: float, rng: random.Random) -> Callable[[], float]:
    """Michael, Schucany & Haas (1976): one normal and one uniform draw per sample."""
    half_ratio = mean / (2.0 * shape)

    def sample() -> float:
        nu = rng.gauss(0.0, 1.0)
        y = nu * nu
        my = mean * y
        x = mean + half_ratio * (my - math.sqrt(4.0 * shape * my + my * my))
        if rng.random() <= mean / (mean + x):
            return x
        return mean * mean / x

    return sample


def _zipf(gen: ZipfGen, rng: random.Random, floor: int | None = None) -> Callable[[], int]:
    """Bounded Zipf over the integers [min, max] (min raised to `floor` when given):
    P(min + r - 1) ∝ r^-theta for rank r = 1..n.

    Rejection-inversion (Hörmann & Derflinger 1996): O(1) per draw and no table, so a range of
    millions costs nothing up front; acceptance is above 90% for every theta.
    """
    base = math.ceil(gen.min) if floor is None else max(floor, math.ceil(gen.min))
    n = max(1, math.floor(gen.max) - base + 1)
    s = float(gen.theta)

    def h(x: float) -> float:
        return math.exp(-s * math.log(x))

    def h_integral(x: float) -> float:
        log_x = math.log(x)
        return _expm1_over_x((1.0 - s) * log_x) * log_x

    def h_integral_inverse(x: float) -> float:
        t = max(-1.0, x * (1.0 - s))
        return math.exp(_log1p_over_x(t) * x)

    h_x1 = h_integral(1.5) - 1.0
    h_n = h_integral(n + 0.5)
    squeeze = 2.0 - h_integral_inverse(h_integral(2.5) - h(2.0))

    def sample() -> int:
        for _ in range(1000):  # expected ~1.1 iterations; the bound only guards against a bug
            u = h_n + rng.random() * (h_x1 - h_n)
            x = h_integral_inverse(u)
            k = min(n, max(1, int(x + 0.5)))
            if k - x <= squeeze or u >= h_integral(k + 0.5) - h(k):
                return base + k - 1
        return base

    return sample


def _log1p_over_x(x: float) -> float:
    return math.log1p(x) / x if abs(x) > 1e-8 else 1.0 - x / 2.0 + x * x / 3.0


def _expm1_over_x(x: float) -> float:
    return math.expm1(x) / x if abs(x) > 1e-8 else 1.0 + x / 2.0 + x * x / 6.0
