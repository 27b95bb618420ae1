"""SLO verdicts (metrics/slo_results.json) and per-request goodput (spec: metrics.md).

Run level: observed = the exact quantile of the metric's whole sample at the SLO's percentile;
met = observed ≤ threshold (exactly at the threshold passes); no samples → met false, observed null.

Request level (goodput, slo_attainment): a successful request is "good" when it meets every SLO's
threshold on its own values:
    ttfc, ttfa, end_to_end_latency, normalized_end_to_end_latency
               value ≤ threshold (a null fails: a reasoning-only reply has no ttfa)
    tpot, tpot_answer
               value ≤ threshold (a null passes: one token, or one chunk, measures no speed)
    tbc        at least `percentile` of the request's gaps are ≤ threshold, counted in whole gaps
               (no gaps passes)
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import Any

import numpy as np
import polars as pl
from veeksha.runner.evaluation.quantiles import exact_quantiles
from veeksha.runner.evaluation.rundata import QUANTILE_GRID, RunData
from veeksha.shared.config import SLOConfig
from veeksha.shared.records import FIELD, NULL_PASSES_SLO

NULL_PASSES = NULL_PASSES_SLO
_ROWS_PER_BATCH = 50_000  # x ~160 gaps: ~64 MB of temporaries
_MAX_PERCENTILE_DENOMINATOR = 10**9  # any percentile of up to 9 decimals is exact


def slo_key(metric: str, percentile: float) -> str:
    """`<metric>_p<percentile*100>`: ttfc_p99, tbc_p50, end_to_end_latency_p99.9, ttfc_p99.99999.

    Computed in decimal from the percentile as written (repr: the shortest decimal that is the
    float): exact, so distinct percentiles get distinct keys. Double arithmetic rounded to a few
    digits would turn 0.9999999 into p100, the key of 1.0 (and 0.07 · 100 is 7.000000000000001).
    """
    scaled = (Decimal(repr(percentile)) * 100).normalize()
    return f"{metric}_p{scaled:f}"  # f: never an exponent (1E+2 is 100)


def observed(data: RunData, metric: str, percentile: float) -> float | None:
    if percentile in QUANTILE_GRID:
        return data.distributions[metric].at(percentile)
    return exact_quantiles(data.values(metric), [percentile])[0]


def slo_results(data: RunData) -> dict[str, Any] | None:
    """The slo_results.json object, or None when no SLO is configured."""
    slos = data.cfg.slos
    if not slos:
        return None
    results = []
    for slo in slos:
        metric = slo.canonical_metric
        value = observed(data, metric, slo.percentile)
        results.append(
            {
                "name": slo.name,
                "metric": metric,
                "percentile": slo.percentile,
                "threshold": slo.value,
                "observed_value": value,
                "met": value is not None and value <= slo.value,
                "slo_metric_key": slo_key(metric, slo.percentile),
                "lower_is_better": True,
                "num_samples": data.distributions[metric].count,
            }
        )
    return {"all_slos_met": all(r["met"] for r in results), "results": results}


def good_requests(data: RunData) -> int | None:
    """How many successful measured requests met every SLO threshold (None without SLOs)."""
    slos = data.cfg.slos
    if not slos:
        return None
    scalar = {s.canonical_metric for s in slos if FIELD[s.canonical_metric].type is not list}
    ok = data.ok_rows("row", *scalar)
    good = np.ones(ok.height, dtype=bool)
    for slo in slos:
        good &= _meets(data, ok, slo)
    return int(good.sum())


def _meets(data: RunData, ok: pl.DataFrame, slo: SLOConfig) -> np.ndarray:
    metric = slo.canonical_metric
    if FIELD[metric].type is list:  # tbc: every gap of the request, pooled
        return _tbc_meets(data, ok["row"].to_numpy(), slo.value, slo.percentile)
    values = ok[metric]
    passes = values <= slo.value
    return passes.fill_null(metric in NULL_PASSES).to_numpy()


def _tbc_meets(data: RunData, rows: np.ndarray, threshold: float, percentile: float) -> np.ndarray:
    """Per row: at least `percentile` of its gaps are ≤ threshold. Batched: bounded temporaries."""
    # good / n_gaps ≥ percentile is decided on whole numbers, good · den ≥ num · n_gaps with
    # percentile = num / den: in doubles 0.07 · 100 is 7.000000000000001, which would demand an 8th
    # good gap of 100. The nearest fraction with a small denominator is the decimal the user wrote
    # (0.07 → 7/100), and a denominator ≤ 10⁹ keeps the products well inside int64.
    share = Fraction(percentile).limit_denominator(_MAX_PERCENTILE_DENOMINATOR)
    offsets, values = data.records.tbc_offsets, data.records.tbc_values
    out = np.ones(len(rows), dtype=bool)
    for lo in range(0, len(rows), _ROWS_PER_BATCH):
        idx = rows[lo : lo + _ROWS_PER_BATCH]
        start, end = offsets[idx], offsets[idx + 1]
        span_lo, span_hi = int(start.min()), int(end.max())
        over = np.zeros(span_hi - span_lo + 1, dtype=np.int64)
        np.cumsum(values[span_lo:span_hi] > threshold, out=over[1:])
        n_over = over[end - span_lo] - over[start - span_lo]
        n_gaps = end - start
        n_good = n_gaps - n_over
        out[lo : lo + len(idx)] = n_good * share.denominator >= share.numerator * n_gaps
    return out
