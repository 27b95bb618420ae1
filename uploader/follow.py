"""`veeksha-upload --follow DIR`: the W&B run of a benchmark while it goes (spec: wandb.md, Additions).

Beside a running benchmark (started by `veeksha-run` when W&B is online, or by hand on any host that
sees the directory): create the W&B run as soon as `run.json` exists, print its URL, append each new
`timeseries.csv` row to the run's history within a few seconds, and when the benchmark has finished
(final status and `finished_at` in run.json), finish the same run exactly as a post-hoc upload
would. The marker it writes has the plain upload's digest, so a later `veeksha-upload DIR` skips it.

If the benchmark dies, or ends without metrics (run.json's evaluation_error: its recording raised,
its evaluation failed), the run is left resumable: the pending file stays and the next plain upload
rewinds the same W&B run. If evaluation rebuilt timeseries.csv (rows differ from what was streamed),
the live run is finished and replaced by a plain upload onto the same id.
"""

from __future__ import annotations

import csv
import io
import os
import socket
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from veeksha.shared.deadlines import upload_deadline_s
from veeksha.shared.errors import ContractError, UsageError, VeekshaError
from veeksha.shared.paths import (
    CAPSEARCH_RESULTS,
    CAPSEARCH_RUNS_DIR,
    CONFIG_YML,
    METRICS_DIR,
    RUN_JSON,
    SWEEP_MANIFEST,
    TRACES_DIR,
    RunPaths,
)
from veeksha.shared.processes import is_running
from veeksha.shared.records import PID_START_TICKS, missing_metrics, run_finished
from veeksha.shared.redact import redact_url
from veeksha.shared.userpath import expand_home
from veeksha.uploader import groups
from veeksha.uploader.discovery import Target
from veeksha.uploader.locks import DirLock, LockBusy
from veeksha.uploader.planning import check_online, plan_task, secrets_of
from veeksha.uploader.reader import Number, RunData, parse_number, read_config, read_run_dir, read_run_info
from veeksha.uploader.redaction import Redactor
from veeksha.uploader.remote import UPLOAD_DIGEST_KEY
from veeksha.uploader.run_files import check_directory, is_own_file, shown
from veeksha.uploader.settings import Layer
from veeksha.uploader.wandb_run import client_history, server_history
from veeksha.uploader.worker import (
    FAILED,
    RESUME,
    REWIND,
    Expected,
    Outcome,
    Plan,
    Task,
    begin,
    check_on_server,
    choose_start,
    complete,
    lock_busy,
    lost_race,
    make_plan,
    process_run,
    run_name_of,
    run_task,
    server_lookup,
)

PROG = "veeksha-upload"
POLL_S = 0.5  # how often the directory is looked at; history reaches W&B within about 2 POLL_S + STREAM_S
STREAM_S = 1.0  # the SDK's file-stream interval while following (its default is 15 s)
WAIT_FOR_RUN_S = 120.0  # how long to wait for run.json to appear
# What a run directory holds before its run.json (run_dir.RunDir: the directory, its folders, config.yml,
# then run.json, each file first written as a hidden temporary): a directory with no more may yet be a run.
BEFORE_RUN_JSON = (METRICS_DIR, TRACES_DIR, CONFIG_YML)
TEMPORARIES = (f".{CONFIG_YML}.", f".{RUN_JSON}.")
DEAD_AFTER_S = 10.0  # same host: the runner's pid gone this long without a final status
QUIET_AFTER_S = 900.0  # another host: nothing in the directory changed for this long
NICE = 5  # CPU priority below the benchmark's (the SDK's service process inherits it)


class BenchmarkDied(Exception):
    """The benchmark stopped without finishing its directory."""


class TimeseriesTail:
    """New complete rows of a growing timeseries.csv, typed exactly as the reader types them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.header: list[str] | None = None
        self.inode: int | None = None
        self.streamed: list[dict[str, Number]] = []  # every row read so far
        self.replaced = False  # the file was rewritten (evaluation rebuilt it): rows may differ

    def read(self) -> list[dict[str, Number]]:
        # Only the directory's own regular file: a FIFO would block, a link could stream outside data.
        if not is_own_file(self.path.parent.parent, self.path):
            return []
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return []
        if self.replaced:
            return []
        if self.inode is not None and (st.st_ino != self.inode or st.st_size < self.offset):
            if not self._go_on_in_rewritten_file():
                self.replaced = True
                return []
        self.inode = st.st_ino
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1  # only whole lines: the writer may be mid-line
        if end == 0:
            return []
        self.offset += end
        rows = self._rows(chunk[:end])
        self.streamed += rows
        return rows

    def _rows(self, whole_lines: bytes) -> list[dict[str, Number]]:
        rows = []
        for cells in csv.reader(io.StringIO(whole_lines.decode())):
            if not cells:
                continue
            if self.header is None:
                self.header = [c.strip() for c in cells]
                continue
            row = {}
            for name, cell in zip(self.header, cells, strict=False):
                value = parse_number(cell, f"{self.path} column {name}")
                if value is not None:
                    row[name] = value
            rows.append(row)
        return rows

    def _go_on_in_rewritten_file(self) -> bool:
        """The file was replaced. When its first rows are the rows streamed so far (the scraper
        widens server_metrics.csv once a series first appears mid-run: same rows, a new empty
        column), go on after them in the new file; else (evaluation rebuilt it) it is `replaced`."""
        with self.path.open("rb") as f:
            data = f.read()
        lines = data.splitlines(keepends=True)
        kept = len(self.streamed) + 1  # the header, then one line per row streamed
        if len(lines) < kept or not all(line.endswith(b"\n") for line in lines[:kept]):
            return False
        header, self.header = self.header, None
        try:
            same = self._rows(b"".join(lines[:kept])) == self.streamed
        except ContractError:
            same = False
        if not same:
            self.header = header
            return False
        self.offset = sum(len(line) for line in lines[:kept])
        return True


class LiveHistory:
    """History rows streamed so far from both growing files: the client's time series and the
    server's scraped metrics (each on its own x-axis, so their rows may interleave)."""

    def __init__(self, paths: RunPaths) -> None:
        self.client_tail = TimeseriesTail(paths.timeseries_csv)
        self.server_tail = TimeseriesTail(paths.server_metrics_csv)
        self.client: list[dict[str, Any]] = []
        self.server: list[dict[str, Any]] = []

    def new_rows(self) -> list[dict[str, Any]]:
        client, server = client_history(self.client_tail.read()), server_history(self.server_tail.read())
        self.client += client
        self.server += server
        return client + server

    def rest(self, data: RunData) -> list[dict[str, Any]] | None:
        """The final rows not yet streamed; None when a file was rewritten (evaluation rebuilt it)
        and what was streamed is not what the directory now holds."""
        client, server = client_history(data.timeseries), server_history(data.server_metrics)
        if (
            self.client_tail.replaced
            or self.server_tail.replaced
            or client[: len(self.client)] != self.client
            or server[: len(self.server)] != self.server
        ):
            return None
        return client[len(self.client) :] + server[len(self.server) :]


def _runner_alive(info: dict[str, Any]) -> bool:
    """The process run.json names (on this host) is still the benchmark's. Without a usable pid it
    cannot be told: the directory going quiet decides instead."""
    pid = info.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return True
    # Only ourselves is excluded, not our parents: the runner starts its own follower.
    return is_running(pid, info.get(PID_START_TICKS), not_these=(os.getpid(),))


class Watch:
    """Is the benchmark finished, still going, or dead?"""

    def __init__(self, root: Path) -> None:
        self.paths = RunPaths(root)
        self.last_change = time.monotonic()
        self.last_stamp: tuple[float, ...] = ()
        self.gone_since: float | None = None

    @staticmethod
    def finished(info: dict[str, Any]) -> bool:
        return run_finished(info)

    def check_alive(self, info: dict[str, Any]) -> None:
        # Its runner gave up on it (RunDir.leave_unevaluated): no metrics will come, though its process
        # (a sweep's, a capacity search's) goes on.
        if missing_metrics(info) is not None:
            raise BenchmarkDied(_ended_without_metrics(info))
        now = time.monotonic()
        stamp = tuple(
            _mtime(p) for p in (self.paths.run_json, self.paths.timeseries_csv, self.paths.request_records)
        )
        if stamp != self.last_stamp:
            self.last_stamp, self.last_change = stamp, now
        if info.get("host") == socket.gethostname():
            if _runner_alive(info):
                self.gone_since = None
            else:
                self.gone_since = self.gone_since or now
                if now - self.gone_since >= DEAD_AFTER_S:
                    raise BenchmarkDied(f"its process (pid {info.get('pid')}) is gone")
        elif now - self.last_change >= QUIET_AFTER_S:
            raise BenchmarkDied(f"nothing in the directory changed for {QUIET_AFTER_S:.0f} s")


def _ended_without_metrics(info: dict[str, Any]) -> str:
    """Its status and why: the run's error, else the runner's word on the metrics (its evaluation failed)."""
    return f"it ended {info.get('status')}, without metrics: {info.get('error') or missing_metrics(info)}"


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _existing_dir(path_text: str) -> Path:
    root = expand_home(path_text, "--follow")
    if not root.exists():
        raise UsageError(f"{path_text}: no such directory; --follow takes the directory of a run")
    if not root.is_dir():
        raise UsageError(f"{path_text}: not a directory; --follow takes the directory of a run")
    return root.resolve()


def _names(root: Path) -> list[str]:
    try:
        return os.listdir(root)
    except FileNotFoundError:
        raise UsageError(f"{shown(root)}: no such directory (it was removed)") from None
    except OSError as e:
        raise UsageError(f"{shown(root)}: cannot be listed ({e.strerror}); check its permissions") from None


def _refuse_what_is_no_run(root: Path) -> None:
    """A usage error for a directory without run.json that will never have one: waiting for it only
    ended in a timeout (sweep and capacity-search directories hold their runs below them)."""
    names = _names(root)
    if SWEEP_MANIFEST in names:
        raise UsageError(
            f"{shown(root)} is a sweep directory ({SWEEP_MANIFEST}), not a run: follow one of its run "
            f"directories, or upload the sweep with `veeksha-upload {shown(root)}` once it has ended"
        )
    if CAPSEARCH_RESULTS in names:
        raise UsageError(
            f"{shown(root)} is a capacity-search directory ({CAPSEARCH_RESULTS}), not a run: follow one of "
            f"its runs in {CAPSEARCH_RUNS_DIR}/, or upload the search with `veeksha-upload {shown(root)}` "
            "once it has ended"
        )
    other = sorted(n for n in names if n not in BEFORE_RUN_JSON and not n.startswith(TEMPORARIES))
    if other:
        raise UsageError(
            f"{shown(root)} is not a run directory (no {RUN_JSON}, and it holds {shown(other[0])}, which "
            f"a run does not write before it): follow the directory of one run, the one with its {RUN_JSON}"
        )


def _wait_for_run_json(root: Path) -> None:
    """Until run.json appears in a directory that may still become a run (the runner makes it, then
    writes config.yml and run.json: a follower started beside it may be early)."""
    deadline = time.monotonic() + WAIT_FOR_RUN_S
    while not (root / RUN_JSON).is_file():
        _refuse_what_is_no_run(root)
        if time.monotonic() > deadline:
            raise VeekshaError(f"{root}: no {RUN_JSON} appeared within {WAIT_FOR_RUN_S:.0f} s")
        time.sleep(POLL_S)


def _plan(task: Task, info: dict[str, Any], files: list[str]) -> Plan:
    root, s = task.target.path, task.settings
    assert s is not None
    ctx = groups.run_context(root, info)
    plan = make_plan(
        root,
        s,
        kind=ctx.kind,
        ident=info["run_id"],
        name=run_name_of(s, ctx, root),
        group=s.group or ctx.group,
        tags=ctx.tags,
        files=files,
        default_entity=task.default_entity,
        on_server=server_lookup(task),
    )
    plan.veeksha_run_id = info["run_id"]
    return plan


def _watchdog(seconds: float, root: Path) -> threading.Timer:
    """The SDK retries a failing server for hours: past the deadline, leave (the run stays resumable)."""

    def expire() -> None:
        click.echo(
            f"{PROG}: failed {root}: finishing its W&B run did not end within {seconds:.0f} s (--deadline); "
            f"the run is left resumable: `veeksha-upload {root}` completes it",
            err=True,
        )
        sys.stderr.flush()
        os._exit(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    return timer


def follow(task: Task, redactor: Redactor, deadline_s: float) -> Outcome:
    """Follow one run directory to its end; the outcome a plain upload would have reported."""
    import wandb
    from veeksha.uploader import wandb_session as ws
    from veeksha.uploader.wandb_run import (
        define_history,
        log_history,
        log_results,
        replacement_files,
        run_config,
    )

    root, s = task.target.path, task.settings
    assert s is not None
    info = read_run_info(root)
    # Nothing left to follow: the plain upload, which skips it when done, or when it has no metrics
    # (its evaluation failed: run.json says so until `veeksha-run evaluate` writes them).
    if Watch.finished(info) or missing_metrics(info) is not None:
        return process_run(task, redactor)
    plan = _plan(task, info, [])
    start = choose_start(task, plan)
    if isinstance(start, Outcome):
        return start
    task = begin(task, plan)
    early = RunData(paths=RunPaths(root), run_info=info, config=read_config(root / "config.yml"))
    config = run_config(early, redactor, groups.run_context(root, info).kind)
    spec = ws.RunSpec(root, plan.run_id, plan.name, plan.group, plan.tags, "veeksha-run", config, s)
    spec.resume_from_start = start == REWIND
    spec.resume_empty = start == RESUME
    spec.stream_interval_s = STREAM_S
    live = LiveHistory(RunPaths(root))
    watch = Watch(root)
    timer: threading.Timer | None = None
    artifact = None
    try:
        with ws.open_run(spec) as run:
            where = (
                f"View run at {redact_url(run.url)}"  # (a proxy's password in the server's URL)
                if s.mode == "online"
                else f"offline run in {run.settings.sync_dir}"
            )
            click.echo(f"{PROG}: following {root}; {where}")
            sys.stdout.flush()
            define_history(run)
            try:
                while True:
                    log_history(run, live.new_rows())
                    info = read_run_info(root)
                    if watch.finished(info):
                        break
                    watch.check_alive(info)
                    time.sleep(POLL_S)
            finally:  # finishing (or failing) the run talks to the server: bounded from here on
                timer = _watchdog(upload_deadline_s(root, deadline_s), root)
            data = read_run_dir(root)
            plan = _plan(task, data.run_info, data.files)
            rest = live.rest(data)
            rebuilt = rest is None
            if rest is not None:
                log_history(run, rest)
                if s.log_artifacts and plan.files:
                    artifact = wandb.Artifact(f"{plan.artifact_type}-{plan.run_id}", type=plan.artifact_type)
                    ws.add_files(artifact, root, plan.files, redactor, replacement_files(data, redactor))
                log_results(run, data, redactor, artifact)
                # What the content turned out to be: a later offline copy is then known by it.
                run.config.update({UPLOAD_DIGEST_KEY: plan.digest}, allow_val_change=True)
            uploaded = ws.uploaded_of(run, root)
            steps = run.step
        if rebuilt:  # replace the streamed history: a plain upload rewinds the same run (pending names it)
            _say("the metrics files were rebuilt at the end; uploading the run again")
            return process_run(replace(task, force=True), redactor)  # we hold the directory's lock
        expected = Expected(steps, artifact.digest if artifact is not None else None, uploaded.media)
        outcome = _finished(task, plan, uploaded, expected)
        outcome.warnings = data.warnings
        return outcome
    except ws.AlreadyExists:
        raise lost_race(root, start) from None
    finally:
        if timer is not None:
            timer.cancel()


def _finished(task: Task, plan: Plan, uploaded: Any, expected: Expected) -> Outcome:
    """After the followed run finished: checked on the server as a plain upload is, or made
    relocatable offline; then recorded (the marker)."""
    from veeksha.uploader import wandb_session as ws

    s = task.settings
    assert s is not None
    if s.mode == "online":
        entity = uploaded.entity or s.entity or task.default_entity
        check_on_server(task, plan, entity, expected)
    if uploaded.sync_dir and s.mode == "offline":
        uploaded.notes = ws.finish_offline(task.target.path, uploaded.sync_dir)
    return complete(task, plan, uploaded, expected.steps)


def _be_background() -> None:
    """The follower shares the load machine with the driver: it must not compete with it for CPU."""
    try:
        os.nice(NICE)
    except OSError:
        pass


def _say(line: str) -> None:
    click.echo(f"{PROG}: {line}", err=True)


def follow_dir(
    path_text: str,
    env: Layer,
    flags: Layer,
    *,
    force: bool,
    fallback_offline: bool,
    deadline_s: float,
    lock_wait_s: float,
) -> int:
    """The --follow command: 0 when the run was uploaded (or skipped: done, W&B disabled), 1 otherwise;
    a usage error (2) for a directory that is not there or will never be a run (a sweep's ...).

    `force` (--force) is honoured as in a plain upload: a run already uploaded and unchanged, or one
    on the server that is not this directory's, is uploaded again onto the same W&B run id. --dry-run,
    --json and --jobs are refused before this is called (cli.NOT_WITH_FOLLOW): a follower creates its
    run at once, prints as it goes and follows one directory, so none of them could mean anything."""
    from veeksha.uploader.report import Reporter

    root = _existing_dir(path_text)
    reporter = Reporter(False)
    try:  # as a plain upload (worker.run_task), before anything is written in it
        check_directory(root)
    except ContractError as e:
        reporter.add(Outcome(str(root), groups.RUN, FAILED, str(e)))
        return reporter.finish()
    _be_background()
    _wait_for_run_json(root)
    task = plan_task(Target(groups.RUN, root), env, flags, force=force, dry_run=False)
    task = replace(task, secrets=secrets_of(env, flags, tasks=[task]), lock_wait_s=lock_wait_s)
    [task] = check_online([task], fallback_offline, _say)
    if task.error or task.settings is None or task.settings.mode == "disabled":
        reporter.add(run_task(task))  # what a plain upload reports: failed, or skipped (disabled)
        return reporter.finish()
    redactor = Redactor()
    for secret in task.secrets:
        redactor.add_secret(secret)
    try:
        with DirLock(root, lock_wait_s):
            outcome = follow(task, redactor, deadline_s)
    except LockBusy:
        outcome = lock_busy(task)
    except BenchmarkDied as e:
        detail = (
            f"the benchmark stopped without finishing ({e}); the W&B run is left resumable: "
            f"`veeksha-run evaluate {root}` then `veeksha-upload {root}` completes it"
        )
        outcome = Outcome(str(root), groups.RUN, FAILED, redactor.text(detail))  # (run.json's error)
    except VeekshaError as e:
        outcome = Outcome(str(root), groups.RUN, "failed", redactor.text(str(e)))
    except Exception as e:  # an SDK failure: one line, the run stays resumable
        outcome = Outcome(str(root), groups.RUN, "failed", redactor.text(f"{type(e).__name__}: {e}"))
    reporter.add(outcome)
    return reporter.finish()
