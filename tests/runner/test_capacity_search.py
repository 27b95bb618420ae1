"""Capacity search phases, without traffic: a fake attempt that passes up to a known capacity."""

from __future__ import annotations

from veeksha.runner.capacity_search import Attempt, rounder, search_loop
from veeksha.shared.config import BenchmarkConfig, CapacitySearchConfig


def run_search(capacity: float, integer: bool, **kw) -> list[float]:
    search = CapacitySearchConfig(benchmark_config=BenchmarkConfig(), **kw)
    rnd = rounder(search, integer)
    tried: list[float] = []

    def attempt(value: float) -> Attempt | None:
        value = rnd(value)
        if value in tried or len(tried) >= search.max_iterations:
            return None
        tried.append(value)
        return Attempt(len(tried) - 1, value, value <= capacity, "", "completed", 0.0, [])

    search_loop(search, attempt, rnd, integer)
    return tried


def test_expands_then_bisects_to_the_precision() -> None:
    tried = run_search(13.37, False, start_value=5, max_value=100, expansion_factor=2, precision=1)
    assert tried[:3] == [5, 10, 20]
    passed = [v for v in tried if v <= 13.37]
    assert max(passed) == 13.3  # the largest passing value at 0.1 precision
    assert len(tried) == len(set(tried))


def test_rounding_never_stalls_phase_one() -> None:
    tried = run_search(4, True, start_value=1, max_value=10, expansion_factor=1.2, precision=0)
    assert tried[:4] == [1, 2, 3, 4]  # 1 × 1.2 rounds to 1: the probe still moves on
    assert 5 in tried and max(v for v in tried if v <= 4) == 4


def test_stops_at_the_maximum_when_everything_passes() -> None:
    tried = run_search(1e9, False, start_value=5, max_value=30, expansion_factor=2, precision=2)
    assert tried == [5, 10, 20, 30]
