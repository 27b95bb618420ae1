"""Length / wait samplers: each config generator's distribution, bounds and reproducibility."""

from __future__ import annotations

import math
import os
import random
import statistics
import subprocess
import sys
from collections import Counter

import pytest
from veeksha.runner.sessions.lengths import make_count_sampler, make_length_sampler
from veeksha.runner.sessions.randomness import stream
from veeksha.shared.config import (
    FixedGen,
    FixedStairGen,
    InverseGaussianGen,
    NormalGen,
    UniformGen,
    ZipfGen,
)

N = 20_000


def draws(sampler, n: int = N) -> list:
    return [sampler() for _ in range(n)]


def test_fixed_returns_its_value_and_counts_round_to_at_least_one() -> None:
    assert draws(make_length_sampler(FixedGen(value=2.5), random.Random(0)), 5) == [2.5] * 5
    assert make_count_sampler(FixedGen(value=2.5), random.Random(0))() == 3  # half rounds up
    assert make_count_sampler(FixedGen(value=0), random.Random(0))() == 1  # token counts are >= 1
    assert make_count_sampler(FixedGen(value=0), random.Random(0), minimum=0)() == 0


def test_uniform_float_stays_inside_and_centres_on_the_middle() -> None:
    xs = draws(make_length_sampler(UniformGen(min=0.5, max=1.5), random.Random(1)))
    assert 0.5 <= min(xs) and max(xs) <= 1.5
    assert statistics.fmean(xs) == pytest.approx(1.0, abs=0.01)


def test_uniform_count_is_inclusive_with_equal_weight_on_the_ends() -> None:
    counts = Counter(draws(make_count_sampler(UniformGen(min=100, max=104), random.Random(2))))
    assert sorted(counts) == [100, 101, 102, 103, 104]
    for value in counts:  # each of 5 values ~ N/5; rounding a float draw would halve 100 and 104
        assert counts[value] == pytest.approx(N / 5, rel=0.06)


def test_uniform_count_without_an_integer_inside_uses_the_rounded_middle() -> None:
    assert draws(make_count_sampler(UniformGen(min=2.2, max=2.4), random.Random(0)), 3) == [2, 2, 2]


def test_normal_is_clipped_to_its_bounds() -> None:
    xs = draws(make_length_sampler(NormalGen(mean=100, std=20, min=90, max=130), random.Random(3)))
    assert min(xs) == 90 and max(xs) == 130  # clipping puts mass exactly on the bounds
    share_at_min = xs.count(90) / N
    assert share_at_min == pytest.approx(0.3085, abs=0.015)  # P(Z < -0.5)
    wide = draws(make_length_sampler(NormalGen(mean=100, std=20, min=0, max=1e9), random.Random(4)))
    assert statistics.fmean(wide) == pytest.approx(100, abs=0.6)
    assert statistics.pstdev(wide) == pytest.approx(20, rel=0.03)


def test_normal_count_rounds_into_integers_inside_the_bounds() -> None:
    xs = draws(make_count_sampler(NormalGen(mean=10, std=5, min=1, max=15), random.Random(5)))
    assert all(isinstance(x, int) and 1 <= x <= 15 for x in xs)


@pytest.mark.parametrize("theta", [0.6, 1.0, 1.2, 2.0])
def test_zipf_matches_the_bounded_zipf_law_by_rank(theta: float) -> None:
    gen = ZipfGen(theta=theta, min=10, max=19)  # ranks 1..10 map onto 10..19
    counts = Counter(draws(make_count_sampler(gen, random.Random(6))))
    assert set(counts) <= set(range(10, 20))
    weights = [r**-theta for r in range(1, 11)]
    total = sum(weights)
    for rank, w in enumerate(weights, 1):
        expected = N * w / total
        assert abs(counts[9 + rank] - expected) < 5 * math.sqrt(expected) + 5


def test_zipf_handles_huge_ranges_without_a_table() -> None:
    xs = draws(make_count_sampler(ZipfGen(theta=1.1, min=1, max=10**9), random.Random(7)), 2000)
    assert 1 <= min(xs) and max(xs) <= 10**9
    assert Counter(xs)[1] > Counter(xs)[2] > Counter(xs)[4]


def test_zipf_count_below_the_minimum_starts_its_ranks_at_the_minimum() -> None:
    """min 0 for token counts: rank 1 is 1, not ranks 1 and 2 piled onto 1 (P(1) was 0.66, not 0.44)."""
    theta = 1.2
    counts = Counter(draws(make_count_sampler(ZipfGen(theta=theta, min=0, max=9), random.Random(9))))
    assert set(counts) <= set(range(1, 10))
    weights = [r**-theta for r in range(1, 10)]
    assert counts[1] / N == pytest.approx(weights[0] / sum(weights), abs=0.015)
    # A float sampler (a think time) keeps 0 as its first rank.
    assert min(draws(make_length_sampler(ZipfGen(theta=theta, min=0, max=9), random.Random(9)))) == 0


def test_inverse_gaussian_has_the_right_mean_and_variance() -> None:
    mean, shape = 5.0, 10.0
    xs = draws(make_length_sampler(InverseGaussianGen(mean=mean, shape=shape), random.Random(8)), 50_000)
    assert min(xs) > 0
    assert statistics.fmean(xs) == pytest.approx(mean, rel=0.02)
    assert statistics.pvariance(xs) == pytest.approx(mean**3 / shape, rel=0.08)


def test_fixed_stair_walks_the_values_repeating_each_then_cycles() -> None:
    gen = FixedStairGen(values=[1, 5, 9], repeat_each=2)
    assert draws(make_count_sampler(gen, random.Random(0)), 8) == [1, 1, 5, 5, 9, 9, 1, 1]
    assert draws(make_length_sampler(gen, random.Random(0)), 3) == [1.0, 1.0, 5.0]


def test_the_same_stream_gives_the_same_draws() -> None:
    gen = UniformGen(min=1, max=1000)
    first = draws(make_count_sampler(gen, stream(42, "x")), 100)
    assert draws(make_count_sampler(gen, stream(42, "x")), 100) == first
    assert draws(make_count_sampler(gen, stream(42, "y")), 100) != first
    assert draws(make_count_sampler(gen, stream(43, "x")), 100) != first


def test_named_streams_are_stable_across_processes_and_hash_seeds() -> None:
    code = "from veeksha.runner.sessions.randomness import stream; print(stream(42, 'text/words').random())"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for hash_seed in ("1", "2")
    }
    assert outputs == {repr(stream(42, "text/words").random())}
