"""metrics/<metric>.csv (101 exact quantiles, `cdf,value`) and <metric>.png for every metric."""

from __future__ import annotations

from veeksha.runner.evaluation.rundata import QUANTILE_GRID, Distribution, RunData
from veeksha.shared.jsonio import write_atomic
from veeksha.shared.paths import DISTRIBUTION_METRICS, RunPaths
from veeksha.shared.records import DISTRIBUTION_CSV_COLUMNS


def distribution_csv(dist: Distribution) -> str:
    """Rows cdf 0.00 … 1.00; the value is empty when the metric has no samples."""
    lines = [",".join(DISTRIBUTION_CSV_COLUMNS)]
    for q, value in zip(QUANTILE_GRID, dist.quantiles, strict=True):
        lines.append(f"{q:.2f},{'' if value is None else repr(value)}")
    return "\n".join(lines) + "\n"


def write_distributions(paths: RunPaths, data: RunData, *, plots: bool = True) -> None:
    from veeksha.runner.evaluation.plots import plot_distributions

    pngs = []
    for metric in DISTRIBUTION_METRICS:
        dist = data.distributions[metric]
        write_atomic(paths.distribution_csv(metric), distribution_csv(dist))
        target = paths.distribution_png(metric)
        pngs.append((target, target.with_name(f".{target.name}.tmp.png"), metric, dist))
    if plots:
        try:
            plot_distributions([(tmp, metric, dist) for _, tmp, metric, dist in pngs])
            for target, tmp, _, _ in pngs:
                tmp.replace(target)  # atomic, like every other output
        finally:  # a failed plot (a full disk) leaves no temporary behind
            for _, tmp, _, _ in pngs:
                tmp.unlink(missing_ok=True)
