"""throughput_metrics.json: the same bytes whatever the machine's core count."""

from __future__ import annotations

import os
import subprocess
import sys

# A filtered frame of 200,000 requests: polars splits a float sum over its chunks by thread count, so
# the sum polars did gave 0x1.082d3a0a81f31p+18 with 1 thread and ...f32p+18 with 8.
_SCRIPT = """
from types import SimpleNamespace
import numpy as np, polars as pl
from veeksha.runner.evaluation.throughput import in_flight_seconds
from veeksha.shared.records import SCHEDULER_DISPATCHED_AT
rng = np.random.default_rng(0)
n = 200_000
d = rng.uniform(0, 100, n)
end = d + rng.uniform(0, 3, n)
frame = pl.DataFrame({SCHEDULER_DISPATCHED_AT: d, "end_at": end, "k": rng.integers(0, 10, n)})
measured = frame.filter(pl.col("k") > 0)  # a filtered frame, as the warmup split leaves it
print(in_flight_seconds(SimpleNamespace(measured=measured)).hex())  # only .measured is read
"""


def _in_flight_with(threads: int) -> str:
    env = {**os.environ, "POLARS_MAX_THREADS": str(threads)}
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_mean_in_flight_does_not_depend_on_the_number_of_threads():
    assert _in_flight_with(1) == _in_flight_with(8)
