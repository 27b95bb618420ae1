"""Exact quantiles with linear interpolation, from a few values up to hundreds of millions.

One formula everywhere (polars' and numpy's "linear", Hyndman-Fan type 7): for n sorted values and
quantile q, h = (n − 1)·q, lo = ⌊h⌋, hi = ⌈h⌉, value = x[lo] + (x[hi] − x[lo])·(h − lo). Only the
order statistics x[lo], x[hi] are needed, so large arrays (the pooled tbc gaps of a long run) use a
radix select on the IEEE-754 bit patterns instead of a full sort: two or three linear passes, no
copy of the data. Small arrays are sorted (or partitioned) directly; every path returns the same
order statistics, hence the same doubles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Above this many values the radix select beats sorting a copy (and needs no copy).
SORT_LIMIT = 4_000_000
_SLICE = 4_000_000  # values per pass step: bounds the temporaries
_LEVELS = ((40, 24), (20, 20), (0, 20))  # (shift, width) of the bit fields, top first


def interpolation_points(n: int, qs: Sequence[float]) -> list[tuple[int, int, float]]:
    """(lo, hi, fraction) per quantile for n values (n > 0)."""
    points = []
    for q in qs:
        h = (n - 1) * q
        lo = int(np.floor(h))
        hi = min(int(np.ceil(h)), n - 1)
        points.append((lo, hi, h - lo))
    return points


def _interpolate(points: list[tuple[int, int, float]], stat: dict[int, float]) -> list[float | None]:
    out: list[float | None] = []
    for lo, hi, frac in points:
        a, b = stat[lo], stat[hi]
        out.append(a if hi == lo else a + (b - a) * frac)
    return out


def exact_quantiles(values: np.ndarray, qs: Sequence[float]) -> list[float | None]:
    """Exact linear-interpolation quantiles of `values` (float64, no NaN); None when empty."""
    n = len(values)
    if n == 0:
        return [None] * len(qs)
    points = interpolation_points(n, qs)
    ranks = sorted({r for lo, hi, _ in points for r in (lo, hi)})
    if n <= SORT_LIMIT:
        ordered = np.sort(values)
        stat = {r: float(ordered[r]) for r in ranks}
    else:
        stat = dict(zip(ranks, select_ranks(values, np.array(ranks, dtype=np.int64)), strict=True))
    return _interpolate(points, stat)


def quantiles_inplace(values: np.ndarray, qs: Sequence[float]) -> list[float | None]:
    """Same result as exact_quantiles, partitioning `values` in place (it must be a scratch copy)."""
    n = len(values)
    if n == 0:
        return [None] * len(qs)
    points = interpolation_points(n, qs)
    ranks = sorted({r for lo, hi, _ in points for r in (lo, hi)})
    if n <= SORT_LIMIT:
        values.sort()  # numpy's SIMD sort beats a multi-rank partition at these sizes
    else:
        values.partition(ranks)
    return _interpolate(points, {r: float(values[r]) for r in ranks})


# ------------------------------------------------------------------ radix select
#
# For doubles with a clear sign bit the IEEE-754 bit pattern, read as an unsigned integer, orders
# exactly like the value, so the selection runs on a zero-copy uint64 view. -0.0 is not < 0 yet has
# its sign bit set (its pattern is the largest of all), so the test is on the sign bit, not on < 0.
_SIGN_BIT = 1 << 63


def select_ranks(values: np.ndarray, ranks: np.ndarray) -> list[float]:
    """The order statistics of `values` at `ranks` (0-based) without a full sort.

    Narrows each rank to a bucket of bit patterns sharing their top bits (one histogram pass per
    level); all buckets small enough are gathered in one more pass and sorted. A bucket still too
    big (a huge run of near-equal values) goes one level deeper; at the last level a bucket is a
    single bit pattern, i.e. one exact value. Arrays with a sign bit set (a negative value, or -0.0)
    are sorted instead.
    """
    keys = values.view(np.uint64)
    if int(keys.max()) >= _SIGN_BIT:  # one pass, no temporary array
        ordered = np.sort(values)
        return [float(ordered[r]) for r in ranks]
    found: dict[int, float] = {}
    small: list[_Bucket] = []
    work = [(0, 0, [int(r) for r in ranks], 0)]  # (level, key prefix above this level, ranks, base)
    while work:
        level, parent, group_ranks, base = work.pop()
        shift, width = _LEVELS[level]
        first_bucket, hist = _histogram(keys, level, parent)
        starts = base + np.concatenate(([0], np.cumsum(hist)[:-1]))
        where = (np.searchsorted(starts, group_ranks, side="right") - 1).tolist()
        for b in sorted(set(where)):
            inside = [r for r, rb in zip(group_ranks, where, strict=True) if rb == b]
            key_prefix = (parent << width) | (first_bucket + b)
            if shift == 0:
                value = float(np.array([key_prefix], dtype=np.uint64).view(np.float64)[0])
                found.update(dict.fromkeys(inside, value))
            elif hist[b] <= SORT_LIMIT:
                small.append(_Bucket(level, parent, first_bucket + b, inside, int(starts[b])))
            else:
                work.append((level + 1, key_prefix, inside, int(starts[b])))
    if small:
        found.update(_gather_and_pick(values, keys, small))
    return [found[int(r)] for r in ranks]


@dataclass
class _Bucket:
    level: int
    parent: int  # key bits above this level's field (0 at the top level)
    index: int  # the value of this level's bit field
    ranks: list[int]
    base: int  # rank of the bucket's smallest value

    @property
    def start_key(self) -> int:
        shift, width = _LEVELS[self.level]
        return ((self.parent << width) | self.index) << shift


def _fields(part: np.ndarray, level: int, parent: int) -> tuple[np.ndarray, np.ndarray | None]:
    """This level's bit field of each key (as int64), and which keys lie under `parent`."""
    shift, width = _LEVELS[level]
    field = (part >> np.uint64(shift)).view(np.int64)  # fits in int64: at most 24 bits, or shifted
    if level == 0:
        return field, None
    under = (part >> np.uint64(shift + width)) == np.uint64(parent)
    return field[under] & ((1 << width) - 1), under


def _histogram(keys: np.ndarray, level: int, parent: int) -> tuple[int, np.ndarray]:
    """(first bucket, counts per bucket) of this level's bit field among keys under `parent`."""
    shift, width = _LEVELS[level]
    if level == 0:
        lo, hi = int(keys.min()) >> shift, int(keys.max()) >> shift
    else:
        lo, hi = 0, (1 << width) - 1
    hist = np.zeros(hi - lo + 1, dtype=np.int64)
    for i in range(0, len(keys), _SLICE):
        field, _ = _fields(keys[i : i + _SLICE], level, parent)
        hist += np.bincount(field - lo, minlength=len(hist))
    return lo, hist


def _gather_and_pick(values: np.ndarray, keys: np.ndarray, buckets: list[_Bucket]) -> dict[int, float]:
    """Collect the values of the chosen buckets in one pass, sort them, read the ranks.

    Buckets of one parent are marked in a lookup table over that parent's bit field. Buckets are
    disjoint ranges of bit patterns, so once sorted the collected values are grouped bucket by
    bucket; a bucket's first position is the count of collected values below its start.
    """
    tables: dict[tuple[int, int], tuple[int, np.ndarray]] = {}
    for (level, parent), indices in _group(buckets).items():
        lo = min(indices)
        lut = np.zeros(max(indices) - lo + 1, dtype=bool)
        lut[np.array(indices, dtype=np.int64) - lo] = True
        tables[(level, parent)] = (lo, lut)
    picked: list[np.ndarray] = []
    for i in range(0, len(keys), _SLICE):
        part_keys, part = keys[i : i + _SLICE], values[i : i + _SLICE]
        hit = np.zeros(len(part), dtype=bool)
        for (level, parent), (lo, lut) in tables.items():
            field, under = _fields(part_keys, level, parent)
            field = field - lo
            ok = (field >= 0) & (field < len(lut))
            marked = np.zeros(len(field), dtype=bool)
            marked[ok] = lut[field[ok]]
            if under is None:
                hit |= marked
            else:
                hit[under] |= marked
        picked.append(part[hit])
    ordered = np.sort(np.concatenate(picked))
    ordered_keys = ordered.view(np.uint64)
    found = {}
    for bucket in buckets:
        first = int(np.searchsorted(ordered_keys, np.uint64(bucket.start_key), side="left"))
        for r in bucket.ranks:
            found[r] = float(ordered[first + r - bucket.base])
    return found


def _group(buckets: list[_Bucket]) -> dict[tuple[int, int], list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for b in buckets:
        groups.setdefault((b.level, b.parent), []).append(b.index)
    return groups
