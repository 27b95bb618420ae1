"""metrics/timeseries.csv: one row per whole second of the run, live and rebuilt (spec: outputs.md).

Row `elapsed_s = k` covers [k, k+1) seconds since the run start. Warmup requests are left out.
    dispatched            requests whose scheduler_dispatched_at falls in the second
    completed             successful requests whose completion falls in the second
    errored               failed requests (error, timeout) whose end falls in the second
    in_flight             time-averaged number of requests in flight during the second:
                          Σ overlap of [dispatched_at, end) with the second, / 1 s
    output_tokens         output tokens of the requests completed in the second
    output_tokens_per_s   output tokens *received* during the second: each content chunk of a
                          successful request carries its share of the request's tokens (token j of
                          n over k chunks: ⌊(j+1)n/k⌋ − ⌊jn/k⌋, integers), placed at the chunk's time
    request_throughput    completed requests per second (= completed, over a 1-s row)
    ttfc_p50/_p99, tbc_p50/_p99  exact quantiles over the requests completed in the second (tbc pools
                          their gaps); empty when none
`end` is client_completed_at, else result_processed_at (a cancelled request). Every time is taken to
whole nanoseconds first, so the live writer and the rebuild do the same integer arithmetic and write
the same bytes.

Live writing. Records reach the recorder when a request ends, so a row is final only once every
request that was in flight during it has ended. The writer therefore appends row k only when
`now ≥ k + 1 + lag_s`, with lag_s at least the longest a request can live (request timeout +
connect timeout, see `lag_seconds`); the latency quantiles of a second are computed `PERCENTILE_SETTLE_S`
after it ends, keeping memory bounded. A record that would still change a written row or a computed
quantile (it arrived later than that: an overloaded recorder, a request outliving its deadline)
marks the file stale, and `close` deletes it, so the end-of-run evaluation rebuilds it from the
records: the file on disk is either exact or absent, never silently wrong.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from veeksha.runner.evaluation.frame import FAILED_STATUSES, Records, gather_segments
from veeksha.runner.evaluation.quantiles import quantiles_inplace
from veeksha.runner.evaluation.stream_tokens import batch_tokens_per_second, tokens_per_second
from veeksha.shared.config import BenchmarkConfig
from veeksha.shared.jsonio import write_atomic
from veeksha.shared.records import SUCCESS

COLUMNS = (
    "elapsed_s",
    "dispatched",
    "completed",
    "errored",
    "in_flight",
    "output_tokens",
    "output_tokens_per_s",
    "request_throughput",
    "ttfc_p50",
    "ttfc_p99",
    "tbc_p50",
    "tbc_p99",
)
ROW_QUANTILES = (0.5, 0.99)
NS = 1_000_000_000
DEFAULT_LAG_S = 315.0  # default request_timeout (300) + connect_timeout (10) + margin
PERCENTILE_SETTLE_S = 5.0
_BATCH_VALUES = 4_000_000  # gaps handled per vectorised step of the rebuild (bounds temporaries)


def lag_seconds(cfg: BenchmarkConfig) -> float:
    """How long the live writer waits before a row is final: the longest a request can live."""
    return cfg.client.request_timeout + cfg.client.connect_timeout + 5.0


def _ns(t: float | None) -> int | None:
    return None if t is None else round(t * NS)


def _sec(ns: int) -> int:
    return max(0, ns // NS)


def format_row(values: tuple[Any, ...]) -> str:
    """One CSV line: ints as ints, floats in shortest round-trip form, None as an empty cell."""
    return ",".join("" if v is None else repr(v) if isinstance(v, float) else str(v) for v in values)


HEADER = ",".join(COLUMNS)


# ------------------------------------------------------------------ per-chunk token attribution


# ------------------------------------------------------------------ live writer


class _Row:
    __slots__ = (
        "completed",
        "dispatched",
        "errored",
        "in_flight_ns",
        "output_tokens",
        "quantiles",
        "stream_tokens",
        "tbc",
        "ttfc",
    )

    def __init__(self) -> None:
        self.dispatched = self.completed = self.errored = 0
        self.in_flight_ns = self.output_tokens = self.stream_tokens = 0
        self.ttfc: list[float] = []
        self.tbc: list[list[float]] = []  # the records' own lists, pooled when the row freezes
        self.quantiles: tuple[float | None, ...] | None = None

    def freeze_quantiles(self) -> None:
        if self.quantiles is None:
            ttfc = quantiles_inplace(np.array(self.ttfc, dtype=np.float64), ROW_QUANTILES)
            pooled = np.fromiter(itertools.chain.from_iterable(self.tbc), dtype=np.float64)
            self.quantiles = (*ttfc, *quantiles_inplace(pooled, ROW_QUANTILES))
            self.ttfc, self.tbc = [], []

    def values(self, second: int) -> tuple[Any, ...]:
        self.freeze_quantiles()
        assert self.quantiles is not None
        return (
            second,
            self.dispatched,
            self.completed,
            self.errored,
            self.in_flight_ns / NS,
            self.output_tokens,
            self.stream_tokens,
            self.completed,
            *self.quantiles,
        )


class TimeseriesWriter:
    """Builds timeseries.csv while records arrive (one `add` per finalized record)."""

    def __init__(self, path: Path, lag_s: float = DEFAULT_LAG_S) -> None:
        self.path = path
        self.lag_s = lag_s
        self.rows: dict[int, _Row] = {}
        self.next_row = 0  # first row not yet written
        self.frozen_below = 0  # rows below this have their quantiles computed
        self.last_second = -1  # last second any record touched
        self.stale = False
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(HEADER + "\n")

    def _row(self, second: int, *, quantiles: bool = False) -> _Row:
        if second < self.next_row or (quantiles and second < self.frozen_below):
            self.stale = True
        self.last_second = max(self.last_second, second)
        row = self.rows.get(second)
        if row is None:
            row = self.rows[second] = _Row()
        return row

    def add(self, record: dict[str, Any]) -> None:
        if record.get("is_warmup"):
            return
        status = record.get("status")
        d_ns = _ns(record.get("scheduler_dispatched_at"))
        end = record.get("client_completed_at")
        end = record.get("result_processed_at") if end is None else end
        e_ns = _ns(end) if end is not None else d_ns
        for ns in (d_ns, e_ns):
            if ns is not None:
                self.last_second = max(self.last_second, _sec(ns))
        if d_ns is not None:
            self._row(_sec(d_ns)).dispatched += 1
            self._add_in_flight(d_ns, e_ns)
        if e_ns is None:
            return
        if status == SUCCESS:
            self._add_success(record, _sec(e_ns))
        elif status in FAILED_STATUSES:
            self._row(_sec(e_ns)).errored += 1

    def _add_in_flight(self, d_ns: int, e_ns: int) -> None:
        for second in range(_sec(d_ns), _sec(e_ns) + 1):
            overlap = min(e_ns, (second + 1) * NS) - max(d_ns, second * NS)
            if overlap > 0:
                self._row(second).in_flight_ns += overlap

    def _add_success(self, record: dict[str, Any], second: int) -> None:
        row = self._row(second, quantiles=True)
        row.completed += 1
        n_out = record.get("num_output_tokens") or 0
        row.output_tokens += n_out
        ttfc, tbc, sent = record.get("ttfc"), record.get("tbc"), record.get("client_picked_up_at")
        if ttfc is not None:
            row.ttfc.append(ttfc)
        if tbc:
            row.tbc.append(tbc)
        if ttfc is not None and sent is not None:
            for sec, tokens in tokens_per_second(round(sent * NS) + round(ttfc * NS), tbc, n_out).items():
                if tokens:
                    self._row(sec).stream_tokens += tokens

    def flush(self, now_s: float) -> None:
        """Append every row that is final at `now_s` (seconds since the run start)."""
        settled = math.floor(now_s - PERCENTILE_SETTLE_S) - 1  # last second whose completions are in
        while self.frozen_below <= settled:
            row = self.rows.get(self.frozen_below)
            if row is not None:
                row.freeze_quantiles()
            self.frozen_below += 1
        self._write_through(min(math.floor(now_s - self.lag_s) - 1, self.last_second))

    def close(self, end_s: float) -> None:
        """Write the remaining rows (up to the last second any record touched).

        A stale file is deleted instead: the end-of-run evaluation rebuilds it from the records.
        """
        self._write_through(self.last_second)
        if self.stale:
            self.path.unlink(missing_ok=True)

    def _write_through(self, last: int) -> None:
        lines = []
        while self.next_row <= last:
            row = self.rows.pop(self.next_row, None) or _Row()
            lines.append(format_row(row.values(self.next_row)) + "\n")
            self.next_row += 1
        self.frozen_below = max(self.frozen_below, self.next_row)
        if lines:
            with self.path.open("a") as f:
                f.write("".join(lines))


# ------------------------------------------------------------------ rebuild from all records


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
            "ttfc",
            "client_picked_up_at",
            "has_tbc",
            d_ns=_to_ns("scheduler_dispatched_at"),
            e_ns=pl.coalesce(_to_ns("end_at"), _to_ns("scheduler_dispatched_at")),
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
    last = max((int(v) for v in ends if v is not None), default=-1)
    out = pl.DataFrame({"second": pl.int_range(0, last + 1, dtype=pl.Int64, eager=True)})
    for part in parts:
        out = out.join(part, on="second", how="left")
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
        pl.col("ok") & pl.col("ttfc").is_not_null() & pl.col("client_picked_up_at").is_not_null()
    ).select(
        "row",
        n=pl.col("num_output_tokens").fill_null(0),
        t0=_to_ns("client_picked_up_at") + _to_ns("ttfc"),
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
    ttfc = ok.filter(pl.col("ttfc").is_not_null()).select("e_sec", "ttfc")
    for second, values in _split(ttfc["e_sec"].to_numpy(), ttfc["ttfc"].to_numpy()):
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


def _split(keys: np.ndarray, values: np.ndarray):
    """(key, values) per run of equal keys in a key-sorted array."""
    if len(keys) == 0:
        return
    cuts = np.flatnonzero(np.diff(keys)) + 1
    bounds = [0, *cuts.tolist(), len(keys)]
    for a, b in itertools.pairwise(bounds):
        yield int(keys[a]), values[a:b]


def _gathered_by_second(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray, secs: np.ndarray):
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
        pos = 0
        for s in range(i, j):
            n = int(per_second[s])
            if n:
                yield int(secs[bounds[s]]), gathered[pos : pos + n]
            pos += n
        i = j


def write_timeseries(path: Path, ts: pl.DataFrame) -> None:
    """Write a built time series with the live writer's formatting (atomic)."""
    lines = [HEADER] + [format_row(row) for row in ts.select(COLUMNS).iter_rows()]
    write_atomic(path, "\n".join(lines) + "\n")
