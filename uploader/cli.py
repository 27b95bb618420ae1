"""`veeksha-upload`: rebuild W&B runs from Veeksha output directories (spec: wandb.md).

    veeksha-upload PATH... [--recursive] [--project P] [--entity E] [--group G] [--tag T ...]
        [--notes N] [--run-name R] [--mode online|offline] [--no-artifacts] [--force] [--dry-run]
        [--jobs N] [--json] [--fallback-offline] [--deadline S] [--wait-lock S] [--api-key KEY]
        [--base-url URL]
    veeksha-upload --sync PATH...     publish offline uploads under PATH (moved or copied) online
    veeksha-upload --follow DIR       a live W&B run beside a running benchmark (follow.py); takes
        the settings flags, --force, --fallback-offline, --deadline and --wait-lock, and refuses
        --dry-run, --json and --jobs (NOT_WITH_FOLLOW)

Exit status: 0 when every directory was uploaded or skipped, 1 when any failed (the others still
upload) or W&B is unreachable, 2 for usage errors, 130 when interrupted (Ctrl-C, SIGTERM or SIGHUP:
uploads in progress are stopped and stay resumable).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import click
from click.core import ParameterSource
from veeksha.shared.config import MAX_SECONDS
from veeksha.shared.deadlines import DEFAULT_DEADLINE_S
from veeksha.shared.errors import UsageError, VeekshaError
from veeksha.shared.redact import url_for_message
from veeksha.shared.starting import INTERRUPTED_EXIT, stop_like_ctrl_c
from veeksha.shared.wandb_env import not_an_http_url
from veeksha.uploader.discovery import discover
from veeksha.uploader.planning import (
    check_online,
    offline_uploads,
    plan_task,
    secrets_of,
    unreadable_reporter,
)
from veeksha.uploader.pool import run_pool
from veeksha.uploader.report import Reporter
from veeksha.uploader.settings import DEFAULT_BASE_URL, Layer, env_layer
from veeksha.uploader.worker import run_task

PROG = "veeksha-upload"
HELP = """Upload Veeksha output directories to Weights & Biases.

PATH is a run directory, a sweep or capacity-search directory, or (with --recursive) any tree
holding them. Settings, highest first: these flags > WANDB_* environment > the directory's config.yml
`wandb:` section > defaults. So the mode is --mode > WANDB_MODE > config.yml wandb.mode > online: a
directory whose config says `mode: offline` (the quick-start demo's) stays offline unless --mode
online is given. Directories that are still running or already uploaded (and unchanged) are skipped.

--sync PATH publishes the offline uploads found under PATH (a run, sweep, capacity search or any
tree, moved or copied from an air-gapped host) to W&B online, with the settings they were written
with. --follow DIR runs beside a benchmark and keeps its W&B run live while it goes.
"""


# Flags of a plain upload that --follow cannot honour, and why (follow_dir's docstring says why --force
# is honoured): given with --follow, each is a usage error, never silently dropped.
NOT_WITH_FOLLOW = {
    "dry_run": ("--dry-run", "it creates the W&B run at once; `veeksha-upload DIR --dry-run` shows the plan"),
    "as_json": ("--json", "it prints lines as it goes, not one JSON document at the end"),
    "jobs": ("--jobs", "it follows one directory in this process"),
}


def seconds_up_to_a_week(minimum: float) -> Callable[[click.Context, click.Parameter, float], float]:
    """A check of a number of seconds: finite, from `minimum` to a week (the config's own bound on
    seconds: beyond it, a typo or "forever"). Infinity overflowed the worker pool's waits (a traceback
    after a worker started) and NaN never compared, so the pool busy-waited."""

    def check(ctx: click.Context, param: click.Parameter, value: float) -> float:
        if not (math.isfinite(value) and minimum <= value <= MAX_SECONDS):
            raise click.BadParameter(
                f"{value:g} is not a number of seconds from {minimum:g} to {MAX_SECONDS} (a week)"
            )
        return value

    return check


def given(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """An empty value is refused, as the runner refuses it, not taken as a setting: `--project
    "$UNSET"` took the default project over WANDB_PROJECT and the config's, `--api-key ""` hid
    WANDB_API_KEY, `--group ""` cleared the config's group (the environment takes "" as unset)."""
    values = value if isinstance(value, tuple) else (value,)  # --tag is repeatable
    if "" in values:
        raise click.UsageError(f"{param.opts[0]} is empty; give a value or leave the flag out")
    return value


def http_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--base-url must name a W&B server: a malformed one was reported as "W&B ... is unreachable".
    Shown without its user-info or query, where a key may sit."""
    given(ctx, param, value)
    if value is not None and not_an_http_url(value):
        shown = url_for_message(value)
        raise click.BadParameter(f"{shown!r} is not an http(s) URL of a W&B server (e.g. {DEFAULT_BASE_URL})")
    return value


def say(line: str) -> None:
    click.echo(f"{PROG}: {line}", err=True)


def refuse_with_follow(ctx: click.Context) -> None:
    """A usage error for the first flag given with --follow that it cannot honour (before any file)."""
    for name, (flag, why) in NOT_WITH_FOLLOW.items():
        if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT):
            raise click.UsageError(f"{flag} cannot be combined with --follow: {why}")


@click.command(PROG, help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("paths", nargs=-1)
@click.option("--recursive", "-r", is_flag=True, help="find run/sweep/capsearch directories in a tree")
@click.option(
    "--project",
    callback=given,
    help="W&B project (beats WANDB_PROJECT and config.yml wandb.project; 'veeksha' when none is set)",
)
@click.option("--entity", callback=given, help="W&B entity (team or user)")
@click.option(
    "--group", callback=given, help="W&B group (sweeps and capacity searches default to their directory name)"
)
@click.option(
    "--tag", "tags", multiple=True, callback=given, help="W&B tag (repeatable; replaces config/env tags)"
)
@click.option("--notes", callback=given, help="W&B run notes")
@click.option("--run-name", callback=given, help="W&B run name (default: the run directory name)")
@click.option(
    "--mode",
    type=click.Choice(["online", "offline"]),
    help="beats WANDB_MODE and config.yml wandb.mode; online when none is set",
)
@click.option("--no-artifacts", is_flag=True, help="do not log the output files as an artifact")
@click.option("--force", is_flag=True, help="upload again even when already uploaded and unchanged")
@click.option("--dry-run", is_flag=True, help="say what would be uploaded; change nothing")
@click.option(
    "--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True, help="worker processes"
)
@click.option("--json", "as_json", is_flag=True, help="print one JSON document instead of lines")
@click.option("--fallback-offline", is_flag=True, help="write offline runs when W&B is unreachable")
@click.option(
    "--deadline",
    type=float,
    callback=seconds_up_to_a_week(1),
    default=DEFAULT_DEADLINE_S,
    show_default=True,
    help="seconds per directory (at most a week), plus 1 s per MiB of its files; past it that directory "
    "fails (resumable) and the others go on",
)
@click.option(
    "--wait-lock",
    type=float,
    callback=seconds_up_to_a_week(0),
    default=0.0,
    help="seconds (at most a week) to wait for another veeksha-upload holding a directory, then fail it "
    "(default: skip that directory at once, as overlapping backfills should)",
)
@click.option("--sync", "publish", is_flag=True, help="publish the offline uploads under PATH to W&B online")
@click.option("--follow", is_flag=True, help="follow the benchmark writing DIR: a live W&B run while it goes")
@click.option("--api-key", callback=given, help="W&B API key (prefer WANDB_API_KEY: flags show up in `ps`)")
@click.option(
    "--base-url", callback=http_url, help="W&B server (default: WANDB_BASE_URL, else https://api.wandb.ai)"
)
def command(
    paths: tuple[str, ...],
    recursive: bool,
    project: str | None,
    entity: str | None,
    group: str | None,
    tags: tuple[str, ...],
    notes: str | None,
    run_name: str | None,
    mode: str | None,
    no_artifacts: bool,
    force: bool,
    dry_run: bool,
    jobs: int,
    as_json: bool,
    fallback_offline: bool,
    deadline: float,
    wait_lock: float,
    publish: bool,
    follow: bool,
    api_key: str | None,
    base_url: str | None,
) -> int:
    flags = Layer(
        project=project,
        entity=entity,
        group=group,
        tags=tags or None,
        notes=notes,
        run_name=run_name,
        mode=mode,
        log_artifacts=False if no_artifacts else None,
        base_url=base_url,
        api_key=api_key,
    )
    env = env_layer()
    if follow:
        from veeksha.uploader.follow import follow_dir

        if len(paths) != 1 or publish or recursive:
            raise click.UsageError("--follow takes exactly one run directory")
        refuse_with_follow(click.get_current_context())
        return follow_dir(
            paths[0],
            env,
            flags,
            force=force,
            fallback_offline=fallback_offline,
            deadline_s=deadline,
            lock_wait_s=wait_lock,
        )
    if publish and mode == "offline":
        raise click.UsageError("--sync publishes online; it cannot be combined with --mode offline")
    if publish and fallback_offline:
        # Falling back would rewrite the offline run it was asked to publish, and report a skip.
        raise click.UsageError("--sync publishes online; it cannot be combined with --fallback-offline")
    reporter = Reporter(as_json)
    targets = discover(list(paths), recursive or publish, unreadable_reporter(reporter.add))
    if publish:
        targets = offline_uploads(targets, reporter.add)
    plan = {"force": force, "dry_run": dry_run, "publish": publish}
    tasks = [plan_task(t, env, flags, **plan) for t in targets]
    secrets = secrets_of(env, flags, tasks=tasks)
    tasks = [replace(t, secrets=secrets, lock_wait_s=wait_lock) for t in tasks]
    if not dry_run:
        tasks = check_online(tasks, fallback_offline, say)
        blocked = [t for t in tasks if t.error and t.error.startswith("not uploaded:")]
        if blocked and len(blocked) == len(tasks) and not as_json:
            return 1  # W&B unreachable for everything: the one line above says so
    uploads = []
    for task in tasks:
        if dry_run or task.error or task.settings is None or task.settings.mode == "disabled":
            reporter.add(run_task(task))  # no SDK needed: planning problems, dry runs, disabled
        else:
            uploads.append(task)
    run_pool(uploads, jobs, deadline, reporter.add)
    return reporter.finish()


def main(argv: list[str] | None = None) -> None:
    # SIGTERM and SIGHUP stop the uploader as Ctrl-C does: workers stopped, one line, exit 130.
    # Before, the main process died at once and its worker went on holding the directory's lock.
    stop_like_ctrl_c()
    try:
        code = command.main(args=argv, prog_name=PROG, standalone_mode=False)
    except click.exceptions.Exit as e:  # --help
        code = e.exit_code
    except click.UsageError as e:
        click.echo(f"{PROG}: {e.format_message()} (see --help)", err=True)
        code = 2
    except click.Abort:
        click.echo(f"{PROG}: interrupted", err=True)
        code = INTERRUPTED_EXIT
    except UsageError as e:
        click.echo(f"{PROG}: {e}", err=True)
        code = e.exit_code
    except VeekshaError as e:
        click.echo(f"{PROG}: {e}", err=True)
        code = e.exit_code
    sys.exit(code if isinstance(code, int) else 0)
