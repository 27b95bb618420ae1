"""metrics/<metric>.png: one CDF plot per distribution metric, drawn from its 101 quantiles.

matplotlib is imported inside the function (Agg backend): nothing the driver imports pulls it in,
and plotting never touches the raw samples (a long run has 100M+ tbc gaps).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from veeksha.runner.evaluation.rundata import QUANTILE_GRID, Distribution
from veeksha.shared.jsonio import naming_errors
from veeksha.shared.records import DISTRIBUTION_FIELDS

if TYPE_CHECKING:  # matplotlib itself is imported only when a plot is drawn
    from matplotlib.axes import Axes

# metric → (title, axis label with unit, unit suffix for values), from the field table
LABELS = {f.name: (f.label, f.axis, f.unit) for f in DISTRIBUTION_FIELDS}
MARKS = ((0.5, "p50", "#2ca02c"), (0.9, "p90", "#ff7f0e"), (0.99, "p99", "#d62728"))
LOG_RANGE = 100.0  # log x-axis when max/min exceeds this
# Every plot is drawn into `.<name>.png.tmp.png` beside its PNG, then renamed over it.
TEMP_PNG_GLOB = ".*.png.tmp.png"


def _fmt(value: float, scale: float, unit: str) -> str:
    """4 significant digits, in the plot's one display unit (the x-axis's)."""
    return f"{value * scale:.4g} {unit}"


def remove_stale_temps(folder: Path) -> None:
    """Temporary plots an evaluation killed while drawing (kill -9) left in `folder`: nothing else
    removes one whose plot is not drawn again (a metric no longer plotted)."""
    for tmp in folder.glob(TEMP_PNG_GLOB):
        tmp.unlink(missing_ok=True)


def plot_distributions(items: list[tuple[Path, str, Distribution]]) -> None:
    """Write one PNG per (path, metric, distribution), reusing a single figure. The paths are the
    temporaries (TEMP_PNG_GLOB) the caller renames; stale ones beside them are removed first."""
    for folder in {path.parent for path, _, _ in items}:
        remove_stale_temps(folder)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    # Fixed margins (tight_layout costs more than the drawing); the labels are known in advance.
    fig.subplots_adjust(left=0.1, right=0.97, top=0.91, bottom=0.12)
    try:
        for path, metric, dist in items:
            ax.clear()
            title, axis, unit = LABELS.get(metric, (metric, "value", ""))
            ax.set_title(f"{title} — CDF (n = {dist.count:,})", fontsize=11)
            ax.set_ylabel("fraction of samples ≤ x")
            if dist.count == 0 or dist.mean is None:
                ax.set_xlabel(axis)
                ax.set_xscale("linear")
                ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=ax.transAxes, fontsize=14)
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                scale, axis, shown = _display_unit(dist, axis, unit)
                ax.set_xlabel(axis)
                _draw(ax, dist, shown, scale)
            with naming_errors(path):  # a full disk: the library's OSError names no file
                fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def _display_unit(dist: Distribution, axis: str, unit: str) -> tuple[float, str, str]:
    """(scale, axis label, unit) of one plot: sub-second durations are drawn in ms or µs so tick labels
    stay short, and every legend value uses that same unit (one unit per plot, even for min = 0)."""
    top = abs(dist.at(1.0) or 0.0)
    if unit != "s" or top >= 1 or top == 0:
        return 1.0, axis, unit
    scale, name, short = (1e3, "milliseconds", "ms") if top >= 1e-3 else (1e6, "microseconds", "µs")
    return scale, axis.replace("seconds", name), short


def _draw(ax: Axes, dist: Distribution, unit: str, scale: float) -> None:
    from matplotlib.lines import Line2D

    xs = [float(v) * scale for v in dist.quantiles]  # type: ignore[arg-type]  # plotted only when not empty: no None
    ys = list(QUANTILE_GRID)
    positive = [x for x in xs if x > 0]
    use_log = bool(positive) and len(positive) >= 0.9 * len(xs) and xs[-1] / positive[0] > LOG_RANGE
    ax.set_xscale("log" if use_log else "linear")
    if use_log:
        pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if x > 0]
        xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
    ax.plot(xs, ys, color="#1f77b4", linewidth=2, label="CDF")
    for q, name, color in MARKS:
        value = dist.at(q)
        if value is None or (use_log and value <= 0):
            continue
        label = f"{name} = {_fmt(value, scale, unit)}"
        ax.axvline(value * scale, color=color, linestyle="--", linewidth=1.2, label=label)
        ax.plot([value * scale], [q], marker="o", color=color, markersize=5)
    ax.set_ylim(0, 1.02)
    ax.grid(True, which="major", alpha=0.3)
    if use_log:
        ax.grid(True, which="minor", alpha=0.1)
    for name, value in (("mean", dist.mean), ("min", dist.at(0.0)), ("max", dist.at(1.0))):
        ax.add_line(Line2D([], [], linestyle="none", label=f"{name} = {_fmt(value, scale, unit)}"))  # type: ignore[arg-type]  # matplotlib stubs
    # "best": the corner where the box covers the least of the curve and the percentile lines.
    ax.legend(loc="best", fontsize=9, framealpha=0.92, handlelength=1.8)
