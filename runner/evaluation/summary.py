"""metrics/summary_stats.json: counts, rates and per-metric statistics (spec: outputs.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from veeksha.runner.evaluation.appended_csv import numbers, read_appended_frame, unreadable
from veeksha.runner.evaluation.rundata import RunData
from veeksha.shared.config import TraceSessions
from veeksha.shared.paths import DISTRIBUTION_METRICS
from veeksha.shared.records import (
    SCHEDULER_DISPATCHED_AT,
    SUMMARY_PERCENTILES,
    VLLM_CACHE_HITS,
    VLLM_CACHE_QUERIES,
    summary_stat_key,
)


def ratio(num: float, den: float | None) -> float | None:
    return num / den if den else None


def build_summary(data: RunData) -> dict[str, Any]:
    m = data.measured
    n = m.height
    failed = int(m["failed"].sum())
    cancelled = int(m["cancelled"].sum())
    # Rates are over the requests sent (metrics.md): the requests a failure kept from being sent
    # would otherwise dilute the error rate of a server that failed everything it was sent.
    dispatched = int(m["dispatched"].sum())
    s = data.sessions
    summary: dict[str, Any] = {
        "num_requests": n,
        "num_dispatched_requests": dispatched,
        "num_completed_requests": int(m["ok"].sum()),
        "num_errored_requests": failed,
        "num_cancelled_requests": cancelled,
        "num_warmup_requests": data.warmup.height,
        "error_rate": ratio(failed, dispatched),
        "cancellation_rate": ratio(int((m["cancelled"] & m["dispatched"]).sum()), dispatched),
        "num_sessions": s.height,
        "num_completed_sessions": int(s["completed"].sum()),
        "num_errored_sessions": int(s["errored"].sum()),
        "num_incomplete_sessions": int(s["incomplete"].sum()),
        "requests_per_session_mean": ratio(n, s.height),
        "observed_session_dispatch_rate": observed_session_rate(data)[0],
        "target_session_dispatch_rate": data.target_session_rate,
        "duration_s": data.duration_s,
    }
    for metric in DISTRIBUTION_METRICS:
        dist = data.distributions[metric]
        summary[summary_stat_key(metric, "mean")] = dist.mean
        for suffix, q in SUMMARY_PERCENTILES.items():
            summary[summary_stat_key(metric, suffix)] = dist.at(q)
        summary[summary_stat_key(metric, "min")] = dist.at(0.0)
        summary[summary_stat_key(metric, "max")] = dist.at(1.0)
    summary["expected_prefix_cache_hit_fraction"] = expected_cache_hits(data)
    summary.update(token_count_mismatch(data))
    summary["error_code_freq"] = error_code_freq(m)
    return summary


def expected_cache_hits(data: RunData) -> float | None:
    """The prompt sharing the run generated: tokens an ideal prefix cache would have found (history,
    the shared prefix) over all prompt tokens sent. A server's hit rate well above it means sharing
    the benchmark did not intend; below it, a cache too small or off."""
    cacheable, total = _dispatched_sums(
        data.measured, "num_cacheable_prompt_tokens", "num_total_prompt_tokens"
    )
    return cacheable / total if total else None


def sent_prompt_tokens(records: pl.DataFrame) -> int:
    """Prompt tokens of every request these records sent, warmup included: about what the server
    looked up in its prefix cache for this run (its counters are scraped from before the warmup)."""
    (total,) = _dispatched_sums(records, "num_total_prompt_tokens")
    return int(total or 0)  # a column of the null type (no request counted) sums to null


def _dispatched_sums(records: pl.DataFrame, *columns: str) -> tuple[int, ...]:
    """Each column's sum over the requests that were sent (0 for none, null for a null-typed column)."""
    rows = records.lazy().filter(pl.col(SCHEDULER_DISPATCHED_AT).is_not_null())
    return tuple(rows.select(pl.col(c).sum() for c in columns).collect().row(0))


@dataclass(frozen=True)
class ServerCacheTokens:
    """Prompt tokens the server looked up in its prefix cache over the run, and found there."""

    hits: float
    queries: float

    @property
    def hit_fraction(self) -> float | None:
        return self.hits / self.queries if self.queries else None


def server_cache_tokens(csv_path: Path) -> ServerCacheTokens | None:
    """The server's own prefix-cache hits and queries over the run (all its clients'): Σ each row's
    scraped rate times the interval it covers (since the row before: a row after failed or starved
    scrapes covers several). None without those series.

    The file may come from a crashed run: a cut-off last line is left out (read_appended_frame), and so
    is a row whose time or counters are no number, hits and queries together (either alone would
    skew the fraction). An empty counter cell is no rate (the first row): 0."""
    df = read_appended_frame(csv_path)
    if not {"elapsed_s", VLLM_CACHE_HITS, VLLM_CACHE_QUERIES} <= set(df.columns):
        return None
    df = df.filter(numbers(df, "elapsed_s").is_not_null())
    # numpy, not polars, for the sums: polars' last bits depend on its thread count.
    elapsed = numbers(df, "elapsed_s").to_numpy()
    interval = np.diff(elapsed, prepend=elapsed[:1])  # the first row has no rate (and 0 s)
    # Left out after the intervals are taken: the next row's rate is over its own interval only.
    kept = ~(unreadable(df, VLLM_CACHE_HITS) | unreadable(df, VLLM_CACHE_QUERIES)).to_numpy()
    hits, queries = (
        float(np.nansum(numbers(df, name).fill_null(0).to_numpy()[kept] * interval[kept]))
        for name in (VLLM_CACHE_HITS, VLLM_CACHE_QUERIES)
    )
    return ServerCacheTokens(hits, queries)


def server_cache_hit_fraction(csv_path: Path) -> float | None:
    """The server's own prefix-cache hit rate over the run, beside expected_prefix_cache_hit_fraction:
    Σ hits / Σ queries of server_cache_tokens. None without those series, or without a query."""
    tokens = server_cache_tokens(csv_path)
    return tokens.hit_fraction if tokens else None


# (summary key prefix, the client's count, the server's count)
TOKEN_COUNTS = (
    ("prompt", "client_prompt_tokens", "num_total_prompt_tokens"),
    ("output", "client_output_tokens", "num_output_tokens"),
)


def token_count_mismatch(data: RunData) -> dict[str, Any]:
    """How often, and by how much, the client's tokenizer count differs from the server's usage, over
    the successful requests that have both (null when none has: no tokenizer, or no usage)."""
    rows = data.ok_rows(*(c for _, client, server in TOKEN_COUNTS for c in (client, server)))
    out: dict[str, Any] = {}
    for kind, client, server in TOKEN_COUNTS:
        both = rows.filter(pl.col(client).is_not_null() & pl.col(server).is_not_null() & (pl.col(server) > 0))
        n = both.height
        diff = (both[client] - both[server]).abs()
        out[f"num_{kind}_token_comparisons"] = n
        out[f"{kind}_token_mismatch_fraction"] = float((diff > 0).mean()) if n else None  # type: ignore[arg-type]  # polars stubs: a mean is any literal
        # numpy's mean: a polars float sum splits by thread count (last bits follow the machine).
        relative = (diff / both[server]).to_numpy()
        out[f"{kind}_token_mean_relative_difference"] = float(np.mean(relative)) if n else None
    return out


@dataclass
class AllFailed:
    """No request of the run succeeded: it measured nothing. Counts of the requests judged."""

    errored: int  # error + timeout
    cancelled: int
    warmup_only: bool  # the run had only warmup requests, and those were judged


def all_failed(data: RunData) -> AllFailed | None:
    """AllFailed when no request succeeded, else None.

    The measured requests are judged; a run that has only warmup requests (it ended during the
    warmup) is judged on those, since a server that failed them all is just as broken. A run that
    sent nothing is not judged here.
    """
    rows = data.measured if data.measured.height else data.warmup
    if rows.height == 0 or rows["ok"].any():
        return None
    return AllFailed(int(rows["failed"].sum()), int(rows["cancelled"].sum()), data.measured.height == 0)


def observed_session_rate(data: RunData) -> tuple[float | None, int, float | None]:
    """(rate, sessions counted, window s): sessions dispatched / (last session dispatch − start).

    start is the run start, or the last warmup session's dispatch when there was warmup: the
    estimate N / (time of the N-th arrival) of a Poisson process, counted after the warmup arrivals.
    A timed trace replay counts gaps between its own sessions instead (timed_replay_rate).
    """
    starts = data.sessions["first_dispatch"].drop_nulls()
    if is_timed_replay(data):
        return timed_replay_rate(starts)
    if starts.len() == 0:
        return None, 0, None
    warm = (
        data.warmup.group_by("session_id")
        .agg(start=pl.col(SCHEDULER_DISPATCHED_AT).min())["start"]
        .drop_nulls()
    )
    origin = float(warm.max()) if warm.len() else 0.0  # type: ignore[arg-type]  # polars stubs: an aggregate is any literal
    # Only the arrivals after the origin: a slot ramped in late (or another driver) may start its
    # warmup after measured sessions of other slots, which are outside the window.
    after = starts.filter(starts > origin) if warm.len() else starts
    if after.len() == 0:
        return None, 0, None
    window = float(after.max()) - origin  # type: ignore[arg-type]  # polars stubs: an aggregate is any literal
    return (after.len() / window if window > 0 else None), after.len(), window


def is_timed_replay(data: RunData) -> bool:
    sessions = data.cfg.session_generator
    return isinstance(sessions, TraceSessions) and sessions.timed_replay


def timed_replay_rate(starts: pl.Series) -> tuple[float | None, int, float | None]:
    """(N − 1) / (T_N − T_1) over the sessions' first dispatches; None for fewer than 2 sessions or
    no time between them. A timed replay sends its first record at the run start, so N / T_N counts
    an arrival without a gap before it: n/(n−1) too high (11.11/s for 10 records 0.1 s apart, and
    5589.93/s for a one-record trace sent 0.18 ms in)."""
    n = starts.len()
    if n < 2:
        return None, n, None
    window = float(starts.max()) - float(starts.min())  # type: ignore[arg-type]  # polars stubs: an aggregate is any literal
    return ((n - 1) / window if window > 0 else None), n, window


def error_code_freq(m: pl.DataFrame) -> dict[str, int]:
    """Failed requests by HTTP status (>= 400), else by error type."""
    failed = m.lazy().filter(pl.col("failed")).select("http_status", "error_type").collect()
    if failed.height == 0:
        return {}
    key = (
        pl.when(pl.col("http_status") >= 400)
        .then(pl.col("http_status").cast(pl.String))
        .otherwise(pl.col("error_type").fill_null("unknown"))
    )
    counts = failed.group_by(key.alias("code")).agg(n=pl.len()).sort(["n", "code"], descending=[True, False])
    return dict(zip(counts["code"].to_list(), counts["n"].to_list(), strict=True))
