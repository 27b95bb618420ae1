"""Creating a run directory and keeping its run.json (identity and status lifecycle)."""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from veeksha.runner.liveness import owner_fields
from veeksha.shared import __version__
from veeksha.shared.config import BenchmarkConfig
from veeksha.shared.config_loader import config_secrets, config_sha256, dump_config_yaml
from veeksha.shared.errors import ConfigError, OutputError
from veeksha.shared.jsonio import write_atomic, write_json
from veeksha.shared.paths import (
    CAPSEARCH_DIR_PREFIX,
    CAPSEARCH_RESULTS,
    SWEEP_DIR_PREFIX,
    SWEEP_MANIFEST,
    RunPaths,
)
from veeksha.shared.records import CONTRACT_VERSION, EVALUATION_ERROR, RUN_RUNNING
from veeksha.shared.redact import redact_argv, scrub_text


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(t: dt.datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def stamp(t: dt.datetime) -> str:
    return t.strftime("%Y%m%d-%H%M%S")


# make_unique_dir's tries at a free name: `name`, then `name-2` ... `name-{UNIQUE_TRIES}`.
UNIQUE_TRIES = 9_999
NAME_MAX_FALLBACK = 255  # (bytes) when the filesystem does not say


def run_dir_name(started: dt.datetime, digest: str) -> str:
    return f"{stamp(started)}-{digest[:8]}"


def longest_added_name() -> str:
    """The longest folder name the runner makes in an output_dir: a run's, a sweep's or a capacity
    search's, with make_unique_dir's suffix."""
    now = utc_now()
    names = (
        run_dir_name(now, "0" * 8),
        f"{SWEEP_DIR_PREFIX}{stamp(now)}",
        f"{CAPSEARCH_DIR_PREFIX}{stamp(now)}",
    )
    return f"{max(names, key=len)}-{UNIQUE_TRIES}"


def check_output_dir(directory: Path, key: str = "output_dir") -> None:
    """A config error, before anything is made, when runs could not be written under `directory`:
    it, or the nearest part of its path that exists, is not a directory we may write into; a name in
    its path is too long; or it is (or lies in) a directory veeksha-run made (made_by_veeksha)."""
    existing = nearest_existing(directory, key)
    check_name_lengths(directory, existing, key)
    if not existing.is_dir():
        what = "is" if existing == directory else f"cannot be made: {existing} is"
        raise ConfigError(f"config error at {key}: {directory} {what} not a directory; choose another {key}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"config error at {key}: {directory} cannot be written (no write permission on {existing}); "
            f"choose another {key}"
        )
    made_by = made_by_veeksha(directory)
    if made_by is not None:  # its runs would be found by no `veeksha-upload --recursive` of the tree
        raise ConfigError(
            f"config error at {key}: {directory} is {made_by}, whose files are veeksha-run's own; "
            f"choose another {key}, outside it"
        )


def nearest_existing(directory: Path, key: str) -> Path:
    """`directory`, or the nearest of its parents that exists. os.path, not Path: Path.exists raises
    on a name too long (ENAMETOOLONG), which check_name_lengths says in a line of its own."""
    existing = directory
    while not os.path.exists(existing) and existing != existing.parent:
        if os.path.islink(existing):  # mkdir would fail on it ("File exists") once a server ran
            raise ConfigError(
                f"config error at {key}: {existing} is a link to {os.readlink(existing)}, which does "
                f"not exist; create that directory or choose another {key}"
            )
        existing = existing.parent
    return existing


def check_name_lengths(directory: Path, existing: Path, key: str) -> None:
    """Each name in the path, and the folder the runner adds, within the filesystem's limit on a
    name (bytes, not characters: 'é' is two): else the run failed once its server was up, with
    "[Errno 36] File name too long" (exit 1) and the folders above that name made for nothing."""
    limit = name_max(existing)
    added = longest_added_name()
    for name in (*directory.parts, added):
        size = _bytes(name)
        if size <= limit:
            continue
        shown = name if len(name) <= 24 else f"{name[:20]}..."
        if name == added:
            raise ConfigError(
                f"config error at {key}: the folders veeksha-run makes in {directory} (e.g. {name}, "
                f"{size} bytes) are longer than the {limit} bytes a name may have there; choose another {key}"
            )
        raise ConfigError(
            f"config error at {key}: the folder name {shown!r} in it is {size} bytes ({len(name)} "
            f"characters), more than the {limit} bytes a name may have; choose a shorter {key}"
        )


def _bytes(name: str) -> int:
    """The length of `name` as the filesystem takes it (a name from argv keeps its undecodable bytes)."""
    try:
        return len(os.fsencode(name))
    except UnicodeEncodeError:  # a lone surrogate from YAML: no file can be named so, refused when loaded
        return 0


def name_max(existing: Path) -> int:
    """The longest file name (bytes) the filesystem holding `existing` takes."""
    try:
        return os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        return NAME_MAX_FALLBACK


def made_by_veeksha(directory: Path) -> str | None:
    """What veeksha-run directory `directory` is or lies in (a run's), or None: a run's output_dir or
    compare's --output_dir there would mix its files with veeksha-run's own, and a run written inside
    another is found by no `veeksha-upload --recursive` (the walk stops at the first run directory)."""
    if (directory / SWEEP_MANIFEST).exists():
        return "a sweep directory"
    if (directory / CAPSEARCH_RESULTS).exists():
        return "a capacity search directory"
    run = run_dir_around(directory)
    if run is None:
        return None
    return "a run directory" if run == absolute(directory) else f"inside the run directory {run}"


def run_dir_around(directory: Path) -> Path | None:
    """The run directory `directory` is or lies in (absolute), or None. A relative path's parents stop
    at the current directory, and `run/../cmp` is not inside `run`: its absolute path is walked."""
    whole = absolute(directory)
    for folder in (whole, *whole.parents):
        paths = RunPaths(folder)
        if paths.run_json.exists() or paths.request_records.exists():
            return folder
    return None


def absolute(directory: Path) -> Path:
    # Not resolve(): a run given through a symbolic link keeps the link's name.
    return Path(os.path.abspath(directory))


def ensure_writable(directory: Path) -> None:
    """Fail in one line, before any server starts or request is sent, when runs cannot be written
    under `directory` (a missing parent is created, as the run would)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        e.filename = e.filename or str(directory)
        raise OutputError.from_os_error(e, "cannot write to the output directory") from None


def make_unique_dir(parent: Path, name: str) -> Path:
    """`parent/name`, or `name-2`, `name-3`, ... when taken (mkdir is the atomic claim)."""
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, UNIQUE_TRIES + 1):
        candidate = parent / (name if n == 1 else f"{name}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a unique directory for {name} under {parent}")


class RunDir:
    """One run directory: created with config.yml and run.json, finished with a final status."""

    def __init__(
        self,
        parent: Path,
        cfg: BenchmarkConfig,
        *,
        argv: list[str],
        sweep: dict[str, Any] | None = None,
        capacity_search: dict[str, Any] | None = None,
        known_secrets: tuple[str, ...] = (),
    ) -> None:
        """`known_secrets`: secret values to hide besides the config's own (its sweep's other keys)."""
        self.known_secrets = known_secrets  # for what the run writes later (traces)
        started = utc_now()
        digest = config_sha256(cfg)
        self.paths = RunPaths(make_unique_dir(parent, run_dir_name(started, digest)))
        self.paths.make_dirs()
        write_atomic(self.paths.config_yml, dump_config_yaml(cfg, known_secrets))
        self.info: dict[str, Any] = {
            "run_id": uuid.uuid4().hex,
            "contract_version": CONTRACT_VERSION,
            "veeksha_version": __version__,
            "status": RUN_RUNNING,
            "started_at": iso(started),
            "finished_at": None,
            "config_sha256": digest,
            # Lets `evaluate` tell a crashed run from one still going: host, pid, pid_start_ticks.
            **owner_fields(),
            "python": platform.python_version(),
            "argv": shown_argv(argv, cfg, known_secrets),
            "sweep": sweep,
            "capacity_search": capacity_search,
            "error": None,
            "stop_reason": None,
        }
        self.save()

    @property
    def root(self) -> Path:
        return self.paths.root

    def save(self) -> None:
        write_json(self.paths.run_json, self.info)

    def leave_unevaluated(self, status: str, error: str | None, why: str) -> None:
        """The run has its final status but no metrics (its evaluation failed, was interrupted, or
        never came): no finished_at, so no uploader takes it, and `evaluation_error` says why until
        `veeksha-run evaluate` writes the metrics (lost_records.mark_finished)."""
        self.info.update({"status": status, "error": error, "finished_at": None, EVALUATION_ERROR: why})
        try:
            self.save()
        except OSError:  # disk full: the previous run.json stays whole; the caller reports the error
            pass

    def finish(self, status: str, error: str | None = None, **extra: Any) -> None:
        self.info.update(status=status, finished_at=iso(utc_now()), error=error, **extra)
        try:
            self.save()
        except OSError:  # disk full: the previous run.json stays whole; the caller reports the error
            if error is None:
                raise


def shown_argv(argv: list[str], cfg: BenchmarkConfig, known: tuple[str, ...] = ()) -> list[str]:
    """The command line as run.json keeps it: secret flags' values hidden (redact_argv), and the run's
    known secrets wherever else they were typed (the client's key as a server flag's value)."""
    secrets = config_secrets(cfg, known)
    return [scrub_text(arg, secrets) for arg in redact_argv(list(argv))]


def python_argv() -> list[str]:
    return [Path(sys.argv[0]).name, *sys.argv[1:]]
