"""The pictures of `veeksha-run compare`: overlaid CDFs and time series of several runs.

Each plot has one unit (milliseconds, or seconds once a value reaches 1 s). matplotlib is imported
inside the functions, as in evaluation's plots.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import polars as pl
from veeksha.runner.evaluation.timeseries_plot import float_column
from veeksha.shared.paths import RunPaths
from veeksha.shared.records import DISTRIBUTION_CSV_COLUMNS, FIELD

Named = list[tuple[str, RunPaths]]  # (label, run directory)


def plot_cdfs(runs: Named, metrics: tuple[str, ...], out_dir: Path) -> None:
    """`cdf_<metric>.png` for each metric that at least one run has quantiles of."""
    plt = _pyplot()
    for metric in metrics:
        curves = [(label, q) for label, paths in runs if (q := read_quantiles(paths, metric)) is not None]
        if not curves:
            continue
        top = max(float(q["value"].max() or 0.0) for _, q in curves)  # type: ignore[arg-type]  # polars stubs: a max is any literal
        scale, unit = (1.0, "s") if top >= 1 else (1e3, "ms")
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
        try:
            for label, q in curves:
                ax.plot(q["value"].to_numpy() * scale, q["cdf"].to_numpy(), linewidth=1.8, label=label)
            ax.set_title(f"{FIELD[metric].label if metric in FIELD else metric}: CDF by run", fontsize=11)
            ax.set_xlabel(unit)
            ax.set_ylabel("fraction of samples ≤ x")
            ax.set_ylim(0, 1.02)
            ax.grid(True, alpha=0.3)
            ax.legend(loc="lower right", fontsize=8)
            fig.savefig(out_dir / f"cdf_{metric}.png", dpi=100)
        finally:
            plt.close(fig)


def plot_timeseries(runs: Named, png: Path) -> None:
    """Completed requests/s, output tokens/s and TTFC p50 of each run against its elapsed seconds."""
    plt = _pyplot()
    panels = (
        ("request_throughput", "requests / s", 1.0),
        ("output_tokens_per_s", "output tokens / s", 1.0),
        ("ttfc_p50", "TTFC p50 (ms)", 1e3),
    )
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 9), dpi=100, sharex=True)
    try:
        for label, paths in runs:
            ts = _timeseries(paths)
            if ts is None:
                continue
            t = float_column(ts, "elapsed_s")
            for ax, (column, _, scale) in zip(axes, panels, strict=True):
                ax.plot(t, float_column(ts, column) * scale, linewidth=1.4, label=label)
        for ax, (_, ylabel, _) in zip(axes, panels, strict=True):
            ax.set_ylabel(ylabel, fontsize=9)
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
        axes[0].legend(loc="upper right", fontsize=8)
        axes[-1].set_xlabel("seconds since each run started")
        fig.savefig(png, dpi=100)
    finally:
        plt.close(fig)


def read_quantiles(paths: RunPaths, metric: str) -> pl.DataFrame | None:
    path = paths.distribution_csv(metric)
    if not path.exists() or not path.stat().st_size:
        return None
    df = pl.read_csv(path)
    if tuple(df.columns[:2]) != DISTRIBUTION_CSV_COLUMNS or df["value"].null_count() == df.height:
        return None
    return df.drop_nulls("value")


def _timeseries(paths: RunPaths) -> pl.DataFrame | None:
    path = paths.timeseries_csv
    return pl.read_csv(path, infer_schema_length=None) if path.exists() and path.stat().st_size else None


def _pyplot() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
