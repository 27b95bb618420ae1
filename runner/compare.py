"""`veeksha-run compare DIR DIR... --output_dir OUT`: runs side by side, without W&B.

For two or more run directories (a sweep directory stands for its runs), in OUT:
- `compare_summary.csv`: one row per summary metric, one column per run, then each run's change
  against the first in percent; the same table on the console;
- `cdf_<metric>.png`: the runs' CDFs of the main latencies overlaid, from their `<metric>.csv`;
- `timeseries_compare.png`: completed requests/s, output tokens/s and TTFC p50 of every run over time.

Every input is read and checked before OUT is made: each must be a finished run's directory (its
evaluation written to the end: run.json has finished_at) of one output contract (run.json
"contract_version"), since keys and record fields differ between versions; a damaged file (JSON or
CSV, or a metric compared that is no number) is named in one line. A sweep's member that did not
finish is left out and named. A run given twice (two spellings of one directory, a sweep given twice,
or a run and its sweep) is refused: it would be compared with itself. OUT is checked first: it must
be a directory that can be made (tried, in the nearest folder of its path that exists) or written,
and none that veeksha-run made (a run, sweep or capacity search directory, or a folder inside a run),
whose files the plots would mix in.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veeksha.runner.compare_plots import plot_cdfs, plot_timeseries, read_curves, shown
from veeksha.runner.run_dir import absolute, check_output_dir
from veeksha.shared.errors import ContractError, UsageError
from veeksha.shared.jsonio import read_json, write_atomic
from veeksha.shared.paths import SWEEP_MANIFEST, RunPaths
from veeksha.shared.records import (
    CONTRACT_VERSION,
    EVALUATION_ERROR,
    RUN_RUNNING,
    missing_metrics,
    run_finished,
    summary_stat_key,
)

SUMMARY_CSV = "compare_summary.csv"
COMPARE_TIMESERIES_PNG = "timeseries_compare.png"
CDF_METRICS = ("ttfc", "ttfa", "tbc", "tpot", "end_to_end_latency")
COUNTS = ("num_requests", "num_completed_requests", "error_rate")
THROUGHPUTS = ("request_throughput", "output_token_throughput", "goodput")
LATENCY_STATS = tuple(summary_stat_key(m, s) for m in CDF_METRICS for s in ("p50", "p99"))
COMPARED = (*COUNTS, *THROUGHPUTS, *LATENCY_STATS)  # the table's rows, in order
LEAVE_OUT = "the file is damaged: leave this run out of the comparison"


@dataclass
class Run:
    label: str
    paths: RunPaths
    summary: dict[str, Any]
    throughput: dict[str, Any]

    def value(self, key: str) -> Any:
        return self.summary[key] if key in self.summary else self.throughput.get(key)


def compare(dirs: list[Path], output_dir: Path) -> str:
    """Write the comparison into `output_dir`; return the console table (and the sweep members
    left out for having no results)."""
    check_compare_output_dir(output_dir)
    skipped: list[str] = []
    runs = load_runs(dirs, skipped)
    rows = summary_rows(runs)
    if not rows:
        raise UsageError(
            "the runs hold no summary value to compare (their metrics files are empty); "
            "run `veeksha-run evaluate DIR` on each to write them again"
        )
    # The plots' CSVs too are read (and checked) now: a damaged one is named before OUT is made.
    curves = [read_curves(run.label, run.paths, CDF_METRICS) for run in runs]
    output_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(output_dir / SUMMARY_CSV, summary_csv(runs, rows).encode())
    plot_cdfs(curves, CDF_METRICS, output_dir)
    plot_timeseries(curves, output_dir / COMPARE_TIMESERIES_PNG)
    notes = [f"left out: {what}" for what in skipped]
    return "\n".join([format_table(runs, rows), *notes])


def check_compare_output_dir(output_dir: Path) -> None:
    """Exit 2 before anything is read or written, as a run's output_dir does: OUT (or the nearest
    part of its path that exists) is a file or cannot be written, or it holds veeksha-run's results."""
    check_output_dir(output_dir, key="--output_dir")  # refuses a veeksha-run directory, or one inside a run's
    _try_writing(output_dir)


def _try_writing(output_dir: Path) -> None:
    """OUT can be made (a folder made and removed where its path first does not exist) or written
    into (a file made and removed): permissions alone do not say it (root in /proc, a read-only
    filesystem), and compare failed only once every input was read (exit 1, "cannot write")."""
    existing = output_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if existing == output_dir:
            tempfile.TemporaryFile(dir=output_dir).close()
        else:
            os.rmdir(tempfile.mkdtemp(prefix=".veeksha-compare-", dir=existing))
    except OSError as e:
        what = "cannot be written" if existing == output_dir else f"cannot be made in {existing}"
        raise UsageError(
            f"--output_dir {output_dir} {what} ({e.strerror or e}); choose another --output_dir"
        ) from None


# ------------------------------------------------------------------ inputs


def load_runs(dirs: list[Path], skipped: list[str] | None = None) -> list[Run]:
    check_given_once(dirs)
    paths = [p for d in dirs for p in run_dirs(d, skipped)]
    check_given_once([p.root for p in paths])  # a run given itself and within its sweep
    if len(paths) < 2:
        left_out = f" (left out: {'; '.join(skipped)})" if skipped else ""
        raise UsageError(
            "compare needs at least two finished run directories (or a sweep directory); "
            f"got {len(paths)}{left_out}"
        )
    versions = {p.root: contract_version(p) for p in paths}
    if len(set(versions.values())) > 1:
        listed = ", ".join(f"{root} (contract {v})" for root, v in versions.items())
        raise UsageError(
            f"runs of different output contracts cannot be compared: {listed}; "
            f"compare runs made by one Veeksha version (this one writes contract {CONTRACT_VERSION})"
        )
    labels = _labels([p.root for p in paths])
    pairs = zip(labels, paths, strict=True)
    return [Run(label, p, _metrics(p.summary_stats), _metrics(p.throughput_metrics)) for label, p in pairs]


def check_given_once(dirs: list[Path]) -> None:
    """Each directory once: one given twice (or in two spellings: `a` and `./a/`, a link to it) is
    compared with itself, every change 0%, and a sweep's left-out members were named twice."""
    seen: dict[str, Path] = {}
    for d in dirs:
        first = seen.setdefault(os.path.realpath(d), d)
        if first is not d:
            spelled = "" if str(first) == str(d) else f" (as {first} and {d})"
            raise UsageError(
                f"{first} is given twice{spelled}; give each run once (a sweep directory stands for its runs)"
            )


def run_dirs(directory: Path, skipped: list[str] | None = None) -> list[RunPaths]:
    """A finished run directory, or the runs a sweep directory lists that finished: a member that
    failed to start, or whose evaluation did not finish, is named in `skipped` instead."""
    paths = RunPaths(directory)
    manifest = directory / SWEEP_MANIFEST
    if manifest.exists() and not paths.summary_stats.exists():
        return _sweep_members(directory, manifest, skipped)
    # A run.json alone is a run too: one whose evaluation failed before summary_stats.json is told
    # to evaluate it, not that it is no run.
    if paths.summary_stats.exists() or paths.run_json.exists():
        why = not_finished(paths)
        if why is not None:
            raise UsageError(f"{directory} cannot be compared yet: {why}")
        return [paths]
    raise UsageError(
        f"{directory} is neither a finished run directory (no metrics/summary_stats.json) nor a sweep "
        f"directory (no {SWEEP_MANIFEST}); pass directories that `veeksha-run` made"
    )


def not_finished(paths: RunPaths) -> str | None:
    """Why the run's metrics cannot be compared yet, and what to do; None when they can. evaluate
    writes summary_stats.json first and run.json's finished_at last: a run without finished_at (its
    evaluation failed, was cut short, or is going on) may hold a mix of old and missing files. A
    directory without run.json (one that was copied in part) says nothing against its metrics."""
    info = _read_input(paths.run_json, LEAVE_OUT) if paths.run_json.exists() else None
    if info is not None and not isinstance(info, dict):
        raise UsageError(f"{paths.run_json}: not a JSON object; {LEAVE_OUT}")
    has_summary = paths.summary_stats.exists()
    if info is None:
        return None if has_summary else "no results"
    evaluate = f"run `veeksha-run evaluate {paths.root}` first"
    if run_finished(info):
        return None if has_summary else f"it has no metrics/summary_stats.json; {evaluate}"
    why = missing_metrics(info)
    if why is not None:
        return f"its evaluation did not finish (run.json {EVALUATION_ERROR}: {why}); {evaluate}"
    if info.get("status") == RUN_RUNNING:
        return f"run.json says it is still running; wait for its end (if its process died, {evaluate})"
    return f"its evaluation did not finish (run.json has no finished_at); {evaluate}"


def _sweep_members(sweep: Path, manifest: Path, skipped: list[str] | None) -> list[RunPaths]:
    found = []
    for i, entry in enumerate(_manifest_entries(manifest)):
        member = _member(sweep, manifest, i, entry)
        why = "no results" if member is None else not_finished(member)
        if member is not None and why is None:
            found.append(member)
        elif skipped is not None:
            where = entry.get("run_dir") or "no run directory"
            skipped.append(f"{_name(sweep)} run {entry.get('index')} ({where}, {entry.get('status')}): {why}")
    return found


def _member(sweep: Path, manifest: Path, i: int, entry: dict[str, Any]) -> RunPaths | None:
    """The run directory of the manifest's `i`-th entry; None when it has none (it failed to start).
    A sweep writes the name of a directory inside itself: anything else (a number, an absolute path,
    `..`) is a damaged manifest, which would otherwise be a TypeError, or compare a run that is no
    member of the sweep."""
    name = entry.get("run_dir")
    if name is None or name == "":
        return None
    if not isinstance(name, str) or not _inside(name):
        raise UsageError(
            f"{manifest}: runs[{i}].run_dir is {shown(name)}, not the name of a directory inside the "
            "sweep; mend the manifest, or pass the run directories themselves"
        )
    return RunPaths(sweep / name)


def _inside(name: str) -> bool:
    parts = Path(name).parts
    return bool(parts) and not Path(name).is_absolute() and ".." not in parts and "\x00" not in name


def _manifest_entries(manifest: Path) -> list[dict[str, Any]]:
    data = _read_input(manifest, "pass the run directories themselves")
    entries = data.get("runs") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UsageError(
            f"{manifest} is not a sweep manifest (an object whose runs are a list of objects); "
            "pass the run directories themselves"
        )
    return entries


def contract_version(paths: RunPaths) -> int:
    """The run's output contract (1: made before run.json said). A version that is no whole number
    means a damaged run.json: named, exit 2 (it was a TypeError or ValueError traceback)."""
    info = _read_input(paths.run_json, LEAVE_OUT) if paths.run_json.exists() else {}
    version = info.get("contract_version", 1) if isinstance(info, dict) else 1
    if isinstance(version, bool) or not isinstance(version, int):
        raise UsageError(
            f"{paths.run_json}: contract_version is {shown(version)}, not a whole number; {LEAVE_OUT}"
        )
    return version


def _metrics(path: Path) -> dict[str, Any]:
    """A run's summary_stats.json or throughput_metrics.json, each value compared a number (or null):
    a text or a list there was a TypeError traceback from the table, once OUT had been written."""
    fix = f"run `veeksha-run evaluate {path.parent.parent}` to write it again"
    data = _read_input(path, fix) if path.exists() else {}
    if not isinstance(data, dict):
        return {}
    for key in COMPARED:
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise UsageError(f"{path}: {key} is {shown(value)}, not a number; {fix}")
    return data


def _read_input(path: Path, fix: str) -> Any:
    """A file of an input directory: one that is not JSON is damaged input, a usage error naming it
    and what to do (exit 2, before anything is written), not a failure of compare (exit 1)."""
    try:
        return read_json(path)
    except ContractError as e:
        raise UsageError(f"{e}; {fix}") from None


def _labels(roots: list[Path]) -> list[str]:
    """Directory names, made unique (two sweeps may hold runs of one name)."""
    labels: list[str] = []
    for root in roots:
        label = _name(root)
        while label in labels:
            label = f"{_name(absolute(root).parent)}/{label}"
        labels.append(label)
    return labels


def _name(directory: Path) -> str:
    """The directory's own name, also when given as `.` or `..` (whose Path name is "" or "..")."""
    whole = absolute(directory)
    return whole.name or str(whole)


# ------------------------------------------------------------------ the table


def summary_rows(runs: list[Run]) -> list[tuple[str, list[Any]]]:
    rows = [(key, [run.value(key) for run in runs]) for key in COMPARED]
    return [(key, values) for key, values in rows if any(v is not None for v in values)]


def change_pct(value: Any, base: Any) -> float | None:
    if not isinstance(value, int | float) or not isinstance(base, int | float) or base == 0:
        return None
    return (value - base) / base * 100


def summary_csv(runs: list[Run], rows: list[tuple[str, list[Any]]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    changes = [f"{run.label} vs {runs[0].label} (%)" for run in runs[1:]]
    writer.writerow(["metric", *(run.label for run in runs), *changes])
    for key, values in rows:
        pct = [change_pct(v, values[0]) for v in values[1:]]
        writer.writerow([key, *_cells(values), *_cells(pct)])
    return out.getvalue()


def _cells(values: list[Any]) -> list[str]:
    return ["" if v is None else repr(v) if isinstance(v, float) else str(v) for v in values]


def format_table(runs: list[Run], rows: list[tuple[str, list[Any]]]) -> str:
    width = max(len(key) for key, _ in rows) + 2
    head = "".join(f"{f'run {i + 1}':>14}" for i in range(len(runs)))
    head += "".join(f"{f'{i + 2} vs 1':>11}" for i in range(len(runs) - 1))
    lines = [f"{'runs:':<{width}}" + "  ".join(f"{i + 1} = {run.label}" for i, run in enumerate(runs))]
    lines.append(f"{'metric':<{width}}{head}")
    for key, values in rows:
        pct = [change_pct(v, values[0]) for v in values[1:]]
        cells = "".join(f"{_show(key, v):>14}" for v in values)
        cells += "".join(f"{'' if p is None else f'{p:+.1f}%':>11}" for p in pct)
        lines.append(f"{key:<{width}}{cells}")
    return "\n".join(lines)


def _show(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key in LATENCY_STATS:
        return f"{value * 1e3:.1f} ms"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
