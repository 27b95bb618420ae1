"""metrics/<metric>.png: one CDF plot per distribution metric, drawn from its 101 quantiles.

matplotlib is imported inside the function (Agg backend): nothing the driver imports pulls it in,
and plotting never touches the raw samples (a long run has 100M+ tbc gaps).
"""

from __future__ import annotations

from pathlib import Path

from veeksha.runner.evaluation.rundata import QUANTILE_GRID, Distribution

# metric → (title, axis label with unit, unit suffix for values)
LABELS = {
    "ttfc": ("Time to first chunk (TTFC)", "seconds", "s"),
    "tbc": ("Time between chunks (TBC, all gaps pooled)", "seconds", "s"),
    "tpot": ("Time per output token after the first (TPOT)", "seconds per token", "s"),
    "end_to_end_latency": ("End-to-end latency", "seconds", "s"),
    "normalized_end_to_end_latency": ("End-to-end latency per output token", "seconds per token", "s"),
    "output_throughput": ("Output throughput per request", "tokens per second", "tok/s"),
    "num_prompt_tokens": ("Prompt length (history included)", "tokens", "tok"),
    "num_output_tokens": ("Output length", "tokens", "tok"),
    "session_duration": ("Session duration (completed sessions)", "seconds", "s"),
    "dispatch_delay": ("Dispatch delay (dispatched − ready)", "seconds", "s"),
}
MARKS = ((0.5, "p50", "#2ca02c"), (0.9, "p90", "#ff7f0e"), (0.99, "p99", "#d62728"))
LOG_RANGE = 100.0  # log x-axis when max/min exceeds this


def _fmt(value: float, unit: str) -> str:
    """4 significant digits; seconds shown in ms or µs when small."""
    if unit == "s" and value != 0 and abs(value) < 1:
        value, unit = (value * 1e3, "ms") if abs(value) >= 1e-3 else (value * 1e6, "µs")
    return f"{value:.4g} {unit}"


def plot_distributions(items: list[tuple[Path, str, Distribution]]) -> None:
    """Write one PNG per (path, metric, distribution), reusing a single figure."""
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
            ax.set_xlabel(axis)
            ax.set_ylabel("fraction of samples ≤ x")
            if dist.count == 0 or dist.mean is None:
                ax.set_xscale("linear")
                ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=ax.transAxes, fontsize=14)
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                _draw(ax, dist, unit)
            fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def _draw(ax, dist: Distribution, unit: str) -> None:
    xs = [float(v) for v in dist.quantiles]  # type: ignore[arg-type]
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
        ax.axvline(value, color=color, linestyle="--", linewidth=1.2, label=f"{name} = {_fmt(value, unit)}")
        ax.plot([value], [q], marker="o", color=color, markersize=5)
    ax.set_ylim(0, 1.02)
    ax.grid(True, which="major", alpha=0.3)
    if use_log:
        ax.grid(True, which="minor", alpha=0.1)
    stats = (
        f"mean {_fmt(dist.mean, unit)}\n"  # type: ignore[arg-type]
        f"min {_fmt(dist.at(0.0), unit)}\n"  # type: ignore[arg-type]
        f"max {_fmt(dist.at(1.0), unit)}"  # type: ignore[arg-type]
    )
    ax.legend(loc="lower right", fontsize=9, framealpha=0.9)
    ax.text(
        0.02,
        0.97,
        stats,
        transform=ax.transAxes,
        va="top",
        ha="left",
        fontsize=9,
        bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85, "edgecolor": "#cccccc"},
    )
