"""Output tokens per second of *arrival*: each content chunk carries its share of the request's tokens.

A request with n output tokens over k content chunks gives chunk j the tokens ⌊(j+1)n/k⌋ − ⌊jn/k⌋
(integers that add up to n). The shares telescope: chunks [a, b) together carry ⌊bn/k⌋ − ⌊an/k⌋, so
only the chunk index at each second boundary matters. Chunk times are rebuilt in integer
nanoseconds (first chunk = client_picked_up_at + ttfc, then + each tbc gap), so the per-record
version (live writer) and the vectorised one (rebuild) agree exactly.
"""

from __future__ import annotations

import bisect
import itertools

import numpy as np
from veeksha.runner.evaluation.frame import gather_segments

NS = 1_000_000_000
_BAND_BITS = 40  # per-request band of the key: requests up to ~18 min (else the slow path)


def _sec(ns: int) -> int:
    return max(0, ns // NS)


def tokens_per_second(t0_ns: int, gaps: list[float] | None, n_tokens: int) -> dict[int, int]:
    """{second: tokens received in it} for one request."""
    steps = [round(g * NS) for g in gaps or ()]
    if steps and min(steps) < 0:  # out-of-order chunks: one by one
        times = list(itertools.accumulate(steps, initial=t0_ns))
        k = len(times)
        out: dict[int, int] = {}
        for j, t in enumerate(times):
            out[_sec(t)] = out.get(_sec(t), 0) + ((j + 1) * n_tokens) // k - (j * n_tokens) // k
        return out
    first, last = _sec(t0_ns), _sec(t0_ns + sum(steps))
    if first == last:  # the usual request: all its chunks in one second (the live writer's hot path)
        return {first: n_tokens}
    times = list(itertools.accumulate(steps, initial=t0_ns))
    k = len(times)
    cuts = [0, *(bisect.bisect_left(times, s * NS) for s in range(first + 1, last + 1)), k]
    shares = [(c * n_tokens) // k for c in cuts]
    return {first + i: shares[i + 1] - shares[i] for i in range(last - first + 1)}


def batch_tokens_per_second(
    values: np.ndarray, starts: np.ndarray, lengths: np.ndarray, t0: np.ndarray, n: np.ndarray
) -> dict[int, int]:
    """tokens_per_second summed over a batch of requests, vectorised.

    Request r's gaps are values[starts[r] : starts[r] + lengths[r]]; t0 in ns; n tokens. Each
    request's chunk times (relative to its t0) are shifted into its own band of a single increasing
    key array, so one searchsorted finds the chunk index at every second boundary of every request.
    """
    if len(lengths) == 0:
        return {}
    g = np.rint(gather_segments(values, starts, lengths) * 1e9).astype(np.int64)
    seg_lo = np.zeros(len(lengths), dtype=np.int64)  # each request's first gap in `g`
    np.cumsum(lengths[:-1], out=seg_lo[1:])
    key = np.cumsum(g)
    before = np.where(seg_lo > 0, key[np.maximum(seg_lo - 1, 0)], 0) if len(key) else np.zeros_like(seg_lo)
    last = np.where(lengths > 0, key[np.maximum(seg_lo + lengths - 1, 0)], 0) if len(key) else before
    span = np.where(lengths > 0, last - before, 0)  # last chunk − first chunk, ns
    band = np.arange(len(lengths), dtype=np.int64) << _BAND_BITS
    if (len(g) and int(g.min()) < 0) or int(span.max()) + NS >= 1 << _BAND_BITS:
        return _chunk_by_chunk(g, seg_lo, lengths, t0, n)  # out-of-order chunks or an hours-long request
    key += np.repeat(band - before, lengths)  # request r's chunk j >= 1 → r·2^B + (time − t0)
    first_sec = np.maximum(t0 // NS, 0)
    num_cuts = np.maximum((t0 + span) // NS, 0) - first_sec  # second boundaries each request crosses
    # Boundary i of request r is second first_sec + i (i >= 1): chunks before it = 1 + gaps-chunks
    # with time < boundary, found in r's band.
    req = np.repeat(np.arange(len(lengths)), num_cuts)
    cut_lo = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(num_cuts[:-1], out=cut_lo[1:])
    i = np.arange(len(req), dtype=np.int64) - cut_lo[req] + 1
    boundary = (first_sec[req] + i) * NS - t0[req]
    cuts = np.searchsorted(key, band[req] + boundary, side="left") - seg_lo[req] + 1
    # Per request, segments [0, c1), [c1, c2), ..., [cm, k): one per second first_sec .. first_sec+m.
    k = lengths + 1
    per_req = num_cuts + 1
    seg_req = np.repeat(np.arange(len(lengths)), per_req)
    seg_first = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(per_req[:-1], out=seg_first[1:])
    pos = np.arange(len(seg_req), dtype=np.int64) - seg_first[seg_req]  # segment index within request
    lower = np.zeros(len(seg_req), dtype=np.int64)
    upper = k[seg_req].copy()
    has_lower = pos > 0
    lower[has_lower] = cuts[cut_lo[seg_req[has_lower]] + pos[has_lower] - 1]
    has_upper = pos < num_cuts[seg_req]
    upper[has_upper] = cuts[cut_lo[seg_req[has_upper]] + pos[has_upper]]
    nn, kk = n[seg_req], k[seg_req]
    tokens = (upper * nn) // kk - (lower * nn) // kk
    return _sum_by_second(first_sec[seg_req] + pos, tokens)


def _chunk_by_chunk(
    g: np.ndarray, seg_lo: np.ndarray, lengths: np.ndarray, t0: np.ndarray, n: np.ndarray
) -> dict[int, int]:
    """The per-chunk definition, for batches holding out-of-order chunks (negative gaps)."""
    total: dict[int, int] = {}
    for r in range(len(lengths)):
        gaps = g[seg_lo[r] : seg_lo[r] + lengths[r]]
        times = np.concatenate(([t0[r]], t0[r] + np.cumsum(gaps)))
        k = len(times)
        j = np.arange(k, dtype=np.int64)
        tokens = ((j + 1) * int(n[r])) // k - (j * int(n[r])) // k
        for s, tok in zip(np.maximum(times // NS, 0).tolist(), tokens.tolist(), strict=True):
            total[s] = total.get(s, 0) + tok
    return total


def _sum_by_second(second: np.ndarray, tokens: np.ndarray) -> dict[int, int]:
    if len(second) == 0:
        return {}
    lo = int(second.min())
    sums = np.bincount(second - lo, weights=tokens)
    return {lo + int(i): int(sums[i]) for i in np.flatnonzero(sums)}
