"""metrics/throughput_metrics.json: system throughput over the run (spec: outputs.md, metrics.md).

Every rate divides by duration_s (first dispatch → last end). Token throughputs count successful
requests; total_token_throughput adds their prompt tokens (num_total_prompt_tokens: the whole prompt
the server processed, history included).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from veeksha.runner.evaluation.rundata import RunData
from veeksha.runner.evaluation.slo import good_requests
from veeksha.runner.evaluation.summary import ratio
from veeksha.shared.records import SCHEDULER_DISPATCHED_AT


def build_throughput(data: RunData, timeseries: pl.DataFrame) -> dict[str, Any]:
    ok = data.ok_rows("num_output_tokens", "num_total_prompt_tokens")
    duration = data.duration_s
    output_tokens = int(ok["num_output_tokens"].fill_null(0).sum())
    prompt_tokens = int(ok["num_total_prompt_tokens"].fill_null(0).sum())
    good = good_requests(data)
    peak = timeseries["output_tokens_per_s"].max() if timeseries.height else None
    return {
        "request_throughput": ratio(ok.height, duration),
        "output_token_throughput": ratio(output_tokens, duration),
        "total_token_throughput": ratio(prompt_tokens + output_tokens, duration),
        # Without SLOs there is no per-request threshold to meet: null, not "every request".
        "goodput": None if good is None else ratio(good, duration),
        "slo_attainment": None if good is None else ratio(good, ok.height),
        "peak_output_token_throughput": float(peak) if peak is not None else None,  # type: ignore[arg-type]  # polars stubs: an aggregate is any literal
        "mean_in_flight_requests": ratio(in_flight_seconds(data), duration),
    }


def in_flight_seconds(data: RunData) -> float:
    """Σ over requests of the time in flight (dispatch → end): the integral of the in-flight count."""
    spans = data.measured.select(
        (pl.col("end_at") - pl.col(SCHEDULER_DISPATCHED_AT)).clip(lower_bound=0).drop_nulls()
    )
    # Summed by numpy: a polars sum splits by thread count, so its last bits followed the machine.
    return float(np.sum(spans.to_series().to_numpy()))
