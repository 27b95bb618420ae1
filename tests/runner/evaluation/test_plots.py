"""Distribution plots: one display unit per plot, for the axis and every legend value alike."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from veeksha.runner.evaluation.plots import _display_unit, _draw
from veeksha.runner.evaluation.rundata import QUANTILE_GRID, Distribution


def spread(low: float, high: float) -> Distribution:
    values = [low + (high - low) * q for q in QUANTILE_GRID]
    return Distribution(count=101, mean=sum(values) / len(values), quantiles=values)


def legend_of(dist: Distribution, axis: str, unit: str) -> tuple[str, list[str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    try:
        scale, label, shown = _display_unit(dist, axis, unit)
        _draw(ax, dist, shown, scale)
        return label, ax.get_legend_handles_labels()[1]
    finally:
        plt.close(fig)


@pytest.mark.parametrize(
    ("low", "high", "axis_label", "unit"),
    [
        (0.9, 1.4, "seconds", "s"),  # once "962.6 ms" beside "1.36 s"
        (0.0, 0.05, "milliseconds", "ms"),  # once "min = 0 s" in a plot drawn in ms
        (0.0, 0.0005, "microseconds", "µs"),
    ],
)
def test_every_legend_value_uses_the_axis_unit(low: float, high: float, axis_label: str, unit: str) -> None:
    label, legend = legend_of(spread(low, high), "seconds", "s")
    assert label == axis_label
    values = [entry for entry in legend if " = " in entry]
    assert len(values) == 6  # p50, p90, p99, mean, min, max
    assert all(entry.endswith(f" {unit}") for entry in values), values


def test_token_counts_keep_their_unit() -> None:
    _, legend = legend_of(spread(10, 500), "tokens", "tok")
    assert all(entry.endswith(" tok") for entry in legend if " = " in entry)


def test_a_plot_that_fails_leaves_no_temporary_file(tmp_path, monkeypatch) -> None:
    # A full disk mid-plot (ENOSPC, simulated here: mounting a full filesystem needs more than a
    # test should) left `.<metric>.png.tmp.png` files beside the outputs.
    from veeksha.runner.evaluation import plots
    from veeksha.runner.evaluation.distributions import write_distributions
    from veeksha.shared.paths import DISTRIBUTION_METRICS, RunPaths

    def half_written_then_full(items) -> None:
        for tmp, _, _ in items[:2]:
            tmp.write_bytes(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plots, "plot_distributions", half_written_then_full)
    paths = RunPaths(tmp_path / "run")
    paths.make_dirs()

    data = SimpleNamespace(distributions={m: spread(1.0, 2.0) for m in DISTRIBUTION_METRICS})
    with pytest.raises(OSError, match="No space left"):
        write_distributions(paths, data, plots=True)  # type: ignore[arg-type]
    assert not list(paths.root.rglob(".*"))
