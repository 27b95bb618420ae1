"""Read and validate one run directory into plain data; every error names the file (outputs.md).

Nothing here imports wandb: the reader is shared by --dry-run, the digest and the upload itself.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veeksha.shared.csv_lines import complete_lines
from veeksha.shared.errors import ContractError, VeekshaError
from veeksha.shared.jsonio import read_json
from veeksha.shared.paths import (
    ARTIFACT_ALLOW_LIST,
    DISTRIBUTION_METRICS,
    METRICS_DIR,
    SERVER_METRICS_CSV,
    TIMESERIES_CSV,
    RunPaths,
)
from veeksha.shared.records import (
    DISTRIBUTION_CSV_COLUMNS,
    QUANTILE_GRID,
    RUN_FAILED,
    RUN_RUNNING,
    RUN_STATUSES,
)
from veeksha.uploader.run_files import RunFiles

Number = int | float
_INT = re.compile(r"^[+-]?\d+$")
QUANTILE_ROWS = len(QUANTILE_GRID)  # metrics/<metric>.csv: fewer rows were cut short, e.g. by a copy
CUT_OFF = "cut off (no newline: the run, or a copy of the directory, stopped mid-write)"


@dataclass
class RunData:
    """A run directory as plain data, before any redaction."""

    paths: RunPaths
    run_info: dict[str, Any]
    config: dict[str, Any]
    summary_stats: dict[str, Any] = field(default_factory=dict)
    throughput: dict[str, Any] = field(default_factory=dict)
    slo: dict[str, Any] | None = None
    health: dict[str, Any] | None = None
    timeseries: list[dict[str, Number]] = field(default_factory=list)
    server_metrics: list[dict[str, Number]] = field(default_factory=list)  # scraped, when it was
    quantiles: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    images: list[str] = field(default_factory=list)  # relative paths of metrics/*.png
    files: list[str] = field(default_factory=list)  # allow-listed relative paths
    warnings: list[str] = field(default_factory=list)  # files left out, and why

    @property
    def status(self) -> str:
        return self.run_info["status"]

    @property
    def run_id(self) -> str:
        return self.run_info["run_id"]


def is_run_dir(path: Path) -> bool:
    return (path / RunPaths(path).run_json.name).is_file()


def read_run_info(root: Path) -> dict[str, Any]:
    """run.json, checked for the two fields the uploader depends on."""
    path = RunFiles(root).require(RunPaths(root).run_json)
    info = read_json(path)
    if not isinstance(info, dict):
        raise ContractError(f"{path}: expected a JSON object")
    run_id = info.get("run_id")
    if not isinstance(run_id, str) or not run_id.strip():
        raise ContractError(f"{path}: run_id is missing or not a string")
    if info.get("status") not in RUN_STATUSES:
        raise ContractError(f"{path}: status {info.get('status')!r} is not one of {', '.join(RUN_STATUSES)}")
    return info


def read_config(path: Path) -> dict[str, Any]:
    """A config.yml as a plain tree (the uploader logs what the run used, not a re-validated copy).

    It is data: read with no tags at all (an `!include` would reach outside the directory), at most
    1 MiB, aliases bounded, duplicate keys refused (dump_config_yaml never writes any: one means a
    hand edit whose meaning is unclear)."""
    from veeksha.shared.config_loader import read_plain_yaml

    RunFiles(path.parent).require(path)
    try:
        return read_plain_yaml(path)
    except VeekshaError as e:
        raise ContractError(str(e)) from None


def allowed_files(root: Path, run_files: RunFiles | None = None) -> list[str]:
    """Relative paths matching the artifact allow-list that the uploader may read; never wandb/."""
    run_files = run_files or RunFiles(root)
    found = {p.relative_to(root).as_posix() for pat in ARTIFACT_ALLOW_LIST for p in run_files.glob(pat)}
    return sorted(found)


def parse_number(text: str, where: str) -> Number | None:
    text = text.strip()
    if text == "":
        return None
    if _INT.match(text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        raise ContractError(f"{where}: {text!r} is not a number") from None


def read_numeric_csv(path: Path) -> tuple[list[str], list[dict[str, Number]]]:
    """A CSV of numbers (empty cell = no value), as typed rows."""
    try:
        with path.open(newline="") as f:
            return _numeric_rows(path, f)
    except FileNotFoundError:
        raise ContractError(f"{path}: file is missing") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise ContractError(f"{path}: not a readable CSV ({e})") from None


@dataclass
class AppendedCsv:
    """An appended CSV as read: its header, the rows kept, and the lines left out."""

    header: list[str]
    rows: list[dict[str, Number]]
    cut_line: int | None  # the last line's number when a crash cut it off (no newline)
    left_out: list[tuple[int, str]] = field(default_factory=list)  # complete lines: (number, why)


def read_appended_csv(path: Path) -> tuple[list[str], list[dict[str, Number]], int | None]:
    """The header, rows and cut-off last line of `read_appended` (the lines left out unsaid)."""
    read = read_appended(path)
    return read.header, read.rows, read.cut_line


def read_appended(path: Path) -> AppendedCsv:
    """A CSV of numbers appended line by line while the run went (metrics/timeseries.csv, the scraped
    metrics/server_metrics.csv), as typed rows.

    A run that crashed mid-write leaves a last line without its newline: a cell short, or a number cut
    short that would still parse. That line is dropped (shared/csv_lines.py: evaluation drops it too),
    as the live follower never streams a partial line (follow.TimeseriesTail). A complete line with a
    cell that is no number, or with too few or too many cells, is left out too (`left_out`): evaluation
    (runner/evaluation/appended_csv.py) reads such a cell as missing and trims such a row, so a
    directory that evaluates must upload; refusing it failed the directory on every attempt. The
    header stays strict, as do the files written whole (read_numeric_csv); a header cut off (its line
    has no newline: the writers write it with one) leaves no complete line: no header, no rows."""
    try:
        lines = complete_lines(path.read_bytes())
        if lines.cut_line == 1:
            return AppendedCsv([], [], 1)
        # A stray byte that is no UTF-8 makes its cell no number: that row is left out, not the file.
        text = lines.data.decode(errors="replace")
        left_out: list[tuple[int, str]] = []
        header, rows = _numeric_rows(path, io.StringIO(text, newline=""), left_out)
    except FileNotFoundError:
        raise ContractError(f"{path}: file is missing") from None
    except csv.Error as e:
        raise ContractError(f"{path}: not a readable CSV ({e})") from None
    return AppendedCsv(header, rows, lines.cut_line, left_out)


def _numeric_rows(
    path: Path, lines: Iterable[str], left_out: list[tuple[int, str]] | None = None
) -> tuple[list[str], list[dict[str, Number]]]:
    """Typed rows; a bad line raises ContractError, or with `left_out` is noted there and skipped."""
    reader = csv.reader(lines)
    header = next(reader, None)
    if not header:
        raise ContractError(f"{path}: empty file (no header row)")
    header = [h.strip() for h in header]
    rows = []
    for lineno, cells in enumerate(reader, start=2):
        if not cells:
            continue
        try:
            if len(cells) != len(header):
                raise ContractError(f"{path} line {lineno}: {len(cells)} cells, header has {len(header)}")
            row = {}
            for name, cell in zip(header, cells, strict=True):
                value = parse_number(cell, f"{path} line {lineno} column {name}")
                if value is not None:
                    row[name] = value
        except ContractError as e:
            if left_out is None:
                raise
            left_out.append((lineno, str(e).removeprefix(f"{path} line {lineno}").lstrip(": ")))
            continue
        rows.append(row)
    return header, rows


def _json_object(run_files: RunFiles, path: Path, required: bool) -> dict[str, Any] | None:
    if required:
        run_files.require(path)
    elif run_files.optional(path) is None:
        return None
    data = read_json(path)
    if not isinstance(data, dict):
        raise ContractError(f"{path}: expected a JSON object")
    return data


# ---------------------------------------------------------------- the shape of what is used
#
# A JSON file can be valid JSON and still not have the shape the uploader uses: a number where an
# object should be, or a table column holding a number in one row and a string in the next (which
# wandb.Table refuses). Found only while logging, that fails inside the SDK once the W&B run exists,
# with a message that names no file. So what is used is checked here, before any W&B call: the error
# names the file and the field, and --dry-run reports it too. A null (or absent) value is always
# accepted: it is "no value" for every type (outputs.md: no samples gives `observed_value: null`).


@dataclass(frozen=True)
class JsonType:
    """A JSON type a used value must have, as an error message says it."""

    name: str
    accepts: Callable[[Any], bool]


STRING = JsonType("a string", lambda v: isinstance(v, str))
# true and false are Python ints, but a different type to W&B: never a number here.
NUMBER = JsonType("a number", lambda v: isinstance(v, int | float) and not isinstance(v, bool))
BOOLEAN = JsonType("true or false", lambda v: isinstance(v, bool))

# slo_results.json "results"[]: every field becomes a column of the `slo_results` table.
SLO_RESULT_TYPES: dict[str, JsonType] = {
    "name": STRING,
    "metric": STRING,
    "percentile": NUMBER,
    "threshold": NUMBER,
    "observed_value": NUMBER,
    "met": BOOLEAN,
    "slo_metric_key": STRING,
    "lower_is_better": BOOLEAN,
    "num_samples": NUMBER,
}
# health_checks.json "checks"[]: the `health_checks` table's columns (metrics and thresholds are not used).
HEALTH_CHECK_TYPES: dict[str, JsonType] = {"name": STRING, "result": STRING}


def json_type(value: Any) -> str:
    """What a parsed JSON value is, as an error message says it."""
    if value is None:
        return "null"
    if isinstance(value, bool):  # before numbers: a bool is a Python int
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


def check_field(path: Path, where: str, value: Any, expected: JsonType) -> None:
    """`value`, found at `where` in the file at `path`, is null or of the expected type."""
    if value is not None and not expected.accepts(value):
        raise ContractError(f"{path}: {where} is {json_type(value)}, expected {expected.name}")


def check_objects(
    path: Path, where: str, value: Any, fields: dict[str, JsonType] | None = None
) -> list[dict[str, Any]]:
    """`value` is a list of objects (null: an empty one), and each object's `fields` are null or of
    their type. Returns the list."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ContractError(f"{path}: {where} is {json_type(value)}, expected a list of objects")
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise ContractError(f"{path}: {where}[{i}] is {json_type(item)}, expected an object")
        for name, expected in (fields or {}).items():
            check_field(path, f"{where}[{i}].{name}", item.get(name), expected)
    return value


def _verdicts(
    run_files: RunFiles, path: Path, required: bool, verdict: str, entries: str, fields: dict[str, JsonType]
) -> dict[str, Any] | None:
    """slo_results.json or health_checks.json: `{verdict: bool, entries: [one object each]}`, whose
    verdict and entries become summary keys and a table."""
    data = _json_object(run_files, path, required)
    if data is not None:
        check_field(path, verdict, data.get(verdict), BOOLEAN)
        check_objects(path, entries, data.get(entries), fields)
    return data


def _has_slos(config: dict[str, Any]) -> bool:
    evaluators = config.get("evaluators") or []
    return any(isinstance(e, dict) and e.get("slos") for e in evaluators)


def read_quantiles(run_files: RunFiles) -> dict[str, list[tuple[float, float]]]:
    """Every metrics/<metric>.csv with `cdf,value` columns (101 quantiles).

    A table cut short (an interrupted copy: no newline at its end, or fewer rows than the runner
    writes) would log a wrong, partial curve: it is left out (RunFiles.leave_out: out of the artifact
    too) with a warning naming it. A complete table with a cell
    that is no number still fails the directory (ContractError naming the line)."""
    out: dict[str, list[tuple[float, float]]] = {}
    for path in run_files.glob(f"{METRICS_DIR}/*.csv"):
        if path.name in (TIMESERIES_CSV, SERVER_METRICS_CSV):
            continue
        points = _quantile_points(run_files, path)
        if points is not None:
            out[path.stem] = points
    return out


def _quantile_points(run_files: RunFiles, path: Path) -> list[tuple[float, float]] | None:
    """A quantile table's (cdf, value) points that have a value; None when the CSV is some other
    table (it still goes into the artifact) or was cut short (left out)."""
    cdf, value = DISTRIBUTION_CSV_COLUMNS
    raw = path.read_bytes()
    # Before parsing: a cut line may be a cell short, which would fail the whole directory.
    if not raw.endswith(b"\n") and (path.stem in DISTRIBUTION_METRICS or _first_cells(raw) == (cdf, value)):
        run_files.leave_out(path, "is cut off (no newline at its end: copy it again)")
        return None
    header, rows = read_numeric_csv(path)
    if tuple(header[:2]) != DISTRIBUTION_CSV_COLUMNS:
        return None
    if any(cdf not in r for r in rows):
        raise ContractError(f"{path}: a row has no cdf value")
    if len(rows) < QUANTILE_ROWS:  # cut at the end of a line
        run_files.leave_out(path, f"is cut off ({len(rows)} of its {QUANTILE_ROWS} rows: copy it again)")
        return None
    return [(float(r[cdf]), float(r[value])) for r in rows if value in r]


def _first_cells(raw: bytes) -> tuple[str, ...]:
    """The first two cells of a CSV's first line (the writers never quote)."""
    line = raw.split(b"\n", 1)[0].decode(errors="replace")
    return tuple(cell.strip() for cell in line.split(",")[:2])


def readable_images(run_files: RunFiles) -> list[str]:
    """Relative paths of metrics/*.png that open as images: wandb.Image opens and loads each one
    inside the SDK session, where a broken one (cut by a copy) failed the directory after its W&B
    run existed, at every attempt. Checked here, a broken one is left out with a warning."""
    from PIL import Image

    images = []
    for path in run_files.glob(f"{METRICS_DIR}/*.png"):
        try:
            with Image.open(path) as image:
                image.load()  # what wandb.Image does: decodes the whole file
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            run_files.leave_out(path, f"is not a readable image ({e})")
            continue
        images.append(path.relative_to(run_files.root).as_posix())
    return images


def read_run_dir(root: Path) -> RunData:
    """Everything an upload needs from one run directory (raises ContractError naming the file)."""
    paths = RunPaths(root)
    run_files = RunFiles(root)
    info = read_run_info(root)
    config = read_config(paths.config_yml)
    if info["status"] == RUN_RUNNING:
        return RunData(paths=paths, run_info=info, config=config)
    # A failed run may have died before writing metrics: upload what is there.
    required = info["status"] != RUN_FAILED
    slo_required = required and _has_slos(config)
    data = RunData(
        paths=paths,
        run_info=info,
        config=config,
        summary_stats=_json_object(run_files, paths.summary_stats, required) or {},
        throughput=_json_object(run_files, paths.throughput_metrics, required) or {},
        slo=_verdicts(
            run_files, paths.slo_results, slo_required, "all_slos_met", "results", SLO_RESULT_TYPES
        ),
        health=_verdicts(
            run_files, paths.health_checks_json, False, "all_passed", "checks", HEALTH_CHECK_TYPES
        ),
    )
    data.timeseries = _timeseries(run_files, paths.timeseries_csv, required)
    data.server_metrics = _server_metrics(run_files, paths.server_metrics_csv)
    # Read before the artifact's list: a file found unusable here is left out of both.
    data.quantiles = read_quantiles(run_files)
    data.images = readable_images(run_files)
    data.files = allowed_files(root, run_files)
    data.warnings = run_files.warnings
    return data


def _timeseries(run_files: RunFiles, path: Path, required: bool) -> list[dict[str, Number]]:
    """The time series, appended while the run went (read as the scraped metrics are)."""
    if required:
        run_files.require(path)
    elif run_files.optional(path) is None:
        return []
    return _appended(run_files, path)


def _server_metrics(run_files: RunFiles, path: Path) -> list[dict[str, Number]]:
    """The optional scraped metrics."""
    if run_files.optional(path) is None:
        return []
    return _appended(run_files, path)


def _appended(run_files: RunFiles, path: Path) -> list[dict[str, Number]]:
    """An appended CSV's rows; a last line a crash cut off, and a complete line that is not all numbers,
    are left out, each with a warning (the upload's `warning:` lines)."""
    read = read_appended(path)
    rel = path.relative_to(run_files.root).as_posix()
    if read.cut_line == 1:  # said, not read as a run without rows
        run_files.warnings.append(f"{rel} has no rows: its header (line 1) is {CUT_OFF}")
        return []
    _check_elapsed(path, read.header)
    for lineno, why in read.left_out:
        run_files.warnings.append(f"{rel} line {lineno} left out: {why}")
    if read.cut_line is not None:
        run_files.warnings.append(f"{rel} line {read.cut_line} left out: {CUT_OFF}")
    return read.rows


def _check_elapsed(path: Path, header: list[str]) -> None:
    if "elapsed_s" not in header:
        raise ContractError(f"{path}: no elapsed_s column")


__all__ = [
    "BOOLEAN",
    "NUMBER",
    "STRING",
    "RunData",
    "allowed_files",
    "check_field",
    "check_objects",
    "is_run_dir",
    "read_run_dir",
    "read_run_info",
]
