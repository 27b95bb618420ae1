"""Rebuilding metrics/timeseries.csv from a whole record set, vectorised (definitions: timeseries.py).

Same integer-nanosecond arithmetic as the live writer, so both produce the same bytes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import polars as pl
from veeksha.runner.evaluation.frame import Records, gather_segments
from veeksha.runner.evaluation.quantiles import quantiles_inplace
from veeksha.runner.evaluation.stream_tokens import NS, batch_tokens_per_second
from veeksha.shared.records import CLIENT_PICKED_UP_AT, SCHEDULER_DISPATCHED_AT, TTFC

ROW_QUANTILES = (0.5, 0.99)
_BATCH_VALUES = 4_000_000  # gaps handled per vectorised step (bounds the temporaries)


def build_timeseries(records: Records) -> pl.DataFrame:
    """The time series of a whole record set, by the same definitions as the live writer."""
    base = (
        records.df.lazy()
        .filter(~pl.col("is_warmup"))
        .select(
            "row",
            "ok",
            "failed",
            "num_output_tokens",
            TTFC,
            CLIENT_PICKED_UP_AT,
            "has_tbc",
            d_ns=_to_ns(SCHEDULER_DISPATCHED_AT),
            e_ns=pl.coalesce(_to_ns("end_at"), _to_ns(SCHEDULER_DISPATCHED_AT)),
        )
        .with_columns(
            d_sec=(pl.col("d_ns") // NS).clip(lower_bound=0),
            e_sec=(pl.col("e_ns") // NS).clip(lower_bound=0),
        )
        .collect()
    )
    parts = [
        _counts(base),
        _in_flight(base),
        _stream_tokens(records, base),
        _row_quantiles(records, base),
    ]
    ends = [base["d_sec"].max(), base["e_sec"].max(), parts[2]["second"].max()]
    last = max((int(v) for v in ends if isinstance(v, int | float)), default=-1)
    out = pl.DataFrame({"second": pl.int_range(0, last + 1, dtype=pl.Int64, eager=True)})
    for part in parts:
        out = out.join(part, on="second", how="left", maintain_order="left")  # rows stay by second
    ints = ("dispatched", "completed", "errored", "output_tokens", "output_tokens_per_s", "in_flight_ns")
    out = out.with_columns(pl.col(c).fill_null(0) for c in ints)
    # numpy divides exactly like Python's int / int (polars may multiply by the reciprocal).
    in_flight = pl.Series(out["in_flight_ns"].to_numpy() / NS, dtype=pl.Float64)
    return out.select(
        elapsed_s=pl.col("second"),
        dispatched="dispatched",
        completed="completed",
        errored="errored",
        in_flight=in_flight,
        output_tokens="output_tokens",
        output_tokens_per_s="output_tokens_per_s",
        request_throughput="completed",
        ttfc_p50="ttfc_p50",
        ttfc_p99="ttfc_p99",
        tbc_p50="tbc_p50",
        tbc_p99="tbc_p99",
    )


def _to_ns(col: str) -> pl.Expr:
    return (pl.col(col) * 1e9).round().cast(pl.Int64)


def _counts(base: pl.DataFrame) -> pl.DataFrame:
    dispatched = base.filter(pl.col("d_ns").is_not_null()).group_by(second="d_sec").agg(dispatched=pl.len())
    ended = (
        base.filter(pl.col("e_ns").is_not_null())
        .group_by(second="e_sec")
        .agg(
            completed=pl.col("ok").sum(),
            errored=pl.col("failed").sum(),
            output_tokens=pl.col("num_output_tokens").filter(pl.col("ok")).fill_null(0).sum(),
        )
    )
    return dispatched.join(ended, on="second", how="full", coalesce=True).with_columns(
        pl.col(c).cast(pl.Int64) for c in ("dispatched", "completed", "errored", "output_tokens")
    )


def _in_flight(base: pl.DataFrame) -> pl.DataFrame:
    spans = base.filter(pl.col("d_ns").is_not_null()).select(
        "d_ns", "e_ns", second=pl.int_ranges("d_sec", pl.col("e_sec") + 1)
    )
    overlap = pl.min_horizontal("e_ns", (pl.col("second") + 1) * NS) - pl.max_horizontal(
        "d_ns", pl.col("second") * NS
    )
    return (
        spans.explode("second")
        .drop_nulls("second")
        .group_by("second")
        .agg(in_flight_ns=overlap.clip(lower_bound=0).sum())
    )


def _stream_tokens(records: Records, base: pl.DataFrame) -> pl.DataFrame:
    """Tokens per second of chunk arrival, vectorised over batches of requests (integer ns)."""
    rows = base.filter(
        pl.col("ok") & pl.col(TTFC).is_not_null() & pl.col(CLIENT_PICKED_UP_AT).is_not_null()
    ).select(
        "row",
        n=pl.col("num_output_tokens").fill_null(0),
        t0=_to_ns(CLIENT_PICKED_UP_AT) + _to_ns(TTFC),
    )
    total: dict[int, int] = {}
    if rows.height == 0:
        return pl.DataFrame(schema={"second": pl.Int64, "output_tokens_per_s": pl.Int64})
    idx = rows["row"].to_numpy()
    n, t0 = rows["n"].to_numpy(), rows["t0"].to_numpy()
    starts = records.tbc_offsets[idx]
    lengths = records.tbc_offsets[idx + 1] - starts
    for lo, hi in _batches(lengths + 1):
        part = batch_tokens_per_second(records.tbc_values, starts[lo:hi], lengths[lo:hi], t0[lo:hi], n[lo:hi])
        for second, tokens in part.items():
            total[second] = total.get(second, 0) + tokens
    return pl.DataFrame(
        {"second": list(total), "output_tokens_per_s": list(total.values())},
        schema={"second": pl.Int64, "output_tokens_per_s": pl.Int64},
    )


def _batches(sizes: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive index ranges whose sizes sum to about _BATCH_VALUES each."""
    bounds = np.searchsorted(
        np.cumsum(sizes), np.arange(_BATCH_VALUES, sizes.sum() + _BATCH_VALUES, _BATCH_VALUES)
    )
    edges = sorted({0, len(sizes), *np.minimum(bounds + 1, len(sizes)).tolist()})
    return list(itertools.pairwise(edges))


def _row_quantiles(records: Records, base: pl.DataFrame) -> pl.DataFrame:
    """ttfc and tbc p50/p99 per completion second, over the successful requests completed in it."""
    ok = base.filter(pl.col("ok") & pl.col("e_ns").is_not_null()).sort("e_sec", maintain_order=True)
    out: dict[int, list[float | None]] = {}
    ttfc = ok.filter(pl.col(TTFC).is_not_null()).select("e_sec", TTFC)
    for second, values in _split(ttfc["e_sec"].to_numpy(), ttfc[TTFC].to_numpy()):
        out.setdefault(second, [None] * 4)[0:2] = quantiles_inplace(values.copy(), ROW_QUANTILES)
    with_tbc = ok.filter(pl.col("has_tbc"))
    idx = with_tbc["row"].to_numpy()
    secs = with_tbc["e_sec"].to_numpy()
    starts, lengths = records.tbc_offsets[idx], np.diff(records.tbc_offsets)[idx]
    for second, values in _gathered_by_second(records.tbc_values, starts, lengths, secs):
        out.setdefault(second, [None] * 4)[2:4] = quantiles_inplace(values, ROW_QUANTILES)
    names = ("ttfc_p50", "ttfc_p99", "tbc_p50", "tbc_p99")
    return pl.DataFrame(
        {"second": list(out), **{name: [v[i] for v in out.values()] for i, name in enumerate(names)}},
        schema={"second": pl.Int64, **dict.fromkeys(names, pl.Float64)},
    )


def _split(keys: np.ndarray, values: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(key, values) per run of equal keys in a key-sorted array."""
    if len(keys) == 0:
        return
    cuts = np.flatnonzero(np.diff(keys)) + 1
    bounds = [0, *cuts.tolist(), len(keys)]
    for a, b in itertools.pairwise(bounds):
        yield int(keys[a]), values[a:b]


def _gathered_by_second(
    values: np.ndarray, starts: np.ndarray, lengths: np.ndarray, secs: np.ndarray
) -> Iterator[tuple[int, np.ndarray]]:
    """(second, scratch copy of the pooled gaps of its requests), second by second, in batches."""
    if len(secs) == 0:
        return
    cuts = np.flatnonzero(np.diff(secs)) + 1
    bounds = np.array([0, *cuts.tolist(), len(secs)])
    per_second = np.add.reduceat(lengths, bounds[:-1]) if len(lengths) else np.zeros(0, dtype=np.int64)
    i = 0
    while i < len(bounds) - 1:
        # Take whole seconds until the batch holds about _BATCH_VALUES gaps.
        j, size = i, 0
        while j < len(bounds) - 1 and (j == i or size + per_second[j] <= _BATCH_VALUES):
            size += int(per_second[j])
            j += 1
        rows = slice(bounds[i], bounds[j])
        gathered = gather_segments(values, starts[rows], lengths[rows])
        if np.may_share_memory(gathered, values):
            gathered = gathered.copy()  # the caller sorts it: never the run's own gaps (a view)
        pos = 0
        for s in range(i, j):
            n = int(per_second[s])
            if n:
                yield int(secs[bounds[s]]), gathered[pos : pos + n]
            pos += n
        i = j
