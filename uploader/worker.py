"""Uploading one target (run directory or summary directory); `pool` runs many in worker processes.

Per target: take the directory's lock, skip what is running or already uploaded and unchanged, ask
the server what it already has (online), upload, then write the marker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from veeksha.shared.errors import VeekshaError
from veeksha.shared.paths import CONFIG_YML
from veeksha.shared.records import RUN_RUNNING, missing_metrics, run_finished
from veeksha.shared.redact import redact_url
from veeksha.uploader import groups
from veeksha.uploader.discovery import Target
from veeksha.uploader.locks import DirLock, LockBusy
from veeksha.uploader.marker import (
    Marker,
    Pending,
    compute_digest,
    dir_identity,
    is_current,
    read_marker,
    read_pending,
    remove_marker,
    remove_pending,
    utc_now_iso,
    write_marker,
    write_pending,
    written_here,
)
from veeksha.uploader.reader import read_run_dir, read_run_info
from veeksha.uploader.redaction import Redactor
from veeksha.uploader.remote import (
    UPLOAD_DIGEST_KEY,
    RemoteError,
    RemoteRun,
    committed_artifact_types,
    committed_artifacts,
    lookup_run,
    stored_run_files,
)
from veeksha.uploader.run_files import check_directory
from veeksha.uploader.settings import UploadSettings
from veeksha.uploader.wandb_session import RunSpec, Uploaded, wandb_run_id

UPLOADED, SKIPPED, FAILED, DRY_RUN = "uploaded", "skipped", "failed", "would upload"
CREATE, REWIND, RESUME = "create", "rewind", "resume"  # RESUME: ours, on the server, no history yet
PUBLISH_HINT = "veeksha-upload --sync"
# How a failed upload says it lost the race to create its W&B run (lost_race): the run is another's.
LOST_RACE = "another upload created this W&B run meanwhile"
# After an online upload: how often the server is asked again for what it is missing, and how far apart.
CHECK_RETRIES = 2
CHECK_PAUSE_S = 2.0


ARTIFACT_TYPES = {groups.SWEEP_SUMMARY: "veeksha-sweep", groups.CAPSEARCH_SUMMARY: "veeksha-capsearch"}
RUN_ARTIFACT_TYPE = "veeksha-run"


class UploadError(VeekshaError):
    """This directory's upload cannot go on (reported as its failure; the others still upload)."""


@dataclass(frozen=True)
class Task:
    target: Target
    settings: UploadSettings | None  # None when the directory's config could not be read
    force: bool = False
    dry_run: bool = False
    secrets: tuple[str, ...] = field(default=(), repr=False)  # literal values to keep out of W&B
    error: str | None = None  # a problem found while planning (reported as this target's failure)
    skip: str | None = None  # planning found nothing to upload: reported as skipped, and why
    default_entity: str | None = None  # online: the API key's entity, where runs go without one set
    note: str | None = None  # an offline retry's: why the online upload failed (pool._after_fallback)
    fallback_offline: bool = False  # online failed after the probe passed: write an offline run instead
    online_attempted: bool = False  # an offline retry after a failed online upload of the same run
    # Asked for online, written offline because this W&B server did not answer the probe: a run
    # already on that server, unchanged, needs no offline copy.
    unreachable_server: str | None = None
    lock_wait_s: float = 0.0  # how long to wait for another uploader's lock on the directory (0: skip it)


@dataclass
class Outcome:
    path: str
    kind: str
    status: str
    detail: str = ""
    run_id: str | None = None
    name: str | None = None
    url: str | None = None
    mode: str | None = None
    sync_command: str | None = None
    warnings: list[str] = field(default_factory=list)  # files left out of the upload, and why


@dataclass
class Plan:
    """What one target becomes on W&B, before anything is uploaded."""

    run_id: str
    name: str
    group: str | None
    tags: tuple[str, ...]
    kind: str
    files: list[str]
    digest: str
    veeksha_run_id: str | None = None
    default_entity: str | None = None  # the API key's default entity, when known (recorded in the marker)

    @property
    def artifact_type(self) -> str:
        return ARTIFACT_TYPES.get(self.kind, RUN_ARTIFACT_TYPE)


def _dedupe(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(i for i in items if i))


def run_name_of(settings: UploadSettings, ctx: groups.Context, root: Path) -> str:
    if ctx.name:
        return ctx.name
    if settings.run_name and ctx.index is not None:
        return f"{settings.run_name}-{ctx.index}"  # a sweep shares one configured name
    return settings.run_name or root.name


def make_plan(
    root: Path,
    s: UploadSettings,
    *,
    kind: str,
    ident: str,
    name: str,
    group: str | None,
    tags: Iterable[str],
    files: list[str],
    default_entity: str | None = None,
    on_server: Callable[[str, str], bool] | None = None,
) -> Plan:
    id_kind = "run" if kind in (groups.RUN, groups.SWEEP_RUN, groups.CAPSEARCH_ATTEMPT) else kind
    # Offline, after a failed probe and in a dry run the key's default entity is unknown: the
    # directory's marker may still know it.
    default_entity = default_entity or recorded_default_entity(root)
    run_id = _run_id(root, id_kind, ident, s.project, s.entity or default_entity, on_server)
    tags = _dedupe([*s.tags, *tags])
    # The run's own group and tags come last: they include what its container adds (e.g. `best`),
    # so a changed tag set is a change; the settings' bare group/tags must not overwrite them.
    identity = {
        **s.identity(),
        # Naming the key's default entity is naming none: the same run, "unchanged" either way.
        "entity": None if s.entity == default_entity else s.entity,
        "kind": kind,
        "run_id": run_id,
        "name": name,
        "group": group,
        "tags": list(tags),
    }
    digest = compute_digest(root, files, identity)
    return Plan(run_id, name, group, tags, kind, files, digest, default_entity=default_entity)


def _run_id(
    root: Path,
    kind: str,
    ident: str,
    project: str,
    entity: str | None,
    on_server: Callable[[str, str], bool] | None = None,
) -> str:
    """The W&B run id, from the run's identity and project only: were the entity part of it, the id
    would depend on whether the API key's default entity is known (naming it or naming none), and a
    re-upload made without that knowledge would create a second run. Uploads before 2026-12 hashed
    the entity they named in (`entity`: as named, else the default): such an id recorded in the
    directory (marker, pending file) is kept, so those directories still target their run. When the
    directory records no id at all (its marker lost, or an rsync taken before the upload finished),
    `on_server(run_id, entity)` (online uploads only) asks W&B whether the older id's run exists: it is
    then this directory's run (skipped as "uploaded from elsewhere" unless --force), never a second one."""
    current = wandb_run_id(kind, ident, project, None)
    older = wandb_run_id(kind, ident, project, entity) if entity else None
    if older is None or older == current:
        return current
    recorded = _recorded_run_ids(root)
    if older in recorded:
        return older
    if not recorded and on_server is not None and entity is not None and on_server(older, entity):
        return older
    return current


def server_lookup(task: Task) -> Callable[[str, str], bool] | None:
    """For make_plan, online and not a dry run: whether W&B has a run of this id in this entity."""
    s = task.settings
    if s is None or s.mode != "online" or task.dry_run:
        return None

    def has(run_id: str, entity: str) -> bool:
        try:
            return lookup_run(s.base_url, s.api_key or "", entity, s.project, run_id) is not None
        except RemoteError as e:
            raise UploadError(str(e)) from None

    return has


def recorded_default_entity(root: Path) -> str | None:
    """The API key's default entity as the directory's marker recorded it, if it did."""
    marker = read_marker(root)
    if marker is None:
        return None
    if marker.default_entity:
        return marker.default_entity
    # An older online marker: a run uploaded without naming an entity went to the default one.
    if marker.mode == "online" and marker.settings is not None and marker.settings.get("entity") is None:
        return marker.entity
    return None


def _recorded_run_ids(root: Path) -> set[str]:
    """The W&B run ids this directory's marker and pending file name."""
    ids = set()
    if (marker := read_marker(root)) is not None:
        ids.add(marker.run_id)
    if (pending := read_pending(root)) is not None:
        ids.add(pending.run_id)
    return ids


def _published_offline(task: Task, plan: Plan, previous: Marker | None, remote: RemoteRun) -> bool:
    """An offline upload of exactly this content whose run the server now has whole (`wandb sync`).

    The server's run must carry this content's digest: an earlier online upload of the same run id
    (before the directory changed and was uploaded offline) has history and an artifact too, and
    taking it for the offline run deleted that run unpublished. It must hold every row the offline
    run logged (a half-finished online attempt has the digest but not all rows), and an offline run
    written after an online attempt of its run id is never taken as published (the server's copy
    may be that attempt): the offline copy is deleted only on proof. A `wandb sync` run from outside the
    directory publishes the history but leaves the artifact pending without its files (and exits
    0): that run is not complete, and is uploaded again."""
    s = task.settings
    assert s is not None
    if not (
        previous is not None
        and previous.mode == "offline"
        and previous.run_id == plan.run_id
        and previous.digest == plan.digest
        and not previous.online_attempted  # the server's copy may be a half-done online attempt
        and previous.history_rows is not None
        and remote.history_lines >= previous.history_rows > 0
        and remote.upload_digest == plan.digest
    ):
        return False
    if not (s.log_artifacts and plan.files):
        return True
    entity = s.entity or task.default_entity
    types = committed_artifact_types(s.base_url, s.api_key or "", entity, s.project, plan.run_id)
    return plan.artifact_type in types


def choose_start(task: Task, plan: Plan) -> str | Outcome:
    """CREATE, REWIND or RESUME (the server has the run and it is ours to replace), or an outcome.

    Asked of the server before `init`, so "already exists" is a path taken on purpose."""
    root, s = task.target.path, task.settings
    assert s is not None
    if s.mode != "online":
        return CREATE
    try:
        entity = s.entity or task.default_entity
        remote = lookup_run(s.base_url, s.api_key or "", entity, s.project, plan.run_id)
        if remote is None:
            return CREATE
        previous = read_marker(root)
        published = not task.force and _published_offline(task, plan, previous, remote)
    except RemoteError as e:
        raise UploadError(str(e)) from None
    if published:
        assert previous is not None
        from veeksha.uploader import wandb_session as ws

        ws.clear_run_folders(root, plan.run_id)  # syncing them again would append a second copy
        url = offline_url(s, previous.entity or task.default_entity, plan.run_id)
        marker = replace(
            previous,
            mode="online",
            url=url,
            base_url=s.base_url,
            sync_dir=None,
            sync_command=None,
            default_entity=plan.default_entity,
        )
        write_marker(root, marker)
        detail = "already on W&B (its offline run was published); recorded as uploaded"
        return Outcome(str(root), task.target.kind, SKIPPED, detail, plan.run_id, plan.name, url, "online")
    # An upload of this run from this directory was under way: the server's run may be its doing.
    interrupted = _pending_for(root, plan) is not None
    # A marker copied along with the directory (`cp -a`) names the original's run: not ours.
    ours = interrupted or (
        previous is not None
        and previous.run_id == plan.run_id
        and (previous.mode == "offline" or written_here(previous, root))
    )
    if not (task.force or ours):
        why = "already on W&B (uploaded from elsewhere); --force overwrites it"
        return Outcome(str(root), task.target.kind, SKIPPED, why, plan.run_id, plan.name)
    # A rewind keeps the row at step 0: with no history at all, continue the run from step 0 instead.
    return REWIND if remote.history_lines > 0 else RESUME


def _pending_for(root: Path, plan: Plan) -> Pending | None:
    """The pending file an interrupted upload of this run left in the directory, if any."""
    pending = read_pending(root)
    return pending if pending is not None and pending.run_id == plan.run_id else None


def begin(task: Task, plan: Plan) -> Task:
    """From here until `complete`, the directory says "upload in progress" (the pending file).

    The task returned knows whether this run id may exist online already (an earlier online attempt
    or upload, an interrupted one included): an offline copy of it is then never taken for published,
    nor offered to `wandb sync`. An interrupted offline upload of a run never online sent nothing:
    its pending file says so (`offline_only`), and is no online attempt. Publishing an offline upload
    keeps its marker (marked as attempted online) until the online run is complete: a failed or
    interrupted `--sync` stays retryable, with the recorded settings."""
    root, s = task.target.path, task.settings
    assert s is not None
    previous = read_marker(root)
    same = previous is not None and previous.run_id == plan.run_id
    interrupted = _pending_for(root, plan)
    attempted = (
        task.online_attempted
        or (interrupted is not None and interrupted.may_be_online)
        or (same and previous is not None and (previous.mode == "online" or previous.online_attempted))
    )
    online_attempted = attempted or s.mode == "online"
    # Before the marker goes: once it has, this is the only record that the run may be on W&B.
    write_pending(root, Pending(plan.run_id, offline_only=not online_attempted))
    if s.mode == "online" and same and previous is not None and previous.mode == "offline":
        write_marker(root, replace(previous, online_attempted=True))
    else:
        remove_marker(root)  # never leave a marker that no longer describes what is on W&B
    return replace(task, online_attempted=online_attempted)


def complete(task: Task, plan: Plan, uploaded: Uploaded, steps: int | None = None) -> Outcome:
    """Record what is on W&B now (the marker), drop the pending file and older local run folders."""
    root, s = task.target.path, task.settings
    assert s is not None
    from veeksha.uploader import wandb_session as ws

    ws.clear_run_folders(root, plan.run_id, keep=uploaded.sync_dir, staging=s.mode == "online")
    # A run id that may be on W&B already: `wandb sync` would append a second copy of its history.
    raw_sync = s.mode == "offline" and not task.online_attempted
    sync_cmd = ws.sync_command(root) if raw_sync else None
    # Without a proxy's password in the server's URL: the outcome reaches the console (--json too).
    url = redact_url(uploaded.url) if uploaded.url else offline_url(s, uploaded.entity, plan.run_id)
    marker = Marker(
        run_id=plan.run_id,
        url=url,
        entity=uploaded.entity,
        project=s.project,
        group=plan.group,
        name=plan.name,
        tags=list(plan.tags),
        mode=s.mode,
        digest=plan.digest,
        uploaded_at=utc_now_iso(),
        kind=plan.kind,
        veeksha_run_id=plan.veeksha_run_id,
        sync_dir=uploaded.sync_dir if s.mode == "offline" else None,
        sync_command=sync_cmd,
        settings=s.identity(),
        base_url=s.base_url if s.mode == "online" else None,
        online_attempted=task.online_attempted and s.mode == "offline",
        history_rows=steps if s.mode == "offline" else None,
        directory=dir_identity(root),
        default_entity=plan.default_entity,
    )
    write_marker(root, marker)
    remove_pending(root)
    if s.mode == "online":
        detail = f"View run at {url}"
    elif sync_cmd is None:
        why = "not wandb sync: this W&B run may exist, it would append a second copy"
        detail = f"offline run in {uploaded.sync_dir}; publish with: {PUBLISH_HINT} {root} ({why})"
    else:
        detail = f"offline run in {uploaded.sync_dir}; publish with: {PUBLISH_HINT} {root} (or: {sync_cmd})"
    if uploaded.notes:
        detail += " (" + "; ".join(uploaded.notes) + ")"
    kind = task.target.kind
    return Outcome(str(root), kind, UPLOADED, detail, plan.run_id, plan.name, url, s.mode, sync_cmd)


@dataclass
class Job:
    """One target ready for its W&B session: what to create and how to fill it."""

    task: Task
    plan: Plan
    config: dict[str, Any]  # the W&B run config, already redacted
    log: Callable[[Any, Any], None]  # (open run, artifact or None) -> logs history, media, summary
    redactor: Redactor
    replacements: dict[str, bytes]  # scrubbed stand-ins for files that held a secret
    warnings: list[str] = field(default_factory=list)  # files left out, and why


def _session(job: Job, start: str) -> tuple[Uploaded, int]:
    """The single SDK session of an upload: open (create, rewind or continue), log, finish."""
    import wandb
    from veeksha.uploader import wandb_session as ws

    plan, s, root = job.plan, job.task.settings, job.task.target.path
    assert s is not None
    config = {**job.config, UPLOAD_DIGEST_KEY: plan.digest}
    spec = RunSpec(root, plan.run_id, plan.name, plan.group, plan.tags, plan.artifact_type, config, s)
    spec.resume_from_start = start == REWIND  # replace the existing run's history, not append a replay
    spec.resume_empty = start == RESUME
    try:
        with ws.open_run(spec) as run:
            artifact = None
            if s.log_artifacts and plan.files:
                artifact = wandb.Artifact(f"{plan.artifact_type}-{plan.run_id}", type=plan.artifact_type)
                ws.add_files(artifact, root, plan.files, job.redactor, job.replacements)
            job.log(run, artifact)
            uploaded = ws.uploaded_of(run, root)
            steps = run.step  # rows logged, anchor included (a rewind keeps the one at step 0)
    except ws.AlreadyExists:
        raise lost_race(root, start) from None
    if s.mode == "online":
        entity = uploaded.entity or s.entity or job.task.default_entity
        digest = artifact.digest if artifact is not None else None
        check_on_server(job.task, plan, entity, Expected(steps, digest, uploaded.media))
    if uploaded.sync_dir and s.mode == "offline":
        uploaded.notes = ws.finish_offline(root, uploaded.sync_dir)
    return uploaded, steps


def lost_race(root: Path, start: str) -> UploadError:
    """`init` met the run another upload created after our look-up (plain or --follow): not ours. The
    pending file goes, or the next attempt took the run for an interrupted upload of ours and
    rewound the winner's run."""
    if start == CREATE:
        remove_pending(root)
    return UploadError(f"{LOST_RACE}; run veeksha-upload again")


@dataclass(frozen=True)
class Expected:
    """What a finished online upload sent, to be found on the server."""

    steps: int  # history rows, the anchor included
    artifact_digest: str | None  # this upload's artifact, when one was logged
    media: list[str] = field(default_factory=list)  # run files (tables, plots, images), as uploaded_of


def check_on_server(task: Task, plan: Plan, entity: str | None, expected: Expected) -> None:
    """The server has what `finish()` returned after: the history rows, this upload's artifact (by
    its digest: an earlier version of the run's artifact is committed too) and the run's media files.
    The SDK gives up on a 4xx (a refused artifact or media file, a file_stream error), says so in a
    warning and still finishes normally: such an upload is a failure (the pending file stays, so the
    next attempt rewinds the run), never "uploaded". Asked again a few times before it fails: a
    server may count what it received a moment later."""
    missing = _missing_on_server(task, plan, entity, expected)
    for _ in range(CHECK_RETRIES):
        if not missing:
            return
        time.sleep(CHECK_PAUSE_S)
        missing = _missing_on_server(task, plan, entity, expected)
    if missing:
        raise UploadError(
            f"W&B does not have {' and '.join(missing)}: the SDK gave up on part of the upload "
            "(its warning is above); run veeksha-upload again"
        )


def _missing_on_server(task: Task, plan: Plan, entity: str | None, expected: Expected) -> list[str]:
    s = task.settings
    assert s is not None
    key = s.api_key or ""
    try:
        remote = lookup_run(s.base_url, key, entity, s.project, plan.run_id)
        lines = remote.history_lines if remote is not None else 0
        missing = [f"history ({lines} of {expected.steps} rows)"] if lines < expected.steps else []
        if expected.artifact_digest is not None:
            committed = committed_artifacts(s.base_url, key, entity, s.project, plan.run_id)
            if (plan.artifact_type, expected.artifact_digest) not in committed:
                missing.append(f"the {plan.artifact_type} artifact's files")
        if expected.media:
            stored = stored_run_files(s.base_url, key, entity, s.project, plan.run_id, expected.media)
            if absent := [name for name in expected.media if name not in stored]:
                total = len(expected.media)
                missing.append(f"{len(absent)} of the run's {total} media files (tables, plots, images)")
    except RemoteError as e:
        raise UploadError(f"could not confirm the upload: {e}") from None
    return missing


def upload_job(job: Job) -> Outcome:
    """Ask the server (online), mark the upload pending, run the SDK session, record the result."""
    start = choose_start(job.task, job.plan)
    if isinstance(start, Outcome):
        outcome = start
    else:
        job.task = begin(job.task, job.plan)
        outcome = complete(job.task, job.plan, *_session(job, start))
    outcome.warnings = job.warnings
    return outcome


def offline_url(s: UploadSettings, entity: str | None, run_id: str) -> str | None:
    """Where an offline run will be once synced (known only when the entity is); shown without a
    proxy's password in the server's URL."""
    if not entity:
        return None
    app = redact_url(s.base_url).replace("://api.", "://", 1)
    return f"{app}/{entity}/{s.project}/runs/{run_id}"


def _skip_or_dry(task: Task, plan: Plan) -> Outcome | None:
    s = task.settings
    assert s is not None
    root = task.target.path
    marker = read_marker(root)
    server = task.unreachable_server
    if not task.force and server is not None and is_current(marker, root, plan.digest, "online", server):
        why = "already uploaded to W&B, unchanged (W&B does not answer now; no offline copy needed)"
        return Outcome(str(root), task.target.kind, SKIPPED, why, plan.run_id, plan.name, mode="online")
    if (
        not task.force
        and s.mode == "offline"
        and marker is not None
        and is_current(marker, root, plan.digest, "online", marker.base_url or s.base_url)
    ):  # an offline copy of a published run would only invite a `wandb sync` that doubles its history
        why = "already uploaded to W&B, unchanged (no offline copy needed; --force writes one)"
        return Outcome(str(root), task.target.kind, SKIPPED, why, plan.run_id, plan.name, mode="online")
    if not task.force and is_current(marker, root, plan.digest, s.mode, s.base_url):
        # Offline usually comes from the config (the demo's), not a choice made now: say how to publish.
        why = (
            "already uploaded offline, unchanged (--mode online uploads it to W&B; --force re-uploads)"
            if s.mode == "offline"
            else "already uploaded, unchanged (--force re-uploads)"
        )
        return Outcome(
            str(root),
            task.target.kind,
            SKIPPED,
            why,
            plan.run_id,
            plan.name,
            mode=s.mode,
        )
    if task.dry_run:
        return Outcome(
            str(root), task.target.kind, DRY_RUN, dry_run_detail(s, plan), plan.run_id, plan.name, mode=s.mode
        )
    return None


def dry_run_detail(s: UploadSettings, plan: Plan) -> str:
    """Where the run would go, as resolved (config.yml < WANDB_* < flags: the environment may have
    replaced the config's project). The entity when known: named, or the key's default a marker kept."""
    entity = s.entity or plan.default_entity
    where = f"project={s.project!r}" + (f" entity={entity!r}" if entity else "")
    labels = f"name={plan.name!r} group={plan.group!r} tags={list(plan.tags)}"
    return f"{s.mode} as run {plan.run_id} {where} {labels}"


def _run_job(task: Task, redactor: Redactor) -> Job | Outcome:
    from veeksha.uploader.wandb_run import log_run_dir, replacement_files, run_config

    root, s = task.target.path, task.settings
    assert s is not None
    info = read_run_info(root)
    if info["status"] == RUN_RUNNING:
        why = f"still running (if its process died, `veeksha-run evaluate {root}` marks it crashed)"
        return Outcome(str(root), task.target.kind, SKIPPED, why)
    if not run_finished(info):
        why = (
            "still being evaluated (run.json has no finished_at yet; if its process died, "
            f"`veeksha-run evaluate {root}` finishes it)"
        )
        if (missing := missing_metrics(info)) is not None:  # the runner said why it has none
            why = f"no metrics yet: {missing}"
        return Outcome(str(root), task.target.kind, SKIPPED, why)
    data = read_run_dir(root)
    ctx = groups.run_context(root, info)
    plan = make_plan(
        root,
        s,
        kind=ctx.kind,
        ident=data.run_id,
        name=run_name_of(s, ctx, root),
        group=s.group or ctx.group,
        tags=ctx.tags,
        files=data.files,
        default_entity=task.default_entity,
        on_server=server_lookup(task),
    )
    plan.veeksha_run_id = data.run_id
    if (early := _skip_or_dry(task, plan)) is not None:
        early.warnings = data.warnings
        return early
    return Job(
        task,
        plan,
        run_config(data, redactor, ctx.kind),
        lambda run, art: log_run_dir(run, data, redactor, art),
        redactor,
        replacement_files(data, redactor),
        data.warnings,
    )


def process_run(task: Task, redactor: Redactor) -> Outcome:
    job = _run_job(task, redactor)
    return job if isinstance(job, Outcome) else upload_job(job)


def _container_job(task: Task, redactor: Redactor) -> Job | Outcome:
    import yaml
    from veeksha.uploader.wandb_summary import log_container, summary_config

    root, s = task.target.path, task.settings
    assert s is not None
    sweep = task.target.kind == groups.SWEEP_SUMMARY
    data = groups.read_container(root, task.target.kind)
    if data.unfinished:
        return Outcome(str(root), task.target.kind, SKIPPED, data.unfinished, warnings=data.warnings)
    tag = groups.TAG_SWEEP if sweep else groups.TAG_CAPSEARCH
    plan = make_plan(
        root,
        s,
        kind=data.kind,
        ident=data.ident,
        name=f"{root.name}-summary",
        group=s.group or root.name,
        tags=(tag, groups.TAG_SUMMARY),
        files=data.files,
        default_entity=task.default_entity,
        on_server=server_lookup(task),
    )
    if (early := _skip_or_dry(task, plan)) is not None:
        early.warnings = data.warnings
        return early
    replacements: dict[str, bytes] = {}
    if data.config and redactor.tree(data.config) != data.config and CONFIG_YML in data.files:
        replacements[CONFIG_YML] = yaml.safe_dump(redactor.tree(data.config), sort_keys=False).encode()
    return Job(
        task,
        plan,
        summary_config(data, redactor),
        lambda run, art: log_container(run, data, redactor, art),
        redactor,
        replacements,
        data.warnings,
    )


def _process_container(task: Task, redactor: Redactor) -> Outcome:
    job = _container_job(task, redactor)
    return job if isinstance(job, Outcome) else upload_job(job)


def lock_busy(task: Task) -> Outcome:
    """Another veeksha-upload held the directory: a backfill skips it, an uploader told to wait fails."""
    path = str(task.target.path)
    if task.lock_wait_s <= 0:
        return Outcome(path, task.target.kind, SKIPPED, "another veeksha-upload holds its lock")
    detail = (
        f"another veeksha-upload held its lock for {task.lock_wait_s:g} s; "
        f"once it has finished, `veeksha-upload {path}` uploads it (or says it is already uploaded)"
    )
    return Outcome(path, task.target.kind, FAILED, detail)


def run_task(task: Task) -> Outcome:
    """Never raises: every problem becomes this target's outcome (the others still upload)."""
    redactor = Redactor()
    for secret in task.secrets:
        redactor.add_secret(secret)
    path = str(task.target.path)
    if task.skip:
        return Outcome(path, task.target.kind, SKIPPED, task.skip)
    if task.error or task.settings is None:
        return Outcome(path, task.target.kind, FAILED, task.error or "no settings")
    if task.settings.mode == "disabled":
        return Outcome(path, task.target.kind, SKIPPED, "W&B mode is 'disabled' (pass --mode online|offline)")
    process = process_run if task.target.kind == groups.RUN else _process_container
    try:
        check_directory(task.target.path)  # before the lock: it is a file inside the directory
        if task.dry_run:
            return process(task, redactor)
        with DirLock(task.target.path, task.lock_wait_s):
            return process(task, redactor)
    except LockBusy:
        return lock_busy(task)
    except VeekshaError as e:
        return Outcome(path, task.target.kind, FAILED, redactor.text(str(e)))
    except Exception as e:  # an SDK or I/O failure: report it, keep going with the other directories
        return Outcome(path, task.target.kind, FAILED, redactor.text(f"{type(e).__name__}: {e}"))
