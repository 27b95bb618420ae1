"""Tokens per second of arrival: per-record, vectorised and chunk-by-chunk definitions agree."""

from __future__ import annotations

import numpy as np
from veeksha.runner.evaluation.stream_tokens import NS, batch_tokens_per_second, tokens_per_second


def _by_chunk(t0, gaps, n):
    """The definition: chunk j of k carries floor((j+1)n/k) - floor(jn/k) tokens at its own time."""
    times = [t0]
    for g in gaps:
        times.append(times[-1] + round(g * NS))
    k, out = len(times), {}
    for j, t in enumerate(times):
        out[max(0, t // NS)] = out.get(max(0, t // NS), 0) + ((j + 1) * n) // k - (j * n) // k
    return {s: v for s, v in out.items() if v}


def test_hand_computed_split():
    # 7 tokens over 4 chunks at 0.5, 0.9, 1.1, 2.2 s: shares 1, 2, 2, 2 → {0: 3, 1: 2, 2: 2}
    assert tokens_per_second(500_000_000, [0.4, 0.2, 1.1], 7) == {0: 3, 1: 2, 2: 2}


def test_vectorised_equals_per_record_and_definition():
    rng = np.random.default_rng(0)
    requests = []
    for _ in range(300):
        k = int(rng.integers(0, 60))
        gaps = np.round(rng.exponential(0.08, k), 9)
        requests.append((int(rng.integers(0, 30 * NS)), gaps, int(rng.integers(0, 200))))
    requests.append((-5_000_000, np.array([0.002, 0.5]), 3))  # starts before the run start
    values = np.concatenate([g for _, g, _ in requests])
    lengths = np.array([len(g) for _, g, _ in requests])
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    t0 = np.array([t for t, _, _ in requests])
    n = np.array([k for _, _, k in requests])
    expected: dict[int, int] = {}
    for t, g, k in requests:
        one = tokens_per_second(t, g.tolist(), k)
        assert {s: v for s, v in one.items() if v} == _by_chunk(t, g.tolist(), k)
        for s, v in one.items():
            expected[s] = expected.get(s, 0) + v
    got = batch_tokens_per_second(values, starts, lengths, t0, n)
    assert {s: v for s, v in got.items() if v} == {s: v for s, v in expected.items() if v}
    # Not adjacent in the array (gathered), and out of order chunks (slow path): same answers.
    order = np.arange(len(requests))[::-1]
    got = batch_tokens_per_second(values, starts[order], lengths[order], t0[order], n[order])
    assert {s: v for s, v in got.items() if v} == {s: v for s, v in expected.items() if v}


def test_out_of_order_chunks_fall_back_to_chunk_by_chunk():
    gaps = [0.6, -0.3, 0.9]
    assert {s: v for s, v in tokens_per_second(0, gaps, 8).items() if v} == _by_chunk(0, gaps, 8)
    got = batch_tokens_per_second(np.array(gaps), np.array([0]), np.array([3]), np.array([0]), np.array([8]))
    assert {s: v for s, v in got.items() if v} == _by_chunk(0, gaps, 8)


def test_a_stream_within_one_second_puts_all_its_tokens_in_that_second():
    # The live writer's usual request: 64 chunks 10 ms apart, all inside second 3.
    gaps = [0.01] * 63
    assert (
        tokens_per_second(3 * NS + 50_000_000, gaps, 64)
        == {3: 64}
        == _by_chunk(3 * NS + 50_000_000, gaps, 64)
    )
    # One nanosecond short of the boundary still counts in the second; at the boundary it does not.
    assert tokens_per_second(NS - 1 - round(0.63 * NS), gaps, 64) == {0: 64}
    assert tokens_per_second(NS - round(0.63 * NS), gaps, 64) == _by_chunk(NS - round(0.63 * NS), gaps, 64)


def test_streams_ending_next_to_a_second_boundary_agree_with_the_definition():
    # The one-second shortcut decides from the float sum of the gaps only well inside the second;
    # right next to the boundary the exact nanosecond steps decide.
    gaps = [0.0103] * 63
    span = sum(round(g * NS) for g in gaps)
    for before_boundary in (-3, -1, 0, 1, 2, 50, 99_999, 100_001, 5_000_000):
        t0 = 7 * NS - span - before_boundary
        assert {s: v for s, v in tokens_per_second(t0, gaps, 64).items() if v} == _by_chunk(t0, gaps, 64)
