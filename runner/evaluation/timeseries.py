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

Live writing. The recorder feeds the writer every dispatch as it happens (`add_dispatch`, from the
driver's trace lines, sent every 100 ms) and every record when its request ends (`add`). All columns
are computed from the records, exactly as the rebuild does; the dispatches only tell the writer which
requests are still open. Row k is final, and appended, once
  - `now ≥ k + 1 + lag_s`: every dispatch and completion of second k has reached the recorder (lag_s
    is a few seconds; trace lines and records arrive ≤ ~0.3 s after the event), and
  - no request dispatched before `k + 1` is still open: its record (its end for `in_flight`, its
    chunk times for `output_tokens_per_s`) is still to come.
So a row is written a few seconds after it ends, or as soon as the longest request in flight during
it has ended. Warmup requests hold rows too (trace lines do not say which requests are warmup) but
add nothing to them. Open requests are matched to their records by dispatch time (the same float on
both sides), and rows past the last second a record touched are written only while a request is open
(its record will touch a later second), so the live rows are exactly the rebuild's.

The latency quantiles of second k are computed once its completions are all in (`k + 1 + lag_s`),
keeping memory bounded while a long request holds the row. A record that would still change a
written row or a computed quantile (it arrived later than the lag: an overloaded recorder, a missed
trace line) marks the file stale, and `close` deletes it, so the end-of-run evaluation rebuilds it
from the records: the file on disk is either exact or absent, never silently wrong.
"""

from __future__ import annotations

import heapq
import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from veeksha.runner.evaluation.frame import FAILED_STATUSES
from veeksha.runner.evaluation.quantiles import quantiles_inplace
from veeksha.runner.evaluation.stream_tokens import NS, tokens_per_second
from veeksha.runner.evaluation.timeseries_rebuild import ROW_QUANTILES, build_timeseries
from veeksha.shared.jsonio import naming_errors, write_atomic
from veeksha.shared.records import (
    CLIENT_COMPLETED_AT,
    CLIENT_PICKED_UP_AT,
    SCHEDULER_DISPATCHED_AT,
    SUCCESS,
    TBC,
    TIMESERIES_COLUMNS,
    TTFC,
)

COLUMNS = TIMESERIES_COLUMNS
# Trace lines and records reach the recorder ≤ ~0.3 s after the event (100 ms batches + the pipe);
# the recorder flushes once a second. 3 s leaves room for a busy recorder.
DEFAULT_LAG_S = 3.0

__all__ = ["COLUMNS", "TimeseriesWriter", "build_timeseries", "write_timeseries"]


def _ns(t: float | None) -> int | None:
    return None if t is None else round(t * NS)


def _sec(ns: int) -> int:
    return max(0, ns // NS)


def format_row(values: tuple[Any, ...]) -> str:
    """One CSV line: ints as ints, floats in shortest round-trip form, None as an empty cell."""
    return ",".join("" if v is None else repr(v) if isinstance(v, float) else str(v) for v in values)


HEADER = ",".join(COLUMNS)


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
    """Builds timeseries.csv while the run goes: `add_dispatch` per dispatch, `add` per finalized record."""

    def __init__(self, path: Path, lag_s: float = DEFAULT_LAG_S) -> None:
        self.path = path
        self.lag_s = lag_s
        self.rows: dict[int, _Row] = {}
        self.next_row = 0  # first row not yet written
        self.frozen_below = 0  # rows below this have their quantiles computed
        self.last_second = -1  # last second any record touched
        self.stale = False
        # Requests dispatched whose record has not arrived: dispatch ns -> count, and a min-heap of
        # those ns with lazy deletion. A record may come before its dispatch (same batch): counts
        # then dip below zero until the dispatch arrives.
        self.open: dict[int, int] = {}
        self.open_heap: list[int] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(HEADER + "\n")

    def add_dispatch(self, dispatched_at: float | None) -> None:
        """A request was dispatched at `dispatched_at` (seconds since the run start; None: never sent)."""
        if dispatched_at is None:
            return
        d_ns = round(dispatched_at * NS)
        if self._count_open(d_ns, +1) > 0:
            heapq.heappush(self.open_heap, d_ns)

    def _count_open(self, d_ns: int, step: int) -> int:
        count = self.open.get(d_ns, 0) + step
        if count:
            self.open[d_ns] = count
        else:
            del self.open[d_ns]
        return count

    def _oldest_open(self) -> int | None:
        """Dispatch ns of the oldest request still open (None: none)."""
        heap = self.open_heap
        while heap and self.open.get(heap[0], 0) <= 0:
            heapq.heappop(heap)
        return heap[0] if heap else None

    def _row(self, second: int, *, quantiles: bool = False) -> _Row:
        if second < self.next_row or (quantiles and second < self.frozen_below):
            self.stale = True
        self.last_second = max(self.last_second, second)
        row = self.rows.get(second)
        if row is None:
            row = self.rows[second] = _Row()
        return row

    def add(self, record: dict[str, Any]) -> None:
        d_ns = _ns(record.get(SCHEDULER_DISPATCHED_AT))
        if d_ns is not None:
            self._count_open(d_ns, -1)  # warmup requests too: their dispatches held rows
        if record.get("is_warmup"):
            return
        status = record.get("status")
        end = record.get(CLIENT_COMPLETED_AT)
        end = record.get("result_processed_at") if end is None else end
        e_ns = _ns(end) if end is not None else d_ns
        for ns in (d_ns, e_ns):
            if ns is not None:
                self.last_second = max(self.last_second, _sec(ns))
        if d_ns is not None:
            self._row(_sec(d_ns)).dispatched += 1
            self._add_in_flight(d_ns, d_ns if e_ns is None else e_ns)
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
        ttfc, tbc, sent = record.get(TTFC), record.get(TBC), record.get(CLIENT_PICKED_UP_AT)
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
        settled = math.floor(now_s - self.lag_s) - 1  # last second whose events have all arrived
        while self.frozen_below <= settled:
            row = self.rows.get(self.frozen_below)
            if row is not None:
                row.freeze_quantiles()
            self.frozen_below += 1
        oldest = self._oldest_open()
        if oldest is None:
            last = min(settled, self.last_second)  # no trailing rows the run may never reach
        else:
            last = min(settled, _sec(oldest) - 1)  # that request's record will touch _sec(oldest)
        self._write_through(last)

    def close(self, end_s: float) -> None:
        """Write the remaining rows (up to the last second any record touched).

        A stale file is deleted instead: the end-of-run evaluation rebuilds it from the records.
        """
        if self.next_row - 1 > self.last_second:
            # Rows were written for a request whose record never came (a driver that died): the
            # rebuild, from the records alone, ends earlier.
            self.stale = True
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
            with naming_errors(self.path), self.path.open("a") as f:
                f.write("".join(lines))


def write_timeseries(path: Path, ts: pl.DataFrame) -> None:
    """Write a built time series with the live writer's formatting (atomic)."""
    lines = [HEADER] + [format_row(row) for row in ts.select(COLUMNS).iter_rows()]
    write_atomic(path, "\n".join(lines) + "\n")
