"""metrics/prefill_stats.json: TTFC grouped by prompt length (how prefill cost grows with the prompt).

Successful measured requests, prompt length = num_total_prompt_tokens (the whole prompt the server
prefilled, history included). Buckets are powers of two: [0, 128), [128, 256), [256, 512), ...
Plus a least-squares line ttfc ≈ intercept + slope · prompt tokens: the slope is the marginal prefill
time per prompt token (queueing adds noise to the intercept, not much to the slope at steady load).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from veeksha.runner.evaluation.quantiles import exact_quantiles
from veeksha.runner.evaluation.rundata import RunData
from veeksha.shared.records import TTFC

PROMPT_FIELD = "num_total_prompt_tokens"
FIRST_EDGE = 128


def bucket_lower(tokens: pl.Expr) -> pl.Expr:
    """Lower edge of a prompt's bucket: 0 below 128, else the power of two at or below it."""
    power = (tokens.cast(pl.Float64).log(2).floor()).cast(pl.Int64)
    return pl.when(tokens < FIRST_EDGE).then(0).otherwise(pl.lit(2).pow(power).cast(pl.Int64))


def build_prefill(data: RunData) -> dict[str, Any]:
    rows = data.ok_rows(PROMPT_FIELD, TTFC).drop_nulls()
    rows = rows.with_columns(lower=bucket_lower(pl.col(PROMPT_FIELD)))
    buckets = []
    for (lower,), group in sorted(rows.group_by("lower"), key=lambda kv: kv[0][0]):
        ttfc = group[TTFC].to_numpy()
        p50, p90, p99 = exact_quantiles(ttfc, [0.5, 0.9, 0.99])
        buckets.append(
            {
                "min_prompt_tokens": lower,
                "max_prompt_tokens": (FIRST_EDGE if lower == 0 else 2 * lower) - 1,
                "num_requests": group.height,
                "prompt_tokens_mean": float(group[PROMPT_FIELD].mean()),  # type: ignore[arg-type]  # polars stubs: an aggregate is any literal
                "ttfc_mean": float(ttfc.mean()),
                "ttfc_p50": p50,
                "ttfc_p90": p90,
                "ttfc_p99": p99,
            }
        )
    return {
        "prompt_length_field": PROMPT_FIELD,
        "num_requests": rows.height,
        "buckets": buckets,
        "linear_fit": _fit(rows[PROMPT_FIELD].to_numpy().astype(np.float64), rows[TTFC].to_numpy()),
    }


def _fit(x: np.ndarray, y: np.ndarray) -> dict[str, float] | None:
    """Least squares y = a + b·x; None when x does not vary."""
    if len(x) < 2 or float(np.ptp(x)) == 0.0:
        return None
    xm, ym = x.mean(), y.mean()
    sxx = float(((x - xm) ** 2).sum())
    sxy = float(((x - xm) * (y - ym)).sum())
    syy = float(((y - ym) ** 2).sum())
    slope = sxy / sxx
    return {
        "seconds_per_prompt_token": slope,
        "intercept_s": float(ym - slope * xm),
        "r2": (sxy * sxy) / (sxx * syy) if syy > 0 else 1.0,
    }
