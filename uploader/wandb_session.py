"""One W&B run at a time, every setting explicit, everything inside `<dir>/wandb/`.

A worker process uploads many directories in turn and the SDK reads its environment once, so mode,
ids, project, server and console capture are passed to `wandb.init` per run. The staging directory
is the exception: the SDK reads WANDB_DATA_DIR at each call, so `open_run` sets it per run. The API
key is the other: it is the process's SDK session's, given once (`_prepare_sdk`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from veeksha.shared.paths import WANDB_DIR
from veeksha.uploader.recordlog import IncompleteLog, RecordLogError, relativize_artifact_paths
from veeksha.uploader.redaction import Redactor
from veeksha.uploader.settings import UploadSettings, shown_text

STAGING_DIR = "data"  # <dir>/wandb/data: WANDB_DATA_DIR (artifact and table staging)
REDACTED_DIR = "redacted"  # <dir>/wandb/redacted: scrubbed copies of files that held a secret
INIT_TIMEOUT_S = 30.0
ANCHOR = "veeksha/anchor"  # the data-less history row at step 0 (see open_run)
_SCAN_CHUNK = 8 << 20


class AlreadyExists(Exception):
    """Online: the run was created by someone else between our look-up and our `init`."""


@dataclass
class RunSpec:
    root: Path
    run_id: str
    name: str
    group: str | None
    tags: tuple[str, ...]
    job_type: str
    config: dict[str, Any]
    settings: UploadSettings
    resume_from_start: bool = False  # online re-upload: rewind the existing run to step 0
    resume_empty: bool = False  # online: the run exists but holds no history yet (continue it)
    stream_interval_s: float | None = None  # follow mode: send history within this many seconds


@dataclass
class Uploaded:
    url: str | None
    entity: str | None
    sync_dir: str | None = None  # offline run folder, relative to the directory
    notes: list[str] = field(default_factory=list)
    media: list[str] = field(default_factory=list)  # the run files logged (tables, plots, images): media/...


def wandb_run_id(kind: str, identity: str, project: str, entity: str | None) -> str:
    """Deterministic W&B run id: every re-upload of the same run targets the same W&B run. New ids
    are derived without an entity (None); uploads before 2026-12 derived theirs with the entity they
    named, and a directory that recorded one keeps it (worker._run_id)."""
    key = f"veeksha|{kind}|{entity or ''}|{project}|{identity}"
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def clear_run_folders(root: Path, run_id: str, *, keep: str | None = None, staging: bool = True) -> None:
    """Remove the directory's earlier local run folders (all but `keep`, a path relative to it).

    A directory holds one upload at a time, so every offline run folder goes, whatever its run id (an
    upload to another project or entity has another id): `wandb sync wandb/` would publish each of them,
    and an older one's staged files (wandb/data, wandb/redacted) are cleared with it. Offline, `init`
    with an old id makes a second run folder and `wandb sync` would replay both; after an online upload,
    syncing an old offline folder would append a second copy of the history. Online folders are only
    the SDK's local logs of each attempt of this run: keeping them just piles up folders.
    """
    wdir = root / WANDB_DIR
    if not wdir.is_dir() or wdir.is_symlink():
        return
    for pattern in ("offline-run-*", f"run-*-{run_id}"):
        for old in wdir.glob(pattern):
            if keep is None or old.relative_to(root).as_posix() != keep:
                shutil.rmtree(old, ignore_errors=True)
    if staging:
        for name in (STAGING_DIR, REDACTED_DIR):
            shutil.rmtree(wdir / name, ignore_errors=True)


SdkMode = Literal["online", "offline", "shared", "disabled", "dryrun", "run"]


def sdk_mode(mode: str) -> SdkMode:
    """`mode` as the SDK's type; ValueError (as the SDK's own check) for a mode it does not know."""
    for known in get_args(SdkMode):
        if known == mode:
            return known
    raise ValueError(f"unknown W&B mode {mode!r}; use one of {', '.join(get_args(SdkMode))}")


def _settings(spec: RunSpec) -> Any:
    import wandb

    s = spec.settings
    online = s.mode == "online"
    # Keyword groups given only when set, so the SDK keeps its own defaults otherwise.
    stream: dict[str, Any] = {"x_file_stream_transmit_interval": spec.stream_interval_s}
    server: dict[str, Any] = {"base_url": s.base_url}  # the key is the session's (_prepare_sdk)
    return wandb.Settings(
        mode=sdk_mode(s.mode),
        console="off",  # nothing of the uploader's console (or a secret in it) is captured
        silent=True,
        x_disable_stats=True,
        x_disable_meta=True,  # no argv (an --api-key flag), host or program metadata
        x_disable_machine_info=True,
        x_save_requirements=False,
        **(stream if spec.stream_interval_s else {}),
        disable_git=True,
        disable_code=True,
        save_code=False,
        disable_job_creation=True,
        init_timeout=INIT_TIMEOUT_S,
        root_dir=str(spec.root),
        **(server if online and s.api_key else {}),
    )


_session_credentials: tuple[str, str] | None = None  # (server, API key) given to this process's SDK


def _prepare_sdk(s: UploadSettings) -> None:
    """The SDK's process-wide settings, before this process's first run: silent, and the API key
    given once (again only if it changed).

    The SDK prints its login lines ("[wandb.login()] Using explicit session credentials for <server>",
    then "Changing session credentials ..." at each later run) by its process-wide settings, not by a
    run's silent=True: a key in each run's settings logged in again at every `wandb.init`, lines in
    the cron log and on `veeksha-run`'s console beside its follower, and the server's URL with any
    password in it. Given to `wandb.setup` with silent=True, the key is the session's, and each run
    finds it there without a word. The key stays in this process's memory: no file, argv or line.
    """
    import wandb

    global _session_credentials
    given = (s.base_url, s.api_key) if s.mode == "online" and s.api_key else None
    server: dict[str, Any] = {}
    if given is not None and given != _session_credentials:
        server = {"base_url": given[0], "api_key": given[1]}
    # The first call loads the process's settings with silent=True (the SDK's quiet mode for this
    # process); a later one only adds new credentials, without a word (silent is set by then).
    wandb.setup(wandb.Settings(silent=True, **server))
    if server:
        _session_credentials = given


def no_sdk_telemetry() -> None:
    """Turn off the SDK's own error reporting and usage telemetry for this process.

    It is sent to the SDK's default server (or WANDB_BASE_URL), not to the one this upload targets,
    and at exit it first probes that server with a 10 s timeout: offline, or with that host down,
    every `veeksha-upload` waited 10 s before exiting. The uploader sends nothing but the runs.
    """
    os.environ["WANDB_ERROR_REPORTING"] = "false"  # read when the SDK builds its telemetry recorder


def _is_already_exists(e: Exception) -> bool:
    return "already exists" in str(e).lower()


@contextmanager
def open_run(spec: RunSpec) -> Iterator[Any]:
    """A started run; finished on exit (failed runs are finished with exit code 1 and, offline, removed)."""
    import wandb

    no_sdk_telemetry()  # before anything of the SDK runs in this process
    s = spec.settings
    if s.mode == "offline":
        clear_run_folders(spec.root, spec.run_id)
    (spec.root / WANDB_DIR).mkdir(exist_ok=True)
    resume = _resume_args(spec)
    _prepare_sdk(s)
    # Resolved settings (notes, tags) are shown values already (settings.shown_text); a name or group
    # made from a directory's name is not: the SDK records what it is given, `--sync` publishes it.
    shown = shown_text(s.api_key)
    # Staging is read from the environment at each call: point it inside this directory.
    with _environ("WANDB_DATA_DIR", str(spec.root / WANDB_DIR / STAGING_DIR)):
        try:
            run = wandb.init(
                id=spec.run_id,
                name=shown(spec.name),
                project=s.project,
                entity=s.entity,
                group=shown(spec.group),
                tags=list(spec.tags),
                notes=s.notes,
                job_type=spec.job_type,
                config=spec.config,
                dir=str(spec.root),
                reinit="finish_previous",
                settings=_settings(spec),
                **resume,
            )
        except Exception as e:
            if s.mode == "online" and _is_already_exists(e):
                raise AlreadyExists(str(e)) from None
            raise
        try:
            _log_anchor(run, spec)
            yield run
        except BaseException:
            _finish_failed(run)
            raise
        run.finish()


def _resume_args(spec: RunSpec) -> dict[str, Any]:
    """`wandb.init`'s resume keywords. Offline runs always start afresh (their old folders are
    cleared); online, "never" makes a run created meanwhile by someone else an error (AlreadyExists)."""
    if spec.settings.mode != "online":
        return {}
    if spec.resume_empty:
        return {"resume": "must"}
    if spec.resume_from_start:
        return {"resume_from": f"{spec.run_id}?_step=0"}
    return {"resume": "never"}


@contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    """`name` set to `value` inside the block; its earlier value (or its absence) restored after."""
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def _log_anchor(run: Any, spec: RunSpec) -> None:
    # A re-upload rewinds the run to step 0, and a rewind keeps the row at that step. So every
    # new run starts with a row holding no data: fresh or rewound, the run then has this
    # anchor at step 0 and what we log from step 1 on, never a stale first row.
    run.define_metric(ANCHOR, summary="none", hidden=True)
    if spec.resume_empty or not spec.resume_from_start:
        run.log({ANCHOR: 0})


def _finish_failed(run: Any) -> None:
    sync_dir = run.settings.sync_dir
    run.finish(exit_code=1)
    if sync_dir:  # a failed attempt's folder is of no use to the next attempt
        shutil.rmtree(sync_dir, ignore_errors=True)


def uploaded_of(run: Any, root: Path) -> Uploaded:
    """Where the open run lives: its URL online, its folder (relative to the directory) always."""
    online = run.settings.mode == "online"
    sync_dir = Path(run.settings.sync_dir).relative_to(root).as_posix() if run.settings.sync_dir else None
    uploaded = Uploaded(url=run.url if online else None, entity=run.entity or None, sync_dir=sync_dir)
    uploaded.media = logged_media(Path(run.settings.files_dir))
    return uploaded


def logged_media(files_dir: Path) -> list[str]:
    """The media files this run's session wrote (the SDK writes each one here as it is logged, then
    uploads it): their names in the run's files on the server."""
    media = files_dir / "media"
    if not media.is_dir():
        return []
    return sorted(p.relative_to(files_dir).as_posix() for p in media.rglob("*") if p.is_file())


def finish_offline(root: Path, sync_dir: str) -> list[str]:
    """Make the finished offline run relocatable; returns notes for the report."""
    wandb_file = next((root / sync_dir).glob("run-*.wandb"), None)
    if wandb_file is None:
        return [f"no .wandb file in {sync_dir}"]
    try:
        relativize_artifact_paths(wandb_file, root)
    except IncompleteLog as e:
        raise RuntimeError(f"the offline run was not written completely: {e}") from None
    except RecordLogError as e:  # an SDK we do not know: the run still syncs from where it is
        return [f"artifact paths left absolute ({e}); sync from this location only"]
    return []


def sync_command(root: Path) -> str:
    return f"cd {_shell_quote(str(root))} && wandb sync {WANDB_DIR}/"


def _shell_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


# ---------------------------------------------------------------- artifacts


def file_has_secret(path: Path, redactor: Redactor) -> bool:
    """Streamed scan for any known secret literal (files may be large)."""
    if not redactor.known:
        return False
    overlap = max(len(s.encode()) for s in redactor.known)
    tail = b""
    with path.open("rb") as f:
        while chunk := f.read(_SCAN_CHUNK):
            if redactor.contains_secret(tail + chunk):
                return True
            tail = chunk[-overlap:]
    return False


def add_files(
    artifact: Any,
    root: Path,
    files: list[str],
    redactor: Redactor,
    replacements: dict[str, bytes] | None = None,
) -> None:
    """Add files one by one with their relative paths kept; secret-bearing files as scrubbed copies.

    Originals are added with policy="immutable" (referenced in place, no staging copy): the run
    directory is finished and read-only by contract.
    """
    replacements = dict(replacements or {})
    for rel in files:
        src = root / rel
        if rel not in replacements and file_has_secret(src, redactor):
            replacements[rel] = redactor.scrub_bytes(src.read_bytes())
        if rel in replacements:
            src = root / WANDB_DIR / REDACTED_DIR / rel
            src.parent.mkdir(parents=True, exist_ok=True)
            src.write_bytes(replacements[rel])
        artifact.add_file(str(src), name=rel, policy="immutable", skip_cache=True)
