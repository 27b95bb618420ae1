"""The pictures of `veeksha-run compare`: overlaid CDFs and time series of several runs.

Their inputs (each run's `<metric>.csv` quantiles and `timeseries.csv`) are read and checked by
`read_curves` before the comparison's directory is made: a file that cannot be read, lacks a column,
or holds a row or a cell that does not fit is named in one line (exit 2), not a traceback after
`compare_summary.csv` was written. The drawing then only draws.

Each plot has one unit (milliseconds, or seconds once a value reaches 1 s). matplotlib is imported
inside the functions, as in evaluation's plots.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import orjson
from veeksha.shared.errors import UsageError
from veeksha.shared.paths import RunPaths
from veeksha.shared.records import DISTRIBUTION_CSV_COLUMNS, FIELD

MAX_SHOWN = 40  # characters of a damaged value an error shows
PANELS = (  # timeseries_compare.png: (timeseries.csv column, y label, scale)
    ("request_throughput", "requests / s", 1.0),
    ("output_tokens_per_s", "output tokens / s", 1.0),
    ("ttfc_p50", "TTFC p50 (ms)", 1e3),
)
ELAPSED = "elapsed_s"


@dataclass
class Curves:
    """What one run adds to the plots, read and checked."""

    label: str
    quantiles: dict[str, tuple[np.ndarray, np.ndarray]]  # metric -> (values, cdf), the quantiles with a value
    timeseries: dict[str, np.ndarray] | None  # ELAPSED and the PANELS' columns; NaN for an empty cell


def read_curves(label: str, paths: RunPaths, metrics: tuple[str, ...]) -> Curves:
    """Every file of `paths` the plots draw (UsageError naming a damaged one)."""
    quantiles = {metric: q for metric in metrics if (q := read_quantiles(paths, metric)) is not None}
    return Curves(label, quantiles, read_timeseries(paths))


def read_quantiles(paths: RunPaths, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The metric's quantiles that have a value; None when there is no file or no value (the metric
    had no samples: evaluation writes its rows with empty values)."""
    columns = read_number_columns(paths.distribution_csv(metric), DISTRIBUTION_CSV_COLUMNS, paths.root)
    if columns is None:
        return None
    cdf, value = (columns[name] for name in DISTRIBUTION_CSV_COLUMNS)
    has_value = ~np.isnan(value)
    return (value[has_value], cdf[has_value]) if has_value.any() else None


def read_timeseries(paths: RunPaths) -> dict[str, np.ndarray] | None:
    return read_number_columns(paths.timeseries_csv, (ELAPSED, *(c for c, _, _ in PANELS)), paths.root)


def read_number_columns(path: Path, columns: tuple[str, ...], run: Path) -> dict[str, np.ndarray] | None:
    """`columns` of a CSV of numbers, as floats (an empty cell is NaN); None when the file is missing
    or empty (nothing to draw, as in evaluation's own time series plot). A file that cannot be read,
    lacks one of the columns, or has a row of another length or a cell that is no finite number is
    damaged input: a usage error naming it, which `veeksha-run evaluate` writes again."""
    if not path.exists() or not path.stat().st_size:
        return None
    fix = f"run `veeksha-run evaluate {run}` to write it again"
    rows = _rows(path, fix)
    if not rows:
        return None
    (_, header), body = rows[0], rows[1:]
    missing = [name for name in columns if name not in header]
    if missing:
        raise UsageError(f"{path}: its header has no column {', '.join(missing)}; {fix}")
    for line, row in body:
        if len(row) != len(header):
            raise UsageError(f"{path}: line {line} has {len(row)} fields, its header {len(header)}; {fix}")
    return {name: _floats(path, body, header.index(name), name, fix) for name in columns}


def _rows(path: Path, fix: str) -> list[tuple[int, list[str]]]:
    """The CSV's rows but blank lines, each with its line number (a quoted cell may span lines)."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            return list(_numbered(csv.reader(f, strict=True)))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UsageError(f"{path}: not a readable CSV ({e}); {fix}") from None


def _numbered(reader: Any) -> Iterator[tuple[int, list[str]]]:
    start = 1
    for row in reader:
        if row:
            yield start, row
        start = reader.line_num + 1


def _floats(path: Path, body: list[tuple[int, list[str]]], index: int, name: str, fix: str) -> np.ndarray:
    out = np.full(len(body), np.nan)
    for i, (line, row) in enumerate(body):
        cell = row[index].strip()
        if not cell:
            continue
        value = _number(cell)
        if value is None:
            raise UsageError(f"{path}: line {line}, column {name} is {shown(cell)}, not a number; {fix}")
        out[i] = value
    return out


def _number(cell: str) -> float | None:
    """A finite number, or None ("nan" and "inf" parse, but no evaluation writes them)."""
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def shown(value: object) -> str:
    """A value from a damaged file, as JSON and cut short: an error line stays one readable line."""
    text = orjson.dumps(value).decode()
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "…"


# ------------------------------------------------------------------ drawing


def plot_cdfs(runs: list[Curves], metrics: tuple[str, ...], out_dir: Path) -> None:
    """`cdf_<metric>.png` for each metric that at least one run has quantiles of."""
    plt = _pyplot()
    for metric in metrics:
        curves = [(run.label, run.quantiles[metric]) for run in runs if metric in run.quantiles]
        if not curves:
            continue
        top = max(float(values.max()) for _, (values, _) in curves)
        scale, unit = (1.0, "s") if top >= 1 else (1e3, "ms")
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
        try:
            for label, (values, cdf) in curves:
                ax.plot(values * scale, cdf, linewidth=1.8, label=label)
            ax.set_title(f"{FIELD[metric].label if metric in FIELD else metric}: CDF by run", fontsize=11)
            ax.set_xlabel(unit)
            ax.set_ylabel("fraction of samples ≤ x")
            ax.set_ylim(0, 1.02)
            ax.grid(True, alpha=0.3)
            ax.legend(loc="lower right", fontsize=8)
            fig.savefig(out_dir / f"cdf_{metric}.png", dpi=100)
        finally:
            plt.close(fig)


def plot_timeseries(runs: list[Curves], png: Path) -> None:
    """Completed requests/s, output tokens/s and TTFC p50 of each run against its elapsed seconds."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(PANELS), 1, figsize=(9, 9), dpi=100, sharex=True)
    try:
        drawn = [(run.label, ts) for run in runs if (ts := run.timeseries) is not None]
        for label, ts in drawn:
            for ax, (column, _, scale) in zip(axes, PANELS, strict=True):
                ax.plot(ts[ELAPSED], ts[column] * scale, linewidth=1.4, label=label)
        for ax, (_, ylabel, _) in zip(axes, PANELS, strict=True):
            ax.set_ylabel(ylabel, fontsize=9)
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
        if drawn:  # a legend of no line is a matplotlib warning on the console
            axes[0].legend(loc="upper right", fontsize=8)
        axes[-1].set_xlabel("seconds since each run started")
        fig.savefig(png, dpi=100)
    finally:
        plt.close(fig)


def _pyplot() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
