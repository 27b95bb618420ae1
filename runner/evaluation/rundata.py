"""What every evaluator shares: the measured (non-warmup) records, sessions, the run window, and
the sample of each distribution metric (spec: metrics.md, "Per run")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from veeksha.runner.evaluation.frame import Records
from veeksha.runner.evaluation.quantiles import exact_quantiles
from veeksha.shared.config import BenchmarkConfig, RateTraffic, TraceSessions, arrival_rate_of
from veeksha.shared.paths import DISTRIBUTION_METRICS
from veeksha.shared.records import FIELD, QUANTILE_GRID, SCHEDULER_DISPATCHED_AT, SESSION_DURATION


@dataclass
class Distribution:
    """One metric's sample summarised: mean and the 101 exact quantiles (None when empty)."""

    count: int
    mean: float | None
    quantiles: list[float | None]  # at QUANTILE_GRID

    def at(self, q: float) -> float | None:
        return self.quantiles[QUANTILE_GRID.index(q)]


@dataclass
class RunData:
    records: Records
    cfg: BenchmarkConfig
    trace: pl.DataFrame | None
    measured: pl.DataFrame  # non-warmup records (also records.df once prepared)
    warmup: pl.DataFrame  # warmup records: ids, scheduler_dispatched_at, end_at, status flags
    sessions: pl.DataFrame  # one row per non-warmup session
    first_dispatch: float | None
    last_end: float | None
    distributions: dict[str, Distribution] = field(default_factory=dict)
    # run.json driver.drivers: per driver its id, where it ran, status and CPU seconds (empty for a
    # run from before drivers were counted, or without run.json).
    drivers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def duration_s(self) -> float | None:
        """First dispatch → last end (completion, or the cut-off of a cancelled request)."""
        if self.first_dispatch is None or self.last_end is None:
            return None
        return max(self.last_end - self.first_dispatch, 0.0)

    @property
    def target_session_rate(self) -> float | None:
        """The configured session arrival rate: rate traffic only, and not for timed trace replay
        (whose arrival times come from the trace)."""
        traffic = self.cfg.traffic_scheduler
        sessions = self.cfg.session_generator
        if not isinstance(traffic, RateTraffic):
            return None
        if isinstance(sessions, TraceSessions) and sessions.timed_replay:
            return None
        return arrival_rate_of(traffic.interval_generator)

    def values(self, metric: str) -> np.ndarray:
        """The sample of a distribution metric (float64, no nulls)."""
        field = FIELD[metric]
        if field.type is list:  # tbc: the pooled gaps of the kept records
            return self.records.tbc_values
        if metric == SESSION_DURATION:
            col = self.sessions.filter(pl.col("completed"))[SESSION_DURATION]
        else:
            column = field.column or metric
            col = self.ok_rows(column)[column] if field.success_only else self.measured[column]
        return col.drop_nulls().cast(pl.Float64).to_numpy()

    def ok_rows(self, *columns: str) -> pl.DataFrame:
        """Some columns of the successful measured requests (never a copy of the whole frame)."""
        return self.measured.lazy().filter(pl.col("ok")).select(columns).collect()


def split_warmup(records: Records) -> tuple[Records, pl.DataFrame]:
    """(records without the warmup rows, the few warmup columns evaluation still needs).

    The warmup rows' gaps were never kept, so the tbc arrays are shared unchanged (rows keep their
    `row` index into tbc_offsets).
    """
    df = records.df
    warm = pl.col("is_warmup")
    columns = ("request_id", "session_id", SCHEDULER_DISPATCHED_AT, "end_at", "ok", "failed", "cancelled")
    warmup = df.lazy().filter(warm).select(columns).collect()
    if warmup.height:
        df = df.filter(~warm)
    return Records(df, records.tbc_values, records.tbc_offsets), warmup


def prepare(
    records: Records,
    warmup: pl.DataFrame,
    cfg: BenchmarkConfig,
    trace: pl.DataFrame | None,
    drivers: list[dict[str, Any]] | None = None,
) -> RunData:
    """Everything shared by the evaluators; `records` hold no warmup rows (see split_warmup)."""
    measured = records.df
    window = measured.lazy().filter(pl.col(SCHEDULER_DISPATCHED_AT).is_not_null())
    first, last = (
        window.select(pl.col(SCHEDULER_DISPATCHED_AT).min(), pl.col("end_at").max()).collect().row(0)
    )
    data = RunData(
        records=records,
        cfg=cfg,
        trace=trace,
        measured=measured,
        warmup=warmup,
        sessions=session_table(measured, trace),
        first_dispatch=first,
        last_end=last,
        drivers=drivers or [],
    )
    for metric in DISTRIBUTION_METRICS:
        data.distributions[metric] = describe(data.values(metric))
    return data


def describe(values: np.ndarray) -> Distribution:
    if len(values) == 0:
        return Distribution(0, None, [None] * len(QUANTILE_GRID))
    return Distribution(len(values), float(np.mean(values)), exact_quantiles(values, QUANTILE_GRID))


def session_table(measured: pl.DataFrame, trace: pl.DataFrame | None) -> pl.DataFrame:
    """One row per session, with its fate.

    completed   every request succeeded and, when the records (or, for older runs, the dispatch
                trace) give the session's size, every request of the session was sent
    errored     at least one request failed (error or timeout)
    incomplete  neither: a request was cancelled (shutdown, grace period) or the run ended before
                the session's remaining requests were sent
    session_duration = first dispatch → last completion, for completed sessions.
    Ordered by first dispatch, then session id: group_by's order changes from call to call.
    """
    sessions = measured.group_by("session_id").agg(
        num_requests=pl.len(),
        num_ok=pl.col("ok").sum(),
        num_failed=pl.col("failed").sum(),
        first_dispatch=pl.col(SCHEDULER_DISPATCHED_AT).min(),
        last_end=pl.col("end_at").max(),
        session_size=pl.col("session_size").max(),  # null in older runs: then the trace says
    )
    if trace is not None:
        sizes = trace.group_by("session_id").agg(traced_size=pl.col("session_size").max())
        sessions = sessions.join(sizes, on="session_id", how="left").with_columns(
            session_size=pl.coalesce("session_size", "traced_size")
        )
    all_sent = pl.col("session_size").is_null() | (pl.col("num_requests") >= pl.col("session_size"))
    completed = (pl.col("num_ok") == pl.col("num_requests")) & all_sent
    errored = pl.col("num_failed") > 0
    return sessions.with_columns(
        completed=completed,
        errored=errored,
        incomplete=~completed & ~errored,
        session_duration=pl.when(completed).then(pl.col("last_end") - pl.col("first_dispatch")),
    ).sort("first_dispatch", "session_id", nulls_last=True)  # ties too: a mean sums in this order
