"""Sweeps and capacity searches: where a run sits (group, tags, name) and the summary directories' data.

A run is one of a sweep, or one attempt of a capacity search, when its run.json says so (`sweep`,
`capacity_search`; outputs.md): a folder's name proves nothing either way (a user's `output_dir:
sweep-nightly` holds plain runs; a user renames `sweep-<stamp>` to `nightly-jan1`). Such a run inside
its container (`<sweep>/`, `<capsearch>/runs/`) takes the container's name as its group, as the
container's summary run does; moved out of it, a group named after the sweep or search id.

A folder that is no run directory is a sweep when it holds `sweep_manifest.json` (the runner writes it
before the first run), a capacity search when it holds `capacity_search_results.json` or, during its
first attempt (the runner writes the results after each attempt), an attempt whose run.json says it
is one. Whatever its name: the runner's `sweep-` and `capsearch-` prefixes are only its default.

A sweep's summary waits for the manifest's final status: completed, interrupted, or crashed (set by
`veeksha-run evaluate` on a sweep whose process died).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veeksha.shared.errors import ContractError
from veeksha.shared.jsonio import read_json
from veeksha.shared.paths import (
    CAPSEARCH_ATTEMPTS_CSV,
    CAPSEARCH_RESULTS,
    CAPSEARCH_RUNS_DIR,
    CONFIG_YML,
    SWEEP_MANIFEST,
    SWEEP_SUMMARY_CSV,
    SWEEP_SUMMARY_JSON,
)
from veeksha.shared.records import MEMBER_NOT_RUN, MEMBER_PENDING, RUN_RUNNING, missing_metrics, run_finished
from veeksha.uploader.reader import (
    NUMBER,
    STRING,
    check_field,
    check_objects,
    is_run_dir,
    parse_number,
    read_config,
    read_run_info,
)
from veeksha.uploader.run_files import RunFiles, is_own_file

RUN = "run"
SWEEP_RUN = "sweep_run"
CAPSEARCH_ATTEMPT = "capsearch_attempt"
SWEEP_SUMMARY = "sweep_summary"
CAPSEARCH_SUMMARY = "capsearch_summary"

TAG_SWEEP = "sweep"
TAG_CAPSEARCH = "capsearch"
TAG_BEST = "best"
TAG_SUMMARY = "summary"


def is_sweep_dir(path: Path) -> bool:
    """Its manifest makes it one, not its name (a renamed copy is still the sweep)."""
    return (path / SWEEP_MANIFEST).is_file() and not is_run_dir(path)


def is_capsearch_dir(path: Path) -> bool:
    """Its results, or an attempt under runs/, make it one, not its name."""
    if is_run_dir(path):
        return False
    return (path / CAPSEARCH_RESULTS).is_file() or any(_is_attempt(m) for m in capsearch_members(path))


def _is_attempt(run_dir: Path) -> bool:
    """run.json names the run's capacity search (a broken one says nothing: its own upload reports it)."""
    try:
        return bool(read_run_info(run_dir).get("capacity_search"))
    except ContractError:
        return False


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir())
    except OSError:
        return []


def sweep_members(sweep_dir: Path) -> list[Path]:
    return [p for p in _subdirs(sweep_dir) if is_run_dir(p)]


def capsearch_members(cs_dir: Path) -> list[Path]:
    return [p for p in _subdirs(cs_dir / CAPSEARCH_RUNS_DIR) if is_run_dir(p)]


@dataclass(frozen=True)
class Context:
    """What a run directory's container adds to its W&B run."""

    kind: str = RUN
    group: str | None = None  # used when no group is configured
    tags: tuple[str, ...] = ()
    name: str | None = None  # capacity-search attempts are named by attempt and value
    index: int | None = None  # position in a sweep, to keep configured run names apart


def run_context(run_dir: Path, run_info: dict[str, Any]) -> Context:
    """What run.json says the run is; the folder it sits in only names its group."""
    parent = run_dir.parent
    if sweep := run_info.get("sweep"):
        group = parent.name if is_sweep_dir(parent) else _short_group("sweep", sweep)
        index = sweep.get("index") if isinstance(sweep, dict) else None
        return Context(SWEEP_RUN, group, (TAG_SWEEP,), index=index)
    if cs := run_info.get("capacity_search"):
        # This run's own run.json already makes its grandparent a search (is_capsearch_dir): only
        # the layout is asked, never the folder's name.
        in_cs = parent.name == CAPSEARCH_RUNS_DIR and not is_run_dir(parent.parent)
        group = parent.parent.name if in_cs else _short_group("capsearch", cs)
        tags = (TAG_CAPSEARCH, TAG_BEST) if in_cs and _is_best(parent.parent, run_dir) else (TAG_CAPSEARCH,)
        return Context(CAPSEARCH_ATTEMPT, group, tags, name=_attempt_name(run_dir, cs))
    return Context()


def _short_group(kind: str, info: Any) -> str | None:
    ident = info.get("id") if isinstance(info, dict) else None
    return f"{kind}-{str(ident)[:8]}" if ident else None


def _attempt_name(run_dir: Path, cs: Any) -> str:
    if not isinstance(cs, dict):
        return run_dir.name
    knob = str(cs.get("knob") or "value").rsplit(".", 1)[-1]
    return f"attempt-{cs.get('iteration')} {knob}={cs.get('value')}"


def _is_best(cs_dir: Path, run_dir: Path) -> bool:
    """The search's best attempt, once the search has ended: mid-search `best_run_dir` is only the best
    so far, and the runner's final upload of the search directory re-tags the attempt that won."""
    if not is_own_file(cs_dir, cs_dir / CAPSEARCH_RESULTS):
        return False  # the summary upload reports why
    try:
        results = read_json(cs_dir / CAPSEARCH_RESULTS)
        best, status = results.get("best_run_dir"), results.get("status")
    except (ContractError, AttributeError):
        return False  # the summary upload reports a corrupt results file
    return status != RUN_RUNNING and bool(best) and Path(str(best)).name == run_dir.name


# ---------------------------------------------------------------- summary directories


@dataclass
class ContainerData:
    """A sweep or capacity-search directory, read for its summary run."""

    kind: str  # SWEEP_SUMMARY | CAPSEARCH_SUMMARY
    root: Path
    ident: str  # sweep id / search id: the summary run's identity
    members: list[Path]
    config: dict[str, Any]  # the config whose `wandb:` section applies
    files: list[str] = field(default_factory=list)  # artifact files, relative
    table: list[dict[str, Any]] = field(default_factory=list)  # sweep_summary rows / attempts
    result: dict[str, Any] = field(default_factory=dict)  # capacity_search_results.json
    veeksha_version: str | None = None  # the version that wrote it (its runs'), when they say
    unfinished: str | None = None  # why the summary cannot be uploaded yet
    warnings: list[str] = field(default_factory=list)  # files left out, and why


def _own_files(run_files: RunFiles, names: tuple[str, ...]) -> list[str]:
    """Those of `names` that exist and may be read (see run_files); the others are warned about."""
    return [n for n in names if run_files.optional(run_files.root / n)]


def _member_unfinished(members: list[Path]) -> str | None:
    """Why the container must wait for a member: it is running, being evaluated, or has no metrics
    (its evaluation failed: only `veeksha-run evaluate` on it ends that wait); None when none is."""
    for m in members:
        try:
            info = read_run_info(m)
        except ContractError:
            continue  # that run's own upload reports it
        if (missing := missing_metrics(info)) is not None:
            return f"member {m.name} has no metrics yet: {missing}"
        if not run_finished(info):
            return f"member {m.name} is still running or being evaluated"
    return None


def _first_member_info(members: list[Path], key: str) -> dict[str, Any]:
    for m in members:
        try:
            value = read_run_info(m).get(key)
        except ContractError:
            continue
        if isinstance(value, dict):
            return value
    return {}


def _members_version(members: list[Path]) -> str | None:
    """The veeksha version that wrote a sweep or capacity search: its manifest and results do not
    say, its runs' run.json do (one process writes them all)."""
    for m in members:
        try:
            version = read_run_info(m).get("veeksha_version")
        except ContractError:
            continue
        if version:
            return str(version)
    return None


def container_members(root: Path) -> list[Path]:
    """The run directories of a sweep or a capacity search."""
    return sweep_members(root) if is_sweep_dir(root) else capsearch_members(root)


def read_container(root: Path, kind: str) -> ContainerData:
    """A sweep's or a capacity search's files (`kind`: SWEEP_SUMMARY or CAPSEARCH_SUMMARY)."""
    return read_sweep(root) if kind == SWEEP_SUMMARY else read_capsearch(root)


def container_config(root: Path) -> dict[str, Any]:
    """The config whose `wandb:` section governs a container's summary run."""
    if (root / CONFIG_YML).is_file():
        return read_config(root / CONFIG_YML)
    members = container_members(root)
    return read_config(members[0] / CONFIG_YML) if members else {}


def wandb_section(config: dict[str, Any]) -> Any:
    """`wandb:` of a benchmark config, or of the benchmark inside a capacity-search config."""
    if "wandb" in config:
        return config["wandb"]
    inner = config.get("benchmark_config")
    return inner.get("wandb") if isinstance(inner, dict) else None


def read_sweep(root: Path) -> ContainerData:
    members = sweep_members(root)
    files = RunFiles(root)
    manifest = _read_manifest(files, root / SWEEP_MANIFEST)
    ident = manifest.get("sweep_id") or _first_member_info(members, "sweep").get("id") or root.name
    data = ContainerData(SWEEP_SUMMARY, root, str(ident), members, container_config(root))
    data.veeksha_version = _members_version(members)
    summary_path = root / SWEEP_SUMMARY_JSON
    waiting = _member_unfinished(members)
    if waiting:
        data.unfinished = f"sweep not finished: {waiting}"
        return data
    if not _sweep_ended(manifest):
        data.unfinished = _sweep_going_on(root, manifest)
        return data
    if not summary_path.exists():
        # The sweep has ended (its runner rewrites the table with every manifest update): waiting
        # would never end. `evaluate` on the sweep directory rebuilds the table from its runs.
        data.unfinished = f"{SWEEP_SUMMARY_JSON} is missing: run `veeksha-run evaluate {root}` to rebuild it"
        return data
    summary = read_json(files.require(summary_path))
    rows = summary.get("runs") if isinstance(summary, dict) else summary
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ContractError(f"{summary_path}: expected {{'runs': [one object per run]}}")
    data.table = [_never_run(row) for row in rows]
    data.files = _own_files(files, (SWEEP_MANIFEST, SWEEP_SUMMARY_JSON, SWEEP_SUMMARY_CSV))
    data.warnings = files.warnings
    return data


def _read_manifest(files: RunFiles, path: Path) -> dict[str, Any]:
    """sweep_manifest.json with the fields the uploader uses checked ({} when it cannot be read: the
    sweep's files are warned about)."""
    manifest = read_json(path) if files.optional(path) else {}
    if not isinstance(manifest, dict):
        raise ContractError(f"{path}: expected a JSON object")
    check_field(path, "sweep_id", manifest.get("sweep_id"), STRING)
    check_field(path, "status", manifest.get("status"), STRING)
    check_field(path, "count", manifest.get("count"), NUMBER)
    check_objects(path, "runs", manifest.get("runs"))
    return manifest


def _sweep_ended(manifest: dict[str, Any]) -> bool:
    """A final status (completed, interrupted, crashed: outputs.md). Older sweeps: without a status,
    and listing a run once it had ended, one entry per combination says it has ended."""
    status = manifest.get("status")
    if status is not None:
        return status != RUN_RUNNING
    expected, listed = manifest.get("count"), manifest.get("runs") or []
    return not expected or len(listed) >= expected


def _sweep_going_on(root: Path, manifest: dict[str, Any]) -> str:
    """Why a sweep's summary waits, and what ends the wait when the sweep will never finish itself."""
    listed = manifest.get("runs") or []
    ended = [e for e in listed if e.get("status") not in (MEMBER_PENDING, RUN_RUNNING)]
    return (
        f"sweep not finished ({len(ended)}/{manifest.get('count') or '?'} runs ended in {SWEEP_MANIFEST}; "
        f"if its process died, `veeksha-run evaluate {root}` marks it crashed)"
    )


def _never_run(row: dict[str, Any]) -> dict[str, Any]:
    """A combination still `pending` in a sweep that has ended will never run: shown so."""
    return {**row, "status": MEMBER_NOT_RUN} if row.get("status") == MEMBER_PENDING else row


def read_capsearch(root: Path) -> ContainerData:
    members = capsearch_members(root)
    results_path = root / CAPSEARCH_RESULTS
    ident = _first_member_info(members, "capacity_search").get("id") or root.name
    data = ContainerData(CAPSEARCH_SUMMARY, root, str(ident), members, container_config(root))
    data.veeksha_version = _members_version(members)
    waiting = _member_unfinished(members)
    if waiting:
        data.unfinished = f"capacity search not finished: {waiting}"
        return data
    if not results_path.exists():
        data.unfinished = f"capacity search not finished (no {CAPSEARCH_RESULTS} yet)"
        return data
    files = RunFiles(root)
    results = read_json(files.require(results_path))
    if not isinstance(results, dict):
        raise ContractError(f"{results_path}: expected a JSON object")
    for key in ("id", "status", "best_run_dir"):
        check_field(results_path, key, results.get(key), STRING)
    history = check_objects(results_path, "history", results.get("history"))
    if results.get("status") == RUN_RUNNING:  # rewritten after every attempt: wait for the end
        data.unfinished = "capacity search not finished (status running)"
        return data
    data.result = results
    data.ident = str(results.get("id") or ident)
    attempts_path = root / CAPSEARCH_ATTEMPTS_CSV
    if files.optional(attempts_path):
        data.table = read_loose_csv(attempts_path)
    else:
        data.table = [{k: v for k, v in h.items() if k != "slo_results"} for h in history]
    data.files = _own_files(files, (CONFIG_YML, CAPSEARCH_RESULTS, CAPSEARCH_ATTEMPTS_CSV))
    data.warnings = files.warnings
    return data


def read_loose_csv(path: Path) -> list[dict[str, Any]]:
    """A CSV whose cells may be numbers, booleans or text."""
    try:
        with path.open(newline="") as f:
            return [{k: _loose(v, path) for k, v in row.items()} for row in csv.DictReader(f)]
    except (UnicodeDecodeError, csv.Error) as e:
        raise ContractError(f"{path}: not a readable CSV ({e})") from None


def _loose(text: str | None, path: Path) -> Any:
    if text is None or text == "":
        return None
    if text in ("True", "true", "False", "false"):
        return text.lower() == "true"
    try:
        return parse_number(text, str(path))
    except ContractError:
        return text
