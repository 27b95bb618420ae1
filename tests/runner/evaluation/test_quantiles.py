"""Exact quantiles with linear interpolation: every path returns polars' numbers."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from veeksha.runner.evaluation import quantiles
from veeksha.runner.evaluation.quantiles import exact_quantiles, quantiles_inplace, select_ranks

GRID = [i / 100 for i in range(101)]


def test_hand_computed_linear_interpolation():
    # n = 4: h = 3q. q=0.5 → h=1.5 → 2 + (3 − 2)·0.5; q=0.9 → h=2.7 → 3 + (10 − 3)·0.7
    assert exact_quantiles(np.array([10.0, 1.0, 3.0, 2.0]), [0.0, 0.5, 0.9, 1.0]) == pytest.approx(
        [1.0, 2.5, 7.9, 10.0]
    )


def test_empty_sample_gives_none():
    assert exact_quantiles(np.array([]), [0.5, 0.99]) == [None, None]
    assert quantiles_inplace(np.array([]), [0.5]) == [None]


def test_single_value():
    assert exact_quantiles(np.array([0.25]), [0.0, 0.5, 1.0]) == [0.25, 0.25, 0.25]


@pytest.mark.parametrize(
    "make",
    [
        lambda rng: rng.lognormal(-3.5, 0.4, 50_000),  # latency-like
        lambda rng: np.round(rng.normal(0.0082, 1e-7, 50_000), 9),  # near-constant: deep levels
        lambda rng: np.concatenate([np.zeros(20_000), rng.random(30_000)]),  # many zeros
        lambda rng: np.full(50_000, 0.125),  # constant
        lambda rng: rng.normal(0, 1, 50_000),  # negative values: the sorting path
    ],
)
def test_radix_select_matches_sorting_and_polars(make, monkeypatch):
    values = make(np.random.default_rng(7))
    expected = [pl.Series(values).quantile(q, "linear") for q in GRID]
    assert exact_quantiles(values, GRID) == expected  # sorting path
    assert quantiles_inplace(values.copy(), GRID) == expected  # partition path
    monkeypatch.setattr(quantiles, "SORT_LIMIT", 1_000)  # force the radix select (and deep levels)
    assert exact_quantiles(values, GRID) == expected


def test_select_ranks_does_not_modify_its_input():
    values = np.random.default_rng(1).random(10_000)
    before = values.copy()
    ranks = np.array([0, 17, 5000, 9999])
    assert select_ranks(values, ranks) == np.sort(before)[ranks].tolist()
    assert np.array_equal(values, before)


def test_a_negative_zero_is_ordered_as_zero_by_the_radix_select(monkeypatch):
    # -0.0 is not < 0, but its sign bit makes its bit pattern the largest of all: the radix select
    # once ranked it above every positive value and ran past the end of its buckets.
    values = np.random.default_rng(3).random(5_000)
    values[[10, 2_000]] = -0.0
    expected = [pl.Series(values).quantile(q, "linear") for q in GRID]
    monkeypatch.setattr(quantiles, "SORT_LIMIT", 1_000)  # force the radix select
    assert exact_quantiles(values, GRID) == expected
    assert select_ranks(values, np.array([0, 1, 2, 4_999])) == np.sort(values)[[0, 1, 2, 4_999]].tolist()
