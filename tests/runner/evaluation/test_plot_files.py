"""The plot files on disk: a full disk names the plot it could not write, and temporaries a killed
evaluation left behind are gone after the next evaluation, with plots or without."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from veeksha.runner.evaluation.evaluate import evaluate_run
from veeksha.runner.evaluation.plots import plot_distributions
from veeksha.runner.evaluation.rundata import QUANTILE_GRID, Distribution

from .factory import request, write_run


def spread(low: float, high: float) -> Distribution:
    values = [low + (high - low) * q for q in QUANTILE_GRID]
    return Distribution(count=101, mean=sum(values) / len(values), quantiles=values)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs with 4 KiB left: room for a file's name, not for a plot."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        filler = mount / "filler"
        free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
        filler.write_bytes(b"\0" * (free - 4096))
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_names_the_plot_it_could_not_write(full_disk: Path) -> None:
    png = full_disk / ".ttfc.png.tmp.png"
    with pytest.raises(OSError) as raised:
        plot_distributions([(png, "ttfc", spread(0.1, 0.4))])
    assert raised.value.errno == errno.ENOSPC
    assert str(png) in str(raised.value)  # "evaluation failed: OSError: ...: '<the file>'"


@pytest.mark.parametrize("plots", [True, False], ids=["plots", "no-plots"])
def test_temporary_plots_a_killed_evaluation_left_are_removed_by_the_next(
    tmp_path: Path, plots: bool
) -> None:
    records = [request(i, sent=float(i), chunks=[i + 0.1, i + 0.2], session=i) for i in range(3)]
    paths = write_run(tmp_path / "run", records)
    # kill -9 while drawing: temporaries of this version's plots, of a metric no longer plotted,
    # and of the time series.
    stale = [".ttfc.png.tmp.png", ".gone_metric.png.tmp.png", ".timeseries.png.tmp.png"]
    for name in stale:
        (paths.metrics / name).write_bytes(b"\x89PNG half")
    others = [paths.metrics / ".notes.txt", paths.metrics / "mine.tmp.png"]  # not the plots'
    for path in others:
        path.write_text("keep")
    evaluate_run(paths.root, plots=plots)
    assert sorted(p.name for p in paths.metrics.glob(".*.png.tmp.png")) == []
    assert all(path.read_text() == "keep" for path in others)
    assert paths.distribution_png("ttfc").exists() == plots
