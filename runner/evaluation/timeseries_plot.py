"""metrics/timeseries.png: the run over its elapsed time, drawn from metrics/timeseries.csv.

Six panels on one time axis: requests per second (dispatched, completed), output tokens per second,
TTFC p50/p99 and TBC p50/p99 of the requests completed in each second (apart: TTFC can be a thousand
times TBC), requests in flight, and errors per second. Each panel has one unit. Like the distribution
plots, matplotlib is imported only here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
from veeksha.runner.evaluation.appended_csv import numbers, read_appended_frame
from veeksha.shared.records import VLLM_KV_USAGE, VLLM_RUNNING, VLLM_WAITING

if TYPE_CHECKING:
    from matplotlib.axes import Axes

TTFC = (("ttfc_p50", "TTFC p50"), ("ttfc_p99", "TTFC p99"))
TBC = (("tbc_p50", "TBC p50"), ("tbc_p99", "TBC p99"))
# From a scraped metrics/server_metrics.csv.
SERVER_QUEUE = ((VLLM_RUNNING, "running"), (VLLM_WAITING, "waiting"))
SERVER_KV = ((VLLM_KV_USAGE, "KV-cache use"),)


def plot_timeseries(csv_path: Path, png_path: Path, server_csv: Path | None = None) -> None:
    """Draw the CSV's rows; a run without rows gets a plot that says so. With the server's scraped
    metrics, two more panels: its queue (running, waiting) and its KV-cache use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Read like the scraped file: the live time series of a crashed run is appended line by line too.
    ts = read_appended_frame(csv_path)
    server = _server_frame(server_csv)
    rows = 6 if server is None else 8
    fig, axes = plt.subplots(rows, 1, figsize=(9, 2.3 * rows + 0.2), dpi=100, sharex=True)
    fig.subplots_adjust(left=0.1, right=0.97, top=0.95, bottom=0.05, hspace=0.25)
    try:
        fig.suptitle(f"Over the run ({ts.height:,} seconds)", fontsize=12)
        if ts.height == 0:
            axes[0].text(0.5, 0.5, "no rows", ha="center", va="center", transform=axes[0].transAxes)
        else:
            _draw(axes, ts)
        if server is not None:
            st = float_column(server, "elapsed_s")
            _panel(axes[6], st, server, SERVER_QUEUE, "server: requests")
            _panel(axes[7], st, server, SERVER_KV, "server: KV-cache use (fraction)")
        axes[-1].set_xlabel("seconds since the run started (latencies: requests completed in that second)")
        fig.savefig(png_path, dpi=100)
    finally:
        plt.close(fig)


def _draw(axes: list[Axes], ts: pl.DataFrame) -> None:
    t = float_column(ts, "elapsed_s")
    _panel(axes[0], t, ts, (("dispatched", "dispatched"), ("completed", "completed")), "requests / s")
    _panel(axes[1], t, ts, (("output_tokens_per_s", "output tokens"),), "tokens / s")
    for ax, series, name in ((axes[2], TTFC, "TTFC"), (axes[3], TBC, "TBC")):
        scale, unit = _seconds_unit(ts, series)
        _panel(ax, t, ts, series, f"{name} ({unit})", scale)
    _panel(axes[4], t, ts, (("in_flight", "mean in flight"),), "requests")
    _panel(axes[5], t, ts, (("errored", "errors"),), "errors / s")
    axes[5].set_ylim(top=max(1.0, axes[5].get_ylim()[1]))  # no errors: a flat line at 0 of 0..1


def _seconds_unit(ts: pl.DataFrame, series: tuple[tuple[str, str], ...]) -> tuple[float, str]:
    values = np.concatenate([float_column(ts, c) for c, _ in series])
    top = float(np.nanmax(values)) if np.isfinite(values).any() else 0.0
    return (1.0, "s") if top >= 1 else (1e3, "ms")


def _server_frame(path: Path | None) -> pl.DataFrame | None:
    """The scraped series the panels need, when the file exists and has them (a line a crash cut
    off left out)."""
    if path is None:
        return None
    df = read_appended_frame(path)
    wanted = [name for name, _ in (*SERVER_QUEUE, *SERVER_KV)]
    if df.height == 0 or not set(wanted) <= set(df.columns):
        return None
    return df.select("elapsed_s", *wanted)


def float_column(ts: pl.DataFrame, name: str) -> np.ndarray:
    """A column as floats, empty cells and values that are no number as NaN (drawn as gaps)."""
    return numbers(ts, name).fill_null(float("nan")).to_numpy()


def _panel(
    ax: Axes,
    t: np.ndarray,
    ts: pl.DataFrame,
    series: tuple[tuple[str, str], ...],
    ylabel: str,
    scale: float = 1.0,
) -> None:
    marker = "." if len(t) < 30 else None  # a short run's few points stay visible
    for column, label in series:
        ax.plot(t, float_column(ts, column) * scale, linewidth=1.4, label=label, marker=marker)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
