"""Capacity search phases, without traffic: a fake attempt that passes up to a known capacity."""

from __future__ import annotations

import pytest
from veeksha.runner.capacity_search import Attempt, rounder, search_loop
from veeksha.shared.config import BenchmarkConfig, CapacitySearchConfig


def run_search(capacity: float, integer: bool, **kw) -> list[float]:
    return search(capacity, integer, **kw)[0]


def search(capacity: float, integer: bool, **kw) -> tuple[list[float], str]:
    """(the values tried, why the search stopped)."""
    cfg = CapacitySearchConfig(benchmark_config=BenchmarkConfig(), **kw)
    rnd = rounder(cfg, integer)
    tried: list[float] = []

    def attempt(value: float) -> Attempt | None:
        value = rnd(value)
        if value in tried or len(tried) >= cfg.max_iterations:
            return None
        tried.append(value)
        return Attempt(len(tried) - 1, value, value <= capacity, "", "completed", 0.0, [])

    reason = search_loop(cfg, attempt, rnd, integer)
    return tried, reason


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


def test_the_search_says_why_it_stopped() -> None:
    assert search(13.37, False, start_value=5, max_value=100, precision=1)[1] == "converged"
    assert search(1e9, False, start_value=5, max_value=30)[1] == "max_value"
    tried, reason = search(1e9, False, start_value=5, max_value=100, expansion_factor=2, max_iterations=3)
    assert (tried, reason) == ([5, 10, 20], "max_iterations")  # not converged: it says so


def test_rounding_never_probes_above_max_value() -> None:
    """10.006 at precision 2 would round to 10.01; 10.6 sessions to 11."""
    tried = run_search(1e9, False, start_value=5, max_value=10.006, expansion_factor=2, precision=2)
    assert tried == [5, 10] and max(tried) <= 10.006
    tried = run_search(1e9, True, start_value=4, max_value=10.6, expansion_factor=2, precision=0)
    assert tried == [4, 8, 10]


@pytest.mark.parametrize("top", [2.3, 1.15, 0.29, 4.35])
def test_a_max_value_on_the_grid_is_reached_despite_binary_fractions(top: float) -> None:
    """2.3 * 100 is 229.99999999999997: the grid's last value must still be 2.3, not 2.29."""
    cfg = CapacitySearchConfig(
        benchmark_config=BenchmarkConfig(), start_value=0.01, max_value=top, precision=2
    )
    assert rounder(cfg, False)(top) == top
